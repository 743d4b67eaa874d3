"""Filling an object store's PostgreSQL tables from elsewhere: from its own segment objects
(`orlogserver --reindex --store s3://…`: the database lost or new), or from a log dir
(`orlogserver migrate --from file:DIR --to s3://…`).

Both can be stopped and run again: a segment already recorded is skipped, and a migrated
exchange is copied again only if the log dir holds a newer revision of it, from where its
parts end in the store.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from orproxy import jsoncodec
from orproxy.logserver.store.logdir import LogDir
from orproxy.logserver.store.objectstore import ObjectBodyStore, ObjectPartWriter
from orproxy.logserver.store.record import ExchangeRecord
from orproxy.logserver.store.reindex import reindex
from orproxy.logserver.store.schema import file_time
from orproxy.logserver.store.footers import segment_footer
from orproxy.logserver.store.segments import PREFIX
from orproxy.logserver.store.stores import IndexStore

BLOCK = 1024 * 1024
SYNC_BYTES = 8 * 1024 * 1024  # a migration makes its copies durable every segment or so,
DOCUMENTS_AT_ONCE = 500        # or every so many exchanges


@dataclass
class Restored:
    segments: int = 0
    recorded: int = 0   # of them, recorded now (the others were known)
    skipped: int = 0    # objects under segments/ that are not segments
    documents: int = 0


def restore_from_segments(store: ObjectBodyStore) -> Restored:
    """Record every segment object's extents, and the newest copy of each document they
    hold, that the database lacks."""
    result = Restored()
    known = store.recorded_objects()
    newest: dict[str, tuple[int, str, str]] = {}  # id -> (rev, body, object)
    for key, size in store.objects.sizes(PREFIX):
        footer = segment_footer(store.objects, key, size)
        if footer is None:
            result.skipped += 1
            continue
        result.segments += 1
        for exchange_id, body in footer.get("documents", {}).items():
            rev = int(jsoncodec.loads(body).get("rev") or 0)
            if exchange_id not in newest or rev >= newest[exchange_id][0]:
                newest[exchange_id] = (rev, body, key)
        if key not in known:
            store.record_object(key, size, footer.get("extents", []))
            result.recorded += 1
    store.restore_documents([(i, body, rev, _created(body), key) for i, (rev, body, key) in newest.items()])
    result.documents = len(newest)
    return result


def _created(body: str) -> float:
    return file_time(jsoncodec.loads(body).get("timestamp")) or time.time()


@dataclass
class Migrated:
    copied: int = 0
    already: int = 0  # copied by an earlier run
    skipped: int = 0  # unreadable, or a copy of another exchange's files
    bytes: int = 0
    indexed: int = 0
    seconds: float = 0.0


def migrate(source: LogDir, target: ObjectBodyStore, index: IndexStore,
            say: Callable[[str], None] = lambda line: None) -> Migrated:
    """Copy every exchange of `source`, oldest first, then index them all from the log dir
    (its derived fields and search texts are made there, where the bodies are files), then
    copy the documents the indexing rewrote."""
    started = time.monotonic()
    result = Migrated()
    _copy_all(source, target, result, say)
    result.indexed = reindex(source, index).indexed
    _copy_all(source, target, Migrated(), say)  # the derived fields reindex stored
    result.seconds = time.monotonic() - started
    return result


def _copy_all(source: LogDir, target: ObjectBodyStore, result: Migrated, say: Callable[[str], None]) -> None:
    since, unsynced, waiting = target.sync_point(), 0, []
    for key in source.document_keys():
        document, own = source.adopt_document(key)
        if document is None or not own:
            result.skipped += 1
            continue
        there = target.read_metadata(document["id"])
        if there is not None and int(there.get("rev") or 0) >= int(document.get("rev") or 0):
            result.already += 1
            continue
        copied = _copy_parts(source, target, ExchangeRecord(document))
        result.bytes += copied
        unsynced += copied
        waiting.append(document)
        if unsynced >= SYNC_BYTES or len(waiting) >= DOCUMENTS_AT_ONCE:
            _put_documents(target, since, waiting, result, say)
            since, unsynced, waiting = target.sync_point(), 0, []
    _put_documents(target, since, waiting, result, say)


def _put_documents(target: ObjectBodyStore, since: int, documents: list[dict[str, Any]], result: Migrated,
                   say: Callable[[str], None]) -> None:
    """The documents, once the bytes they name are durable."""
    target.sync(since)
    for document in documents:
        target.put_document(document, file_time(document.get("timestamp")) or time.time())
    if documents:
        before, result.copied = result.copied, result.copied + len(documents)
        if before // 10000 != result.copied // 10000:
            say(f"orlogserver: migrated {result.copied} exchanges")


def _copy_parts(source: LogDir, target: ObjectBodyStore, record: ExchangeRecord) -> int:
    """Copy the parts' bytes the store lacks; how many were copied."""
    copied = 0
    for kind in ("request", "response"):
        name = str(record.part(kind).get("file", ""))
        f = source.open_part(record, kind) if name else None
        if f is None:
            continue
        with f, ObjectPartWriter(target, (record.id, name), fresh=False) as writer:  # a large one's upload completed
            f.seek(writer.stored(look=True))
            while block := f.read(BLOCK):
                writer.write(block)
                copied += len(block)
    return copied
