"""The spool: log data the logging server cannot take yet, on disk, outliving the proxy.

A write-ahead log in `logging.spool_dir` (CONTRACT.md, "Logging stream"). Its records are
batch records (logwire.py: appends at offsets, metadata), so delivering one is copying it
into a batch, and delivering one twice is harmless: the logging server skips what it
holds. Each record is framed with its length and a CRC32, so a torn tail after a crash is
cut and a corrupt record skipped, each with a line on stderr, while the good ones are still
sent.

Each process (each gunicorn worker) appends to segment files of its own and holds them
locked (flock). A segment nobody holds belongs to a process that is gone: the next process
that looks (at start, then every ADOPT_EVERY seconds) adopts it and delivers it. Segments
are delivered oldest first, and removed once acknowledged. All of them together stay
under `logging.spool_max_bytes`; past it `append` refuses, and the caller truncates.
"""
from __future__ import annotations

import fcntl
import os
import socket
import struct
import sys
import time
import zlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from orproxy.config import ConfigError

if TYPE_CHECKING:
    from orproxy.config import Config

FRAME = struct.Struct("<4sII")       # magic, payload length, CRC32 of the payload
MAGIC = b"ORS1"
SUFFIX = ".spool"
SEGMENT_MAX = 64 * 1024 * 1024       # bytes a segment grows to before the next one starts
RECORD_MAX = 32 * 1024 * 1024        # a longer length field is corruption, not a record
ADOPT_EVERY = 10.0                   # seconds between looks for orphaned segments
SIZE_EVERY = 1.0                     # seconds between sums of the whole directory's size


class Segment:
    """One segment file: this process's (written, locked) or adopted (locked, read only)."""

    __slots__ = ("path", "fd", "size", "read_at", "writing")

    def __init__(self, path: str, fd: int, size: int, writing: bool) -> None:
        self.path, self.fd, self.size, self.read_at, self.writing = path, fd, size, 0, writing

    def close(self, remove: bool) -> None:
        if remove:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        os.close(self.fd)  # releases the lock


