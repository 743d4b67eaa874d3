"""Bodies batched into segment objects (store/objectstore.py): many parts' bytes in one PUT.

Each logging server appends the bytes it receives, of any part, to its one open segment in
memory. A segment is uploaded when it holds SEGMENT_BYTES, when it is SEGMENT_AGE old, or
when a writer needs its bytes durable: an `/ingest` batch before its acks, a streamed PUT
before its answer. Writers that wait meanwhile share the next upload (a group commit), so
under load one PUT carries many batches. After the PUT, one transaction records the segment
and its extents (which bytes of which part lie where in it) in PostgreSQL.

A failed upload loses the open segment's bytes too: a writer whose bytes were in either is
not acknowledged (`sync` raises), the proxy keeps them in its spool and sends them again,
and the exactly-once offsets take them where the store's extents end.

A part arriving fast (1 MiB of it here) takes its own multipart upload instead
(store/uploads.py). Each object ends with a footer (store/footers.py), so that reindex
can rebuild PostgreSQL from a listing of the objects.
"""
from __future__ import annotations

import itertools
import os
import socket
import sys
import time
import uuid
from typing import Any, Protocol

import gevent
from gevent.lock import BoundedSemaphore

from orproxy.logserver.store.footers import footer
from orproxy.logserver.store.objects import ObjectStoreError, Objects
from orproxy.logserver.store.uploads import Ledger, Uploads

SEGMENT_BYTES = 8 * 1024 * 1024
SEGMENT_AGE = 1.0  # seconds: the tail of a stream crosses instances within about this
WAIT_STEP = 0.05  # seconds between looks of a sync that may wait
# A segment holding fewer bytes may wait for others to share its PUT; a fuller one goes at
# once (a large body arriving: its proxy sends nothing more until it is acknowledged).
SHARE_BELOW = 1024 * 1024
PREFIX = "segments/"  # every object's: uploads' too (reindex lists them)
ADOPT_EVERY = 5.0  # seconds between looks for uploads no server is writing

Key = tuple[str, str]  # (exchange id, part name)


class Segment:
    """The bytes of one segment and what lies where in it."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.data = bytearray()
        self.extents: list[list[Any]] = []  # [id, name, part offset, length, position]
        self.last: dict[Key, list[Any]] = {}  # each part's latest extent, which the next write may extend
        self.documents: dict[str, str] = {}   # id -> the document as last written (for reindex)
        self.opened = time.monotonic()

    def append(self, key: Key, offset: int, data: bytes | memoryview) -> None:
        extent = self.last.get(key)
        position = len(self.data)
        if extent is not None and extent[2] + extent[3] == offset and extent[4] + extent[3] == position:
            extent[3] += len(data)
        else:
            extent = [key[0], key[1], offset, len(data), position]
            self.extents.append(extent)
            self.last[key] = extent
        self.data += data

    def run(self, key: Key, offset: int) -> int:
        """How many of the part's bytes lie here in one piece that ends at `offset`."""
        extent = self.last.get(key)
        return extent[3] if extent is not None and extent[2] + extent[3] == offset else 0

    def pieces(self, key: Key) -> list[tuple[int, bytes]]:
        """(part offset, bytes) of the part's extents here."""
        return [(e[2], bytes(self.data[e[4]:e[4] + e[3]])) for e in self.extents if (e[0], e[1]) == key]

    def end(self, key: Key) -> int | None:
        extent = self.last.get(key)
        return None if extent is None else extent[2] + extent[3]

    def body(self) -> bytes:
        return bytes(self.data) + footer(self.extents, self.documents)

    def __bool__(self) -> bool:
        return bool(self.extents or self.documents)


class SegmentLedger(Ledger, Protocol):
    """Where uploads are recorded (PostgreSQL: objectstore.ObjectBodyStore)."""

    def segment_stored(self, key: str, segment: Segment) -> None: ...
    def adopt_uploads(self) -> int: ...


