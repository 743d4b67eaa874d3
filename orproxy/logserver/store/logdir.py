"""The log directory: where each exchange's files go, and its metadata file.

Files are the source of truth (CONTRACT.md): `<ts>_<uuid8>_request.bin`, `..._response.bin`
and `..._metadata.json`, where `<ts>` is `YYYY-MM-DD_HH-MM-SS.mmm` in local time. Every
name is built here from a validated UUID and a fixed kind, never from client text, so
nothing can be written outside the log dir.

Which timestamp belongs to an exchange is kept as a symlink `.ids/<uuid> -> <ts>_<uuid8>`:
created atomically by whichever part arrives first, readable by every worker process.

Every rewrite of a metadata file bumps its `rev`: worker processes index the documents
they wrote, and the index keeps only the newest revision whatever order they land in.
"""
from __future__ import annotations

import fcntl
import glob
import os
import re
import time
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, BinaryIO, Iterator

from gevent.monkey import get_original

from orproxy import jsoncodec
from orproxy.logserver.store.recent import PartReading
from orproxy.logserver.store.record import ExchangeRecord
from orproxy.logwire import BATCH_BYTES

UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
KINDS = ("request", "response", "metadata")
METADATA_SUFFIX = "_metadata.json"
PREFIX_CACHE = 4096
_PREFIX_RE = re.compile(r"^\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d\.\d{3}_[0-9a-f]{8}$")


_second: list[Any] = [None, ""]  # the last second formatted: most names share it


def timestamp(now: float) -> str:
    """`YYYY-MM-DD_HH-MM-SS.mmm`, local time (the seed's file names)."""
    second = int(now)
    if _second[0] != second:
        _second[0], _second[1] = second, time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(second))
    return f"{_second[1]}.{int(now * 1000) % 1000:03d}"


