"""Bodies in an S3-compatible object store, documents in PostgreSQL: the body store that
several logging servers on several hosts share (`--store s3://bucket/prefix --index
postgresql://…`, docs/scaling-out.md). It answers the same protocol as the log dir
(stores.BodyStore), so ingest, the API, the tail, HAR and replay do not know which it is.

- **Documents** are rows of `documents` (store/pgschema.py, migration 3). A rewrite locks
  its row (`INSERT … ON CONFLICT DO UPDATE … RETURNING`, which creates or locks it in one
  statement) and bumps `rev`, as the log dir's flock and rename do.
- **Parts** are the extents of segment objects (store/segments.py): `extents` says which
  bytes of which part lie at which position of which object. Reads are range GETs, joined
  with the bytes this server holds not yet uploaded. Extents may overlap (a resent append
  that landed on two servers): a part is read as the bytes from 0 that its extents cover,
  each byte once.
- **Large parts** go as multipart uploads (store/uploads.py): their extents are recorded
  as each part is stored, and read once the upload is completed (`uploads` lists the
  uploads not yet completed, and who holds each: a server's advisory lock while it runs).
- **Durable before acknowledged**: a writer's `sync` returns once its bytes are uploaded.
- Its local dir (`--log-dir`) keeps only this server's metrics files.
"""
from __future__ import annotations

import io
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

import psycopg

from orproxy import jsoncodec
from orproxy.logserver.store.logdir import timestamp
from orproxy.logserver.store.objects import ObjectStoreError, Objects
from orproxy.logserver.store.pgindex import Pool
from orproxy.logserver.store.recent import PartReading
from orproxy.logserver.store.record import ExchangeRecord
from orproxy.logserver.store.segments import SEGMENT_AGE, Key, Segment, Segments
from orproxy.logserver.store.uploadrows import UploadRows, insert_object, lock_key

READ_BUFFER = 1024 * 1024  # a range GET per MiB of a part read through
KNOWN_ENDS = 4096  # parts whose uploaded end this server remembers

_LOCK_DOCUMENT = ("INSERT INTO documents (id, body, rev, created, changed) VALUES (%s, '', 0, %s, %s) "
                  "ON CONFLICT (id) DO UPDATE SET id = excluded.id RETURNING body")
Source = Callable[[int, int], bytes]  # (offset in the piece, length) -> bytes