class Segments:
    """This server's open segment, its uploads, and the bytes not yet uploaded."""

    def __init__(self, objects: Objects, ledger: SegmentLedger) -> None:
        self.objects = objects
        self.ledger = ledger
        self.instance = f"{socket.gethostname()[:32]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.uploads = Uploads(objects, ledger, lambda: self._object_key("u"), self._lose_now, lambda: self._open)
        self._numbers = 0
        self._keys = itertools.count(1)
        self._open = self._new()
        self._uploading: Segment | None = None
        self._uploaded = 0   # the number of the newest segment uploaded or lost
        self._lost: list[int] = []  # the numbers of the segments lost lately
        self._lock = BoundedSemaphore()
        self._ticker = gevent.spawn(self._flush_when_old)

    def _new(self) -> Segment:
        self._numbers += 1
        return Segment(self._numbers)

    def append(self, key: Key, offset: int, data: bytes | memoryview) -> int:
        """Add a part's bytes at `offset`; the number of the segment whose sync makes them
        durable (the part's upload may take them: `settle` before that sync)."""
        segment = self._open
        if self.uploads.route(key, offset, segment.run(key, offset), data):
            return segment.number
        segment.append(key, offset, data)
        if len(segment.data) >= SEGMENT_BYTES:
            try:
                self.sync(segment.number)
            except ObjectStoreError:
                pass  # the writer's own sync says so
        return segment.number

    def note_document(self, exchange_id: str, body: str) -> int:
        self._open.documents[exchange_id] = body
        return self._open.number

    @property
    def current(self) -> int:
        """The number of the open segment: what `sync` makes durable."""
        return self._open.number

    def end(self, key: Key) -> int | None:
        """Where the part's bytes not yet uploaded end (None if there are none)."""
        ends = [s.end(key) for s in (self._uploading, self._open) if s is not None] + [self.uploads.end(key)]
        return max((e for e in ends if e is not None), default=None)

    def pieces(self, key: Key) -> list[tuple[int, bytes]]:
        """(part offset, bytes) of the part's bytes not yet uploaded."""
        return [p for s in (self._uploading, self._open) if s is not None for p in s.pieces(key)] + \
            self.uploads.pieces(key)

    def settle(self, key: Key) -> None:
        """Put what the part's upload buffers into the open segment: its writer's sync comes."""
        self.uploads.spill(key)

    def finish(self, key: Key) -> None:
        """The part's writer is done: its upload is completed (readable) before its sync."""
        self.uploads.finish(key)

    def _object_key(self, kind: str) -> str:
        """A new object's: when, which server, the how-manieth ("u": an upload's)."""
        return f"{PREFIX}{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{self.instance}-{kind}{next(self._keys):08d}"

    def _lose_now(self) -> None:
        """Bytes written until now were lost (an upload's part): their writers' syncs raise."""
        self._lost = [*self._lost[-62:], self._open.number]

    def sync(self, number: int, since: int | None = None, wait: float = 0.0) -> None:
        """Return once segment `number` (and all before it) is uploaded and recorded; raise
        ObjectStoreError if it, or one since segment `since`, was lost. `wait`: upload it
        only once it is that old, unless it is uploaded sooner (full, or another's sync), or
        holds SHARE_BELOW bytes already: worth its PUT alone."""
        while number > self._uploaded and number == self._open.number and \
                len(self._open.data) < SHARE_BELOW and time.monotonic() - self._open.opened < wait:
            gevent.sleep(WAIT_STEP)
        with self._lock:
            if number > self._uploaded:
                self._flush()
        first = number if since is None else since
        if any(first <= lost <= number for lost in self._lost):
            raise ObjectStoreError(f"{self.objects.url}: segment upload failed; the proxy sends the bytes again")

    def _flush(self) -> None:
        """Upload the open segment (called holding the lock)."""
        self.uploads.spill_old(SEGMENT_AGE)
        segment, self._open = self._open, self._new()
        if not segment:
            self._uploaded = segment.number
            return
        self._uploading = segment
        key = self._object_key("")
        try:
            self.objects.put(key, segment.body())
            self.ledger.segment_stored(key, segment)
            self._uploaded = segment.number
        except Exception as e:
            lost, self._open = self._open, self._new()  # its bytes may continue the lost ones
            self._uploaded = lost.number
            self._lost = [*self._lost[-62:], segment.number, lost.number]
            print(f"orlogserver: a segment was not stored, its {len(segment.data) + len(lost.data)} bytes "
                  f"go again from the proxies' spools: {e}", file=sys.stderr, flush=True)
        finally:
            self._uploading = None

    def _flush_when_old(self) -> None:
        adopted = time.monotonic()
        while True:
            gevent.sleep(SEGMENT_AGE / 4)
            self.uploads.spill_old(SEGMENT_AGE)
            self.uploads.finish_idle()
            if time.monotonic() - adopted >= ADOPT_EVERY:
                adopted = time.monotonic()
                try:
                    self.ledger.adopt_uploads()
                except Exception as e:  # the next look tries again
                    print(f"orlogserver: completing the uploads of servers gone failed: {e}",
                          file=sys.stderr, flush=True)
            segment = self._open
            if segment and time.monotonic() - segment.opened >= SEGMENT_AGE:
                try:
                    self.sync(segment.number)
                except ObjectStoreError:
                    pass  # said in _flush

    def close(self) -> None:
        """Complete the uploads and upload what is open (at exit), then stop."""
        self._ticker.kill()
        self.uploads.finish_all()
        if self._open:
            try:
                self.sync(self._open.number)
            except ObjectStoreError:
                pass