class Spool:
    def __init__(self, directory: str, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        os.makedirs(directory, exist_ok=True)
        self.segments: list[Segment] = []      # oldest first; the last may be the one written
        self.others = 0                        # bytes of other processes' segments, last summed
        self._summed_at = 0.0
        self._adopted_at = 0.0
        self._prefix = f"{socket.gethostname()}-{os.getpid()}-"
        self.adopt()

    # -- writing ---------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Bytes on disk in this process's segments, and in the others' when last summed."""
        return sum(s.size for s in self.segments) + self.others

    def append(self, payload: Iterable[bytes | memoryview], length: int, force: bool = False) -> bool:
        """Add one record (its payload in pieces, `length` bytes in all); False, and nothing
        written, if it would take the spool past its bound, unless `force` (the few bytes of
        a part's end or truncation marker, which must be said)."""
        if not force and self.size + FRAME.size + length > self.max_bytes:
            self._sum_others()
            if self.size + FRAME.size + length > self.max_bytes:
                return False
        pieces = list(payload)
        crc = 0
        for piece in pieces:
            crc = zlib.crc32(piece, crc)
        segment = self._writable()
        data = [FRAME.pack(MAGIC, length, crc), *pieces]
        written = os.writev(segment.fd, data)
        total = FRAME.size + length
        while written < total:  # a short write (a full disk, signals): finish it or fail loudly
            rest = b"".join(bytes(p) for p in data)[written:]
            written += os.write(segment.fd, rest)
        segment.size += total
        return True

    def _writable(self) -> Segment:
        last = self.segments[-1] if self.segments else None
        if last is not None and last.writing and last.size < SEGMENT_MAX:
            return last
        if last is not None and last.writing:
            last.writing = False  # full: read on, write a new one
        path = os.path.join(self.directory, f"{self._prefix}{time.time_ns()}{SUFFIX}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        segment = Segment(path, fd, 0, True)
        self.segments.append(segment)
        return segment

    # -- reading ---------------------------------------------------------------------------

    @property
    def pending(self) -> bool:
        return any(s.read_at < s.size for s in self.segments)

    def read(self, limit: int) -> tuple[list[bytes], list[tuple[Segment, int]]]:
        """Records not yet delivered, oldest first, up to about `limit` bytes (at least one),
        and the token to pass to `delivered` once the logging server has them. Nothing
        moves until then: after a failed batch the same records are read again."""
        out: list[bytes] = []
        token: list[tuple[Segment, int]] = []
        taken = 0
        for segment in self.segments:
            if segment.read_at >= segment.size:
                continue
            at = segment.read_at
            while at < segment.size and (taken < limit or not out):
                record, at = self._record(segment, at)
                if record is not None:
                    out.append(record)
                    taken += len(record)
            token.append((segment, at))
            if taken >= limit:
                break
        return out, token

    def delivered(self, token: list[tuple[Segment, int]]) -> None:
        """The records `read` gave are acknowledged: move past them, remove spent segments."""
        for segment, at in token:
            segment.read_at = max(segment.read_at, at)
        for segment in list(self.segments):
            if segment.read_at < segment.size:
                continue
            if segment.writing:  # all of it delivered: start it afresh rather than grow it
                os.ftruncate(segment.fd, 0)
                segment.size = segment.read_at = 0
            else:
                segment.close(remove=True)
                self.segments.remove(segment)

    def _record(self, segment: Segment, at: int) -> tuple[bytes | None, int]:
        """The record at `at` and where the next one starts. A torn tail is cut; a corrupt
        record is skipped up to the next frame that checks out."""
        head = os.pread(segment.fd, FRAME.size, at)
        if len(head) < FRAME.size:
            return self._cut(segment, at)
        magic, length, crc = FRAME.unpack(head)
        if magic == MAGIC and length <= RECORD_MAX:
            payload = os.pread(segment.fd, length, at + FRAME.size)
            if len(payload) < length:
                return self._cut(segment, at)
            if zlib.crc32(payload) == crc:
                return payload, at + FRAME.size + length
        following = self._next_frame(segment, at + 1)
        _say(f"spool segment {segment.path}: a corrupt record at byte {at} skipped "
             f"({following - at} bytes); the records after it are still sent")
        return None, following

    def _cut(self, segment: Segment, at: int) -> tuple[None, int]:
        _say(f"spool segment {segment.path}: a torn record at byte {at} cut "
             f"({segment.size - at} bytes; the proxy stopped while writing it)")
        os.ftruncate(segment.fd, at)
        segment.size = at
        return None, at

    @staticmethod
    def _next_frame(segment: Segment, at: int) -> int:
        while at < segment.size:
            block = os.pread(segment.fd, 1 << 20, at)
            found = block.find(MAGIC)
            if found >= 0:
                return at + found
            at += max(1, len(block) - len(MAGIC) + 1)
        return segment.size

    # -- other processes' segments ---------------------------------------------------------

    def adopt(self, now: float | None = None) -> int:
        """Take over the segments of processes that are gone (nobody holds their lock);
        returns how many. Called at start and, from the sender, every ADOPT_EVERY seconds."""
        self._adopted_at = time.monotonic() if now is None else now
        mine = {s.path for s in self.segments}
        adopted = 0
        for name in sorted(os.listdir(self.directory), key=_age):
            path = os.path.join(self.directory, name)
            if not name.endswith(SUFFIX) or path in mine:
                continue
            try:
                fd = os.open(path, os.O_RDWR)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)  # a live process's
                continue
            size = os.fstat(fd).st_size
            self.segments.insert(sum(not s.writing for s in self.segments), Segment(path, fd, size, False))
            adopted += 1
        if adopted:
            _say(f"spool {self.directory}: {adopted} segment(s) of a stopped process adopted; delivering them")
        self._sum_others()
        return adopted

    def adopt_due(self) -> bool:
        return time.monotonic() - self._adopted_at >= ADOPT_EVERY

    def _sum_others(self) -> None:
        """Bytes in segments of other live processes (gunicorn siblings): they share the bound."""
        now = time.monotonic()
        if now - self._summed_at < SIZE_EVERY:
            return
        self._summed_at = now
        mine = {s.path for s in self.segments}
        total = 0
        for entry in os.scandir(self.directory):
            if entry.name.endswith(SUFFIX) and entry.path not in mine:
                try:
                    total += entry.stat().st_size
                except FileNotFoundError:
                    pass
        self.others = total

    def close(self) -> None:
        """At exit: this process's segments stay for the next process, unless empty."""
        for segment in self.segments:
            segment.close(remove=segment.read_at >= segment.size)
        self.segments = []


def open_spool(config: "Config") -> Spool | None:
    """The configured spool (None with `logging.spool_max_bytes: 0`); ConfigError when its
    directory cannot be made or written."""
    if not config.spool_max_bytes:
        return None
    try:
        return Spool(config.spool_dir, config.spool_max_bytes)
    except OSError as e:
        raise ConfigError(f"logging.spool_dir: cannot use {config.spool_dir!r}: {e.strerror or e}") from None


def _age(name: str) -> int:
    """Segments sort by the time their writer started them (the name's last number)."""
    stem = name[:-len(SUFFIX)] if name.endswith(SUFFIX) else name
    tail = stem.rpartition("-")[2]
    return int(tail) if tail.isdigit() else 0


def _say(message: str) -> None:
    print(f"orproxy: {message}", file=sys.stderr, flush=True)
