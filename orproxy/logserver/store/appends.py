"""Batch ingest (`POST /ingest`, orproxy/logwire.py): appends to many parts, and the proxy's
metadata, in one request, every byte landing once.

An append names its part's file from the proxy's clock (`t`, when the part started), so a
resent append finds the file it resumes, whichever process or restart took the first try.
The file holds `length` bytes: an append at that offset is written; one that starts
before it has its first bytes skipped (they are here already: a retry); one past it (a
gap, which a proxy that resends from its acks never makes) is not written. The ack of
every record is the part's length after it, so the proxy frees what is here and resends
what is not (CONTRACT.md, "Logging stream": exactly once). The acks wait until the store
holds the bytes durably (an object store's upload, store/segments.py).

The metadata document of each exchange the batch changed is written once for the batch
(ingest.Ingest.apply): a small exchange whose request, response and metadata came
together is one write of each of its three files. A part's data alone changes nothing in
the document; its start, its head, its end and the proxy's metadata do.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from orproxy.logwire import Append, BadBatch, Metadata, records
from orproxy.logserver.llm.httpfile import MAX_HEAD, parse_head
from orproxy.logserver.llm.sse import strict_json
from orproxy.logserver.store.ingest import (KEEP_BYTES, MAX_METADATA, Change, Event, HeadKnown, Ingest,
                                            PartEnded, PartStarted, ProxyMetadataStored)
from orproxy.logserver.store.logdir import UUID_RE
from orproxy.logserver.store.stores import PartWriter

OPEN_FILES = 256  # parts still arriving whose writers (files) stay open between batches


class Appends:
    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest
        self.log_dir = ingest.log_dir
        self._open: OrderedDict[tuple[str, str, float], _Arriving] = OrderedDict()  # parts still arriving

    def take(self, body: bytes) -> list[int]:
        """Apply a batch; the ack of each record. BadBatch for a malformed one, before any of
        it is applied."""
        batch = list(records(body))
        documents: dict[int, dict[str, Any]] = {}
        for i, record in enumerate(batch):
            if not UUID_RE.match(record.exchange_id):
                raise BadBatch(f"{record.exchange_id[:40]!r} is not a UUID")
            if isinstance(record, Metadata):
                documents[i] = _proxy_metadata(record)
        now = time.time()
        since = self.log_dir.sync_point()
        acks: list[int] = []
        changes: dict[str, list[tuple[float, Change, Event]]] = {}
        unsettled: dict[Any, PartWriter] = {}  # the writers of parts that go on
        for i, record in enumerate(batch):
            exchange_id = record.exchange_id.lower()
            if isinstance(record, Append):
                length, change, event = self._append(exchange_id, record, now, unsettled)
                acks.append(length)
                when = record.t0  # the first change of an exchange names its metadata file
            else:
                proxy = documents[i]
                change, event, when = (lambda d, proxy=proxy: d.update(proxy=proxy)), ProxyMetadataStored(), now
                acks.append(0)
            if change is not None:
                changes.setdefault(exchange_id, []).append((when, change, event))
        # The bytes durable before any document or ack claims them; the middle of a stream
        # (no part ends, no metadata) may wait to share an upload: S3 bills each PUT.
        for writer in unsettled.values():
            writer.flush()  # what it holds back for a whole multipart part, as the acks claim it
        self.log_dir.sync(since, eager=any(getattr(r, "final", True) for r in batch))
        for exchange_id, exchange_changes in changes.items():
            self.ingest.apply(exchange_id, exchange_changes)
        return acks

    def _append(self, exchange_id: str, record: Append, now: float,
                unsettled: dict[Any, PartWriter]) -> tuple[int, Change | None, Event | None]:
        key = (exchange_id, record.kind, record.t)
        part = self._open.pop(key, None) or _Arriving(self.log_dir.open_writer(exchange_id, record.kind, record.t))
        length = part.writer.stored()
        if record.offset > length:  # a gap, by what the writer knows: is it one?
            length = part.writer.stored(look=True)
        data = record.data
        end = record.offset + len(data)
        if record.offset <= length < end:
            part.writer.write(data[length - record.offset:])
            length = end
        complete = record.final and length == end
        if complete:
            part.writer.close()
        else:
            self._keep_open(key, part)
            unsettled[key] = part.writer
        name = part.writer.name
        head = None
        if not part.head_known and record.offset < MAX_HEAD:
            head = parse_head(bytes(data[:MAX_HEAD]) if record.offset == 0 else part.writer.head(MAX_HEAD))
            part.head_known = head is not None
        if complete and record.offset == 0 and len(data) <= KEEP_BYTES:
            self.log_dir.keep_recent(name, bytes(data), head)  # deriving reads it from here, not the file
        kind = record.kind

        def change(document: dict[str, Any]) -> None:
            entry = document["parts"].setdefault(kind, {"file": name, "received_at": now, "complete": False})
            entry["bytes"] = length
            if head is not None and "head" not in entry:
                entry["head"] = head.summary()
            if complete:
                entry.update(complete=True, completed_at=time.time())
                entry.pop("error", None)

        # What this append is news of: a part's end, its first bytes, its head; data alone
        # changes nothing that is listed (the file itself grows).
        if complete:
            return length, change, PartEnded(kind)
        if record.offset == 0:
            return length, change, PartStarted(kind)
        if head is not None:
            return length, change, HeadKnown(kind)
        return length, None, None

    def _keep_open(self, key: tuple[str, str, float], part: "_Arriving") -> None:
        self._open[key] = part
        while len(self._open) > OPEN_FILES:
            self._open.popitem(last=False)[1].writer.close()

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].writer.close()


class _Arriving:
    """A part's writer held between batches, and whether its head was found yet (a head
    longer than the first append is read back from the part's start)."""

    __slots__ = ("writer", "head_known")

    def __init__(self, writer: PartWriter) -> None:
        self.writer = writer
        self.head_known = False


def _proxy_metadata(record: Metadata) -> dict[str, Any]:
    if len(record.data) > MAX_METADATA:
        raise BadBatch(f"metadata larger than {MAX_METADATA} bytes")
    try:
        document = strict_json(bytes(record.data).decode("utf-8", "replace"))
    except ValueError as e:
        raise BadBatch(f"metadata is not JSON: {e}") from None
    if not isinstance(document, dict):
        raise BadBatch("metadata must be a JSON object")
    return document