class ObjectBodyStore(PartReading, UploadRows):
    blocking = False  # its calls wait cooperatively: run them on the loop, not a thread
    batch_bytes = 12 * 1024 * 1024  # two multipart parts and more: a large body's batch fills them

    def __init__(self, url: str, local_dir: str, database_url: str) -> None:
        super().__init__()
        self.objects = Objects(url)
        self.objects.check()
        self.path = self.objects.url
        self.ids = os.path.join(os.path.abspath(local_dir), ".ids")
        os.makedirs(self.ids, exist_ok=True)
        self._writes = Pool(database_url, 4)  # rewrites hold theirs across the caller's changes
        self._reads = Pool(database_url, 4)
        self._ends: OrderedDict[Key, int] = OrderedDict()  # uploaded ends of parts, recently used
        self.segments = Segments(self.objects, self)
        self._database_url = database_url
        self._hold()

    # -- writing -------------------------------------------------------------------------

    def open_writer(self, exchange_id: str, kind: str, t: float, fresh: bool = False) -> "ObjectPartWriter":
        name = f"{timestamp(t)}_{exchange_id[:8].lower()}_{kind}.bin"
        return ObjectPartWriter(self, (exchange_id.lower(), name), fresh)

    def sync_point(self) -> int:
        """Where writes about to be made begin: give it to `sync`."""
        return self.segments.current

    def sync(self, since: int, eager: bool = True) -> None:
        """Return once everything written since `since` is durable; ObjectStoreError if
        some of it was lost (the writer must not acknowledge it). Not `eager`: it may wait
        for the segment's age (the middle of a stream: one upload a second, not a batch)."""
        self.segments.sync(self.segments.current, since, 0.0 if eager else SEGMENT_AGE)

    def stored(self, key: Key, look: bool = True) -> int:
        """Where the part's bytes end now, as far as this server knows, or, if it knows
        nothing and need not `look`, 0: bytes written again overlap the stored ones, and
        are read once (so does a resend another server took)."""
        pending = self.segments.end(key)
        known = self._ends.get(key)
        if known is None and pending is None:
            if not look:
                return 0
            known = self._remember_end(key, _covered(self._extents(key, readable=False))[1])
        return max(pending or 0, known or 0)

    def _remember_end(self, key: Key, end: int) -> int:
        self._ends[key] = max(end, self._ends.pop(key, 0))
        while len(self._ends) > KNOWN_ENDS:
            self._ends.popitem(last=False)
        return self._ends[key]

    def segment_stored(self, key: str, segment: Segment) -> None:
        """An uploaded segment's extents, and which documents it holds the latest of."""
        with self._writes.connection() as conn, conn.transaction(), conn.cursor() as cursor:
            insert_object(cursor, key, len(segment.data), segment.extents)
            if segment.documents:
                cursor.execute("UPDATE documents SET segment = %s WHERE id = ANY(%s)", (key, list(segment.documents)))
        for extent in segment.extents:
            self._remember_end((extent[0], extent[1]), extent[2] + extent[3])

    @contextmanager
    def metadata(self, exchange_id: str, now: float) -> Iterator[dict[str, Any]]:
        """Read, let the caller change, and rewrite an exchange's document, its row locked
        meanwhile (other greenlets and servers wait for it)."""
        exchange_id = exchange_id.lower()
        try:
            with self._writes.connection() as conn, conn.transaction():
                body = conn.execute(_LOCK_DOCUMENT, (exchange_id, now, now)).fetchone()[0]
                document = _loads(body) or {"id": exchange_id, "timestamp": timestamp(now), "parts": {}}
                yield document
                document["rev"] = int(document.get("rev") or 0) + 1
                body = jsoncodec.dumps(document).decode()
                conn.execute("UPDATE documents SET body = %s, rev = %s, changed = %s WHERE id = %s",
                             (body, document["rev"], time.time(), exchange_id))
        except psycopg.OperationalError as e:  # the database went away: the writer answers 503
            raise ObjectStoreError(f"the documents' database: {str(e).strip()[:300]}") from None
        self.segments.note_document(exchange_id, body)

    def put_document(self, document: dict[str, Any], created: float) -> None:
        """Store a document as it is, unless a newer revision is there (migrate, reindex)."""
        body = jsoncodec.dumps(document).decode()
        with self._writes.connection() as conn:
            conn.execute("INSERT INTO documents (id, body, rev, created, changed) VALUES (%s, %s, %s, %s, %s) "
                         "ON CONFLICT (id) DO UPDATE SET body = excluded.body, rev = excluded.rev "
                         "WHERE documents.rev < excluded.rev",
                         (document["id"], body, int(document.get("rev") or 0), created, time.time()))
        self.segments.note_document(document["id"], body)

    # -- reading -------------------------------------------------------------------------

    def _read(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._reads.connection() as conn:
            return conn.execute(sql, args).fetchall()

    def read_metadata(self, exchange_id: str) -> dict[str, Any] | None:
        rows = self._read("SELECT body FROM documents WHERE id = %s", (exchange_id.lower(),))
        return _loads(rows[0][0]) if rows else None

    def exists(self, exchange_id: str) -> bool:
        return self.read_metadata(exchange_id) is not None

    def _extents(self, key: Key, readable: bool = True) -> list[tuple[int, int, Source]]:
        """(part offset, length, source) of the part's uploaded bytes; `readable`: only
        those in objects (not in uploads not completed yet)."""
        rows = self._read("SELECT part_offset, length, object, position FROM extents e WHERE id = %s AND name = %s"
                          + (" AND NOT EXISTS (SELECT 1 FROM uploads u WHERE u.object = e.object)" if readable else "")
                          + " ORDER BY part_offset", key)
        return [(offset, length, self._object_source(obj, position)) for offset, length, obj, position in rows]

    def _object_source(self, obj: str, position: int) -> Source:
        return lambda start, length: self.objects.get_range(obj, position + start, length)

    def part_map(self, key: Key) -> tuple[list[tuple[int, int, Source]], int]:
        """What a reader reads: (start, end, source) pieces covering the part from 0, and its end."""
        pieces = self._extents(key)
        pieces += [(offset, len(data), _memory_source(data)) for offset, data in self.segments.pieces(key)]
        return _covered(pieces)

    def open_part(self, record: ExchangeRecord, kind: str) -> BinaryIO | None:
        name = str(record.part(kind).get("file", ""))
        if not name:
            return None
        return io.BufferedReader(_PartStream(self, (record.id, name)), READ_BUFFER)  # type: ignore[return-value]

    def last_change(self, record: ExchangeRecord) -> float | None:
        rows = self._read("SELECT greatest(changed, (SELECT max(at) FROM extents WHERE id = %s)) "
                          "FROM documents WHERE id = %s", (record.id, record.id))
        return rows[0][0] if rows else None

    def document_keys(self) -> list[str]:
        """Every exchange's id, oldest first."""
        return [r[0] for r in self._read("SELECT id FROM documents WHERE body <> '' ORDER BY created, id", ())]

    # -- restoring from the objects (store/transfer.py) ------------------------------------

    def recorded_objects(self) -> set[str]:
        return {r[0] for r in self._read("SELECT object FROM segments", ())}

    def record_object(self, key: str, size: int, extents: list[list[Any]]) -> None:
        """An object found in the store, with the extents its footer lists."""
        with self._writes.connection() as conn, conn.transaction(), conn.cursor() as cursor:
            insert_object(cursor, key, size, extents)

    def restore_documents(self, documents: list[tuple[str, str, int, float, str]]) -> None:
        """(id, body, rev, created, object) of documents found in objects, unless a newer
        revision is here."""
        with self._writes.connection() as conn, conn.transaction(), conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO documents (id, body, rev, created, changed, segment) VALUES (%s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET body = excluded.body, rev = excluded.rev, segment = excluded.segment "
                "WHERE documents.rev < excluded.rev",
                [(i, body, rev, created, time.time(), key) for i, body, rev, created, key in documents])

    def adopt_document(self, key: str) -> tuple[dict[str, Any] | None, bool]:
        return self.read_metadata(key), True

    # -- deleting ------------------------------------------------------------------------

    def delete_exchange(self, document: dict[str, Any]) -> int:
        """Remove an exchange's rows (its bytes go with the last segment that holds any);
        returns the bytes freed."""
        exchange_id = str(document.get("id", "")).lower()
        with self._writes.connection() as conn, conn.transaction():
            freed = sum(r[0] for r in conn.execute("DELETE FROM extents WHERE id = %s RETURNING length",
                                                    (exchange_id,)))
            freed += sum(r[0] for r in conn.execute("DELETE FROM documents WHERE id = %s RETURNING length(body)",
                                                     (exchange_id,)))
        for key in [k for k in self._ends if k[0] == exchange_id]:
            del self._ends[key]
        return freed

    def collect(self) -> int:
        """Delete the segment objects no extent points into and no document's latest copy is
        in; the number deleted."""
        with self._writes.connection() as conn:
            gone = [r[0] for r in conn.execute(
                "DELETE FROM segments s WHERE NOT EXISTS (SELECT 1 FROM extents e WHERE e.object = s.object) "
                "AND NOT EXISTS (SELECT 1 FROM documents d WHERE d.segment = s.object) RETURNING object")]
        self.objects.delete(gone)
        return len(gone)

    @contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        """An advisory lock of the database, taken without waiting, for as long as this
        holds: whether this server holds it (the others share the database, not a dir)."""
        key = lock_key(name)
        with self._writes.connection() as conn:
            ours = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]
            try:
                yield ours
            finally:
                if ours:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (key,))

    def close(self) -> None:
        self.segments.close()
        self._holding.close()
        self.objects.close()
        self._writes.close()
        self._reads.close()


