"""Large bodies as multipart uploads while they stream (store/segments.py takes the rest).

A part that arrives fast (ROUTE_FROM bytes of it in the open segment) is routed to a
multipart upload of its own: its bytes gather in a buffer, and each PART_BYTES of them go
up as the next part while the stream goes on. Each part
is recorded in PostgreSQL as soon as it is stored (its `uploads` row and extents,
`Ledger.part_stored`), so the bytes in it may be acknowledged: an uploaded part is durable.
Every part but the last is PART_BYTES (S3 wants 5 MiB at least, R2 all of one size).

- At most MOST_UPLOADS parts go as uploads at once, each holding up to a part (and a
  batch's bytes) in memory: past them, large parts go in segments as small ones do.
- Bytes a writer must make durable that do not fill a part (the rest of a batch before
  its acks, a buffer SEGMENT_AGE old) go into the open segment instead (`spill`): no ack
  waits for a part to fill, and the route goes on with the bytes after them.
- When the part ends (its writer closes), or no bytes come for UPLOAD_IDLE, the last bytes
  and the object's footer (store/footers.py, for reindex) go up as the last part, and the
  upload is completed. Only then can its bytes be read, from any server: S3 serves no object
  before. Until then readers see the part up to where its upload began.
- A server that dies leaves its uploads open, their parts durable: another completes them
  (objectstore.ObjectBodyStore.adopt_uploads) once PostgreSQL says the holder is gone.
- A part that fails to go up is lost with the bytes buffered behind it: their writers are
  not acknowledged (`lost`: their sync raises), the proxy sends the bytes again, and the
  upload keeps, and later completes with, the parts stored before.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

import gevent

from orproxy.logserver.store.footers import footer
from orproxy.logserver.store.objects import ObjectStoreError, Objects

PART_BYTES = 5 * 1024 * 1024
ROUTE_FROM = 1024 * 1024  # bytes of a part in the open segment after which its upload begins
MOST_UPLOADS = 8  # at once: each holds up to a part and a batch in memory; more parts go in segments
UPLOAD_IDLE = 5.0  # seconds without bytes after which an upload is completed
SENDING_STEP = 0.005  # seconds between looks while another greenlet uploads a part

Key = tuple[str, str]  # (exchange id, part name)


class Ledger(Protocol):
    """Where uploads are recorded (PostgreSQL: objectstore.ObjectBodyStore)."""

    def part_stored(self, upload: "Upload", number: int, etag: str, extent: list[Any]) -> None: ...
    def upload_completed(self, upload: "Upload", extent: list[Any] | None) -> None: ...


class Upload:
    """One part's multipart upload on this server: the parts stored, the bytes buffered."""

    def __init__(self, key: Key, object_key: str, offset: int) -> None:
        self.key, self.object = key, object_key
        self.upload_id: str | None = None
        self.parts: list[tuple[int, str]] = []  # (number, ETag) of the parts stored
        self.extents: list[list[Any]] = []      # [id, name, part offset, length, position]
        self.size = 0                           # bytes in the parts stored
        self.offset = offset                    # where in the part the buffer begins
        self.buffer = bytearray()
        self.buffered_at = 0.0
        self.touched = time.monotonic()
        self.sending: tuple[int, bytes] | None = None  # (offset, bytes) of the part going up

    @property
    def end(self) -> int:
        return self.offset + len(self.buffer)

    def pieces(self) -> list[tuple[int, bytes]]:
        """(part offset, bytes) of what it holds in memory."""
        held = [self.sending] if self.sending else []
        return held + ([(self.offset, bytes(self.buffer))] if self.buffer else [])


