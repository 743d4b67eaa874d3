"""The multipart uploads' rows in PostgreSQL (store/uploads.py records, the object store
reads): `uploads` lists each upload not yet completed, its stored parts and its holder,
the server writing it; its extents are in `extents` as each part is stored.

A server's lock (`pg_advisory_lock`, held by a connection of its own for as long as it runs)
says it holds its uploads: once the lock is free, the server is gone, and any other
completes what it left (`adopt_uploads`, every few seconds on each server).
"""
from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import psycopg

from orproxy import jsoncodec
from orproxy.logserver.store.objects import ObjectStoreError, Objects
from orproxy.logserver.store.pgindex import Pool, connect
from orproxy.logserver.store.segments import Segments
from orproxy.logserver.store.uploads import Upload, complete_stored

INSERT_EXTENT = "INSERT INTO extents (id, name, part_offset, length, object, position, at) " \
                "VALUES (%s, %s, %s, %s, %s, %s, %s)"
_INSERT_EXTENT_IF_KEPT = "INSERT INTO extents (id, name, part_offset, length, object, position, at) " \
                         "SELECT %s, %s, %s, %s, %s, %s, %s WHERE EXISTS (SELECT 1 FROM extents WHERE object = %s)"


def insert_object(cursor: Any, key: str, size: int, extents: list[list[Any]]) -> None:
    """An object's row and its extents' (a segment's, a completed upload's, or one reindex
    found in the store)."""
    now = time.time()
    cursor.execute("INSERT INTO segments (object, bytes, at) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                   (key, size, now))
    if extents:
        cursor.executemany(INSERT_EXTENT, [(*e[:4], key, e[4], now) for e in extents])


def lock_key(name: str) -> int:
    """An advisory lock's key in PostgreSQL, by what it locks."""
    return zlib.crc32(f"orproxy {name}".encode())


class UploadRows:
    """The uploads' part of objectstore.ObjectBodyStore (its ledger, store/uploads.Ledger)."""

    objects: Objects
    segments: Segments
    _writes: Pool
    _database_url: str
    _holding: psycopg.Connection[Any] | None = None
    _read: Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]]
    _remember_end: Callable[[tuple[str, str], int], int]
    exclusive: Callable[[str], AbstractContextManager[bool]]

    def _hold(self) -> None:
        """Take this server's lock, again if the database restarted (it went with the session)."""
        if self._holding is not None:
            try:
                self._holding.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                self._holding.close()
        self._holding = connect(self._database_url)
        self._holding.execute("SELECT pg_advisory_lock(%s)", (lock_key(f"holder {self.segments.instance}"),))

    def part_stored(self, upload: Upload, number: int, etag: str, extent: list[Any]) -> None:
        """A stored part of a multipart upload: its bytes, and the upload's parts so far."""
        parts = jsoncodec.dumps([*upload.parts, (number, etag)]).decode()
        with self._writes.connection() as conn, conn.transaction(), conn.cursor() as cursor:
            row = (*extent[:4], upload.object, extent[4], time.time())
            if not upload.parts:
                cursor.execute("INSERT INTO uploads (object, upload_id, holder, parts, started) "
                               "VALUES (%s, %s, %s, %s, %s)",
                               (upload.object, upload.upload_id, self.segments.instance, parts, time.time()))
                cursor.execute(INSERT_EXTENT, row)
            else:  # waits while another server completes it (the row locked), then finds it gone
                cursor.execute("UPDATE uploads SET parts = %s WHERE object = %s", (parts, upload.object))
                if cursor.rowcount != 1:
                    raise ObjectStoreError(f"{self.objects.url}: another server completed an upload of this "
                                           "one's (its lock in PostgreSQL was lost)")
                cursor.execute(_INSERT_EXTENT_IF_KEPT, (*row, upload.object))  # unless its exchange was deleted
        self._remember_end(upload.key, extent[2] + extent[3])

    def upload_completed(self, upload: Upload, extent: list[Any] | None) -> None:
        """A completed upload: its last bytes, and its object readable as a segment's."""
        with self._writes.connection() as conn, conn.transaction(), conn.cursor() as cursor:
            if extent is not None:  # unless its exchange was deleted meanwhile (its parts' extents with it)
                cursor.execute(_INSERT_EXTENT_IF_KEPT, (*extent[:4], upload.object, extent[4], time.time(),
                                                        upload.object))
            self._completed(cursor, upload.object, upload.size + (extent[3] if extent else 0))
        if extent is not None:
            self._remember_end(upload.key, extent[2] + extent[3])

    @staticmethod
    def _completed(cursor: Any, key: str, size: int) -> None:
        cursor.execute("DELETE FROM uploads WHERE object = %s", (key,))
        insert_object(cursor, key, size, [])

    def adopt_uploads(self) -> int:
        """Complete the uploads no server is writing: those whose holder is gone (its lock
        free), and this server's that failed to complete. How many it completed."""
        self._hold()
        done = 0
        for key, holder in self._read("SELECT object, holder FROM uploads", ()):
            if holder == self.segments.instance:
                if key not in self.segments.uploads.active:
                    done += self._complete_stored(key)
                continue
            with self.exclusive(f"holder {holder}") as gone:
                if gone:
                    done += self._complete_stored(key)
        return done

    def _complete_stored(self, key: str) -> int:
        """Complete an upload from its rows, locked meanwhile: its holder, if alive after all,
        cannot record another part in it (part_stored then fails, and acknowledges nothing)."""
        with self._writes.connection() as conn, conn.transaction(), conn.cursor() as cursor:
            row = cursor.execute("SELECT upload_id, parts FROM uploads WHERE object = %s FOR UPDATE", (key,)).fetchone()
            if row is None:
                return 0  # completed meanwhile
            upload_id, parts = row
            extents = [list(r) for r in cursor.execute("SELECT id, name, part_offset, length, position FROM extents "
                                                       "WHERE object = %s ORDER BY position", (key,))]
            if not extents:  # its exchange was deleted meanwhile
                self.objects.abort_upload(key, upload_id)
                cursor.execute("DELETE FROM uploads WHERE object = %s", (key,))
                return 0
            complete_stored(self.objects, key, upload_id, [tuple(p) for p in jsoncodec.loads(parts)], extents)
            self._completed(cursor, key, sum(e[3] for e in extents))
        return 1