class ObjectPartWriter:
    """A part written into the server's open segment, at the offset where it ends."""

    __slots__ = ("store", "key", "name", "_offset")

    def __init__(self, store: ObjectBodyStore, key: Key, fresh: bool) -> None:
        self.store, self.key, self.name = store, key, key[1]
        self._offset: int | None = 0 if fresh else None

    def stored(self, look: bool = False) -> int:
        self._offset = self.store.stored(self.key, look)
        return self._offset

    def write(self, data: bytes | memoryview) -> None:
        if self._offset is None:
            self.stored(look=True)
        self.store.segments.append(self.key, self._offset, data)
        self._offset += len(data)

    def head(self, most: int) -> bytes:
        return _PartStream(self.store, self.key).read(most)

    def flush(self) -> None:
        self.store.segments.settle(self.key)

    def close(self) -> None:
        self.store.segments.finish(self.key)

    def __enter__(self) -> "ObjectPartWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _PartStream(io.RawIOBase):
    """A part's bytes as a readable, seekable stream that may still grow: at its end it
    looks again for extents uploaded meanwhile."""

    def __init__(self, store: ObjectBodyStore, key: Key) -> None:
        self._store, self._key = store, key
        self._pieces: list[tuple[int, int, Source]] = []
        self._end = 0
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._pos >= self._end:
            self._pieces, self._end = self._store.part_map(self._key)
        for start, end, source in self._pieces:
            if start <= self._pos < end:
                data = source(self._pos - start, min(len(buffer), end - self._pos))
                buffer[:len(data)] = data
                self._pos += len(data)
                return len(data)
        return 0

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 2:
            self._pieces, self._end = self._store.part_map(self._key)
            offset += self._end
        elif whence == 1:
            offset += self._pos
        self._pos = max(0, offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


def _covered(pieces: list[tuple[int, int, Source]]) -> tuple[list[tuple[int, int, Source]], int]:
    """The pieces that cover the part from 0 with no gap, each byte once, and where they end."""
    covered: list[tuple[int, int, Source]] = []
    end = 0
    for offset, length, source in sorted(pieces, key=lambda p: p[0]):
        if offset > end:
            break  # a gap: the bytes after it are not the part's yet
        if offset + length > end:
            covered.append((end, offset + length, _shifted(source, end - offset)))
            end = offset + length
    return covered, end


def _shifted(source: Source, skip: int) -> Source:
    return source if skip == 0 else (lambda start, length: source(start + skip, length))


def _memory_source(data: bytes) -> Source:
    return lambda start, length: data[start:start + length]


def _loads(body: str) -> dict[str, Any] | None:
    if not body:
        return None
    try:
        document = jsoncodec.loads(body)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None