class LogDir(PartReading):
    """Paths here are joined with f-strings, not os.path.join: a few are built for every
    exchange, and join costs microseconds each on this project's machine."""
    blocking = True  # file calls block: retention and reindex run them on a thread
    batch_bytes = BATCH_BYTES  # a larger batch only costs the server memory

    def sync_point(self) -> int:
        return 0

    def sync(self, since: int, eager: bool = True) -> None:
        """Written is stored: the page cache holds it across a crash of the server (not of
        the machine), as it always did."""

    def collect(self) -> int:
        return 0  # an exchange's files go with it

    @contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        """A lock file in `.ids`, taken without waiting: whether this process holds it."""
        with open(os.path.join(self.ids, f".{name}.lock"), "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                yield False
                return
            yield True

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = os.path.abspath(path)
        self.ids = os.path.join(self.path, ".ids")
        os.makedirs(self.ids, exist_ok=True)
        self._lock: Any = None  # opened by the first metadata rewrite
        self._prefixes: OrderedDict[str, str] = OrderedDict()  # id -> prefix, recently used

    def close(self) -> None:
        """Close the lock file that serialises metadata rewrites across processes."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _remember(self, exchange_id: str, prefix: str) -> str:
        self._prefixes[exchange_id] = prefix
        if len(self._prefixes) > PREFIX_CACHE:
            self._prefixes.popitem(last=False)
        return prefix

    def exchange_prefix(self, exchange_id: str, now: float) -> tuple[str, bool]:
        """`<ts>_<uuid8>` of an exchange, and whether this call created it."""
        exchange_id = exchange_id.lower()
        known = self._prefixes.get(exchange_id)
        if known is not None:  # a prefix never changes: spare the file system the lookups
            return known, False
        link = f"{self.ids}/{exchange_id}"
        prefix = f"{timestamp(now)}_{exchange_id[:8]}"
        try:
            os.symlink(prefix, link)
            return self._remember(exchange_id, prefix), True
        except FileExistsError:
            return self._remember(exchange_id, os.readlink(link)), False

    def exists(self, exchange_id: str) -> bool:
        exchange_id = exchange_id.lower()
        return exchange_id in self._prefixes or self.find_prefix(exchange_id) is not None

    def find_prefix(self, exchange_id: str) -> str | None:
        try:
            return os.readlink(os.path.join(self.ids, exchange_id.lower()))
        except OSError:
            return None

    def open_writer(self, exchange_id: str, kind: str, t: float, fresh: bool = False) -> "PartFile":
        """A part's file to write to, named by the part's own arrival time `t` (as the seed):
        resumed where it ends (a batch's appends, a retry's), or emptied if `fresh` (a
        streamed PUT sends a part whole)."""
        name = f"{timestamp(t)}_{exchange_id[:8].lower()}_{kind}.bin"
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if fresh else os.O_APPEND)
        return PartFile(f"{self.path}/{name}", name, os.open(f"{self.path}/{name}", flags, 0o644))

    def metadata_path(self, prefix: str) -> str:
        return f"{self.path}/{prefix}{METADATA_SUFFIX}"

    def file_path(self, name: str) -> str | None:
        """The path of a file named in a metadata document, if it is a plain log-dir name."""
        if not name or os.path.basename(name) != name or name.startswith("."):
            return None
        return f"{self.path}/{name}"

    def document_keys(self) -> list[str]:
        """Every exchange's document, oldest first, by a key for `adopt_document` (here its
        metadata file: the names start with the time)."""
        return sorted(glob.glob(os.path.join(glob.escape(self.path), "*" + METADATA_SUFFIX)))

    def adopt_document(self, key: str) -> tuple[dict[str, Any] | None, bool]:
        """A listed document (None if unreadable or not an exchange's), and whether it is
        its exchange's own: its `.ids` link is made if missing (files restored or copied
        without `.ids`); False if the link names other files (a copy of the exchange)."""
        document = self._read_document(key)
        if document is None or not UUID_RE.match(str(document.get("id", ""))):
            return None, False
        prefix = os.path.basename(key)[:-len(METADATA_SUFFIX)]
        link = os.path.join(self.ids, document["id"].lower())
        try:
            os.symlink(prefix, link)
            return document, True
        except FileExistsError:
            return document, os.readlink(link) == prefix

    def read_metadata(self, exchange_id: str) -> dict[str, Any] | None:
        prefix = self.find_prefix(exchange_id)
        if prefix is None or not _PREFIX_RE.match(prefix):
            return None
        return self._read_document(self.metadata_path(prefix))

    def exchange_files(self, document: dict[str, Any]) -> list[str]:
        """The paths of an exchange's files: its parts and its metadata file."""
        paths = [path for path in map(self.file_path, ExchangeRecord(document).file_names) if path]
        exchange_id = str(document.get("id", ""))
        if UUID_RE.match(exchange_id) and document.get("timestamp"):
            paths.append(self.metadata_path(f"{document['timestamp']}_{exchange_id[:8].lower()}"))
        return paths

    def open_part(self, record: ExchangeRecord, kind: str) -> BinaryIO | None:
        """A part's bytes as stored, as a readable and seekable stream that may still grow;
        None if there are none. Readers ask for this, never for a path: another store
        serves the same stream from elsewhere (docs/scaling-out.md, the body store's seam)."""
        path = self.file_path(str(record.part(kind).get("file", "")))
        try:
            return open(path, "rb") if path else None
        except OSError:
            return None

    def last_change(self, record: ExchangeRecord) -> float | None:
        """When anything of the exchange was last written (its parts or its document)."""
        times = []
        for path in self.exchange_files(record.document):
            try:
                times.append(os.stat(path).st_mtime)
            except OSError:
                pass
        return max(times, default=None)

    def delete_exchange(self, document: dict[str, Any]) -> int:
        """Remove an exchange's files and its id link; returns the bytes freed."""
        freed = 0
        for path in self.exchange_files(document):
            try:
                freed += os.stat(path).st_size
                os.unlink(path)
            except FileNotFoundError:
                pass
        exchange_id = str(document.get("id", "")).lower()
        self._prefixes.pop(exchange_id, None)
        if UUID_RE.match(exchange_id):
            try:
                os.unlink(os.path.join(self.ids, exchange_id))
            except FileNotFoundError:
                pass
        return freed

    @contextmanager
    def metadata(self, exchange_id: str, now: float) -> Iterator[dict[str, Any]]:
        """Read, let the caller change, and atomically rewrite an exchange's metadata file.

        A lock file serialises writers across worker processes; readers see a whole file:
        a rewrite replaces it by rename. The first write of an exchange, by the writer that
        made its id link (and so knows the file is not there yet), skips the read and the
        rename: most exchanges are written once, whole.
        """
        prefix, created = self.exchange_prefix(exchange_id, now)
        path = self.metadata_path(prefix)
        if self._lock is None:
            self._lock = open(os.path.join(self.ids, ".lock"), "a")
        fcntl.flock(self._lock, fcntl.LOCK_EX)  # no greenlet switch happens inside: files only
        try:
            document = None if created else self._read_document(path)
            if document is None:
                document = {"id": exchange_id.lower(), "timestamp": prefix.rsplit("_", 1)[0], "parts": {}}
            yield document
            document["rev"] = int(document.get("rev") or 0) + 1
            data = jsoncodec.dumps(document)
            if not (created and _write_new(path, data)):
                tmp = f"{path}.{os.getpid()}.tmp"
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)

    @staticmethod
    def _read_document(path: str) -> dict[str, Any] | None:
        try:
            with open(path, "rb") as f:
                document = jsoncodec.loads(f.read())
        except (OSError, ValueError):
            return None
        return document if isinstance(document, dict) else None


def _write_new(path: str, data: bytes) -> bool:
    """Create `path` with `data` in one write; False if it exists already."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        write_all(fd, data)
    finally:
        close_file(fd)
    return True


# A file's descriptor is never watched by the gevent loop: the original close, not gevent's
# (which asks the loop first, 12 µs a call on this project's machine).
close_file = get_original("os", "close")


class PartFile:
    """A part's file open for writing, held by its writer between blocks and batches."""

    __slots__ = ("path", "name", "fd")

    def __init__(self, path: str, name: str, fd: int) -> None:
        self.path, self.name, self.fd = path, name, fd

    def stored(self, look: bool = False) -> int:
        """The bytes in the file now: another worker process may have appended to it."""
        return os.fstat(self.fd).st_size

    def write(self, data: bytes | memoryview) -> None:
        write_all(self.fd, data)

    def flush(self) -> None:
        pass  # each write went to the file

    def head(self, most: int) -> bytes:
        """Up to `most` bytes from the part's start (a head that arrived in pieces)."""
        with open(self.path, "rb") as f:
            return f.read(most)

    def close(self) -> None:
        close_file(self.fd)

    def __enter__(self) -> "PartFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