class Uploads:
    """This server's uploads, by part."""

    def __init__(self, objects: Objects, ledger: Ledger, name: Callable[[], str], lost: Callable[[], None],
                 segment: Callable[[], Any]) -> None:
        self.objects, self.ledger = objects, ledger
        self._name = name  # a new object's key
        self._segment = segment  # the open segment, which spilled bytes go into
        self._lost = lost  # the writers of bytes written until now must not be acknowledged
        self._by_key: dict[Key, Upload] = {}
        self._finishing: set[str] = set()

    @property
    def active(self) -> set[str]:
        """The objects of the uploads this server is writing or completing."""
        return {u.object for u in self._by_key.values()} | self._finishing

    def route(self, key: Key, offset: int, run: int, data: bytes | memoryview) -> bool:
        """Take a part's bytes if they continue its upload, or if with the `run` of bytes
        before them in the open segment they make ROUTE_FROM (then its upload begins);
        False: the segment takes them."""
        upload = self._by_key.get(key)
        if upload is None:
            if run + len(data) < ROUTE_FROM or len(self._by_key) >= MOST_UPLOADS:
                return False
            upload = self._by_key[key] = Upload(key, self._name(), offset)
        elif offset != upload.end:
            return False  # bytes sent again (they overlap, and are read once)
        now = time.monotonic()
        if not upload.buffer:
            upload.buffered_at = now
        upload.buffer += data
        upload.touched = now
        while len(upload.buffer) >= PART_BYTES and upload.sending is None and self._by_key.get(key) is upload:
            self._send(upload)
        return True

    def end(self, key: Key) -> int | None:
        upload = self._by_key.get(key)
        return None if upload is None else upload.end

    def pieces(self, key: Key) -> list[tuple[int, bytes]]:
        upload = self._by_key.get(key)
        return [] if upload is None else upload.pieces()

    def _send(self, upload: Upload) -> None:
        data = bytes(upload.buffer[:PART_BYTES])
        offset = upload.offset
        del upload.buffer[:PART_BYTES]
        upload.offset += len(data)
        upload.buffered_at = time.monotonic()
        upload.sending = (offset, data)
        try:
            if upload.upload_id is None:
                upload.upload_id = self.objects.start_upload(upload.object)
            number = len(upload.parts) + 1
            etag = self.objects.put_part(upload.object, upload.upload_id, number, data)
            extent = [upload.key[0], upload.key[1], offset, len(data), upload.size]
            self.ledger.part_stored(upload, number, etag, extent)
            upload.parts.append((number, etag))
            _add(upload.extents, list(extent))
            upload.size += len(data)
        except Exception as e:
            self._drop(upload, f"a part of {len(data) + len(upload.buffer)} bytes was not stored", e)
        finally:
            upload.sending = None

    def _drop(self, upload: Upload, what: str, error: Exception) -> None:
        """Stop routing a part whose bytes were lost; its stored parts stay, to be completed."""
        if self._by_key.get(upload.key) is upload:
            del self._by_key[upload.key]
        upload.buffer.clear()
        self._lost()
        if upload.upload_id is not None and not upload.parts:  # nothing recorded: nothing to complete
            self.objects.abort_upload(upload.object, upload.upload_id)
        print(f"orlogserver: {what}; the proxies send it again from their spools: {error}",
              file=sys.stderr, flush=True)

    def _wait_sent(self, upload: Upload) -> None:
        while upload.sending is not None:
            gevent.sleep(SENDING_STEP)

    def spill(self, key: Key) -> None:
        """Put the bytes buffered for the part's next upload part into the open segment: its
        writer needs them durable now."""
        upload = self._by_key.get(key)
        if upload is not None:
            self._wait_sent(upload)
            self._spill(upload)

    def _spill(self, upload: Upload) -> None:
        if upload.buffer and upload.sending is None:
            self._segment().append(upload.key, upload.offset, upload.buffer)
            upload.offset += len(upload.buffer)
            upload.buffer = bytearray()

    def spill_old(self, age: float) -> None:
        """Spill the buffers that have waited `age` seconds: their bytes reach the store (and
        other servers' readers) as a segment's would."""
        now = time.monotonic()
        for upload in list(self._by_key.values()):
            if upload.buffer and now - upload.buffered_at >= age:
                self._spill(upload)

    def finish(self, key: Key) -> None:
        """The part's writer is done: complete its upload (or, if no part went up, spill)."""
        upload = self._by_key.pop(key, None)
        if upload is None:
            return
        self._finishing.add(upload.object)
        try:
            self._wait_sent(upload)
            if not upload.parts:
                self._spill(upload)
            else:
                self._complete(upload)
        finally:
            self._finishing.discard(upload.object)

    def finish_idle(self, idle: float = UPLOAD_IDLE) -> None:
        now = time.monotonic()
        for key in [k for k, u in self._by_key.items() if now - u.touched >= idle and u.sending is None]:
            self.finish(key)

    def finish_all(self) -> None:
        for key in list(self._by_key):
            self.finish(key)

    def _complete(self, upload: Upload) -> None:
        assert upload.upload_id is not None
        extent = [upload.key[0], upload.key[1], upload.offset, len(upload.buffer), upload.size] \
            if upload.buffer else None
        try:
            extents = [list(e) for e in upload.extents]
            if extent is not None:
                _add(extents, list(extent))
            last = bytes(upload.buffer) + footer(extents, {})
            number = upload.parts[-1][0] + 1
            etag = self.objects.put_part(upload.object, upload.upload_id, number, last)
            self.objects.complete_upload(upload.object, upload.upload_id, [*upload.parts, (number, etag)])
            self.ledger.upload_completed(upload, extent)
        except Exception as e:
            self._drop(upload, f"the end of an upload ({len(upload.buffer)} bytes) was not stored", e)


def _add(extents: list[list[Any]], extent: list[Any]) -> None:
    """Add an extent to an object's, joined to the last if it continues it."""
    last = extents[-1] if extents else None
    if last is not None and last[2] + last[3] == extent[2] and last[4] + last[3] == extent[4]:
        last[3] += extent[3]
    else:
        extents.append(extent)


def complete_stored(objects: Objects, key: str, upload_id: str, parts: list[tuple[int, str]],
                    extents: list[list[Any]]) -> None:
    """Complete an upload another server began (or this one failed to complete) from what
    PostgreSQL recorded of it: its stored parts, then a footer of their extents."""
    number = max(n for n, _ in parts) + 1
    try:
        etag = objects.put_part(key, upload_id, number, footer(extents, {}))
        objects.complete_upload(key, upload_id, [*parts, (number, etag)])
    except ObjectStoreError:
        if objects.size(key) is None:
            raise
        # completed already (by a server that died before recording it)
