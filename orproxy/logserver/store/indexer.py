"""Keeps the index in step with ingest: the Ingest observer of the logging server.

Every metadata-file update queues that exchange's row (cheap, never blocking). Once the
parts of an exchange have ended, its LLM fields are derived from the files and stored in
its metadata file under "derived", which queues the row again, now with model, tokens and
cost. A small exchange (most) is derived within the update that ends its last part; a
large one afterwards, on a thread of its own (a large body must not stall the gevent loop).

When to derive: when the response part has ended and no part is still arriving, or when
the proxy reported the end of an exchange that has no response part. A part that ends
later (rare: a request still uploading) makes the fields be derived again. With several
worker processes, the one that wrote the last part's end derives.

Before that, when the request part ends while the response is still to come (a stream, a
slow upstream), the request's fields (model, stream, prompt preview, api) are derived
alone, so that an exchange in flight is listed, and filtered, by its model. The same
rules: within the update that ends the part when the request is small, else on the
thread. Nothing is parsed twice: the final derivation takes the request's fields from
there (deriving.derive_document), so for a small exchange whose parts arrive in one batch
this only moves the request's parsing to the end of its own part.
"""
from __future__ import annotations

import sys
from typing import Any

import gevent
from gevent.threadpool import ThreadPool

from orproxy.logserver.llm import derive
from orproxy.logserver.store.deriving import derive_document, derive_request_document
from orproxy.logserver.store.index import Index
from orproxy.logserver.store.ingest import Ingest
from orproxy.logserver.store.logdir import LogDir
from orproxy.logserver.store.record import ExchangeRecord

INLINE_BYTES = 64 * 1024  # bodies up to this are parsed on the loop: well under a millisecond
RECHECK_AFTER = 2.0


class Indexer:
    def __init__(self, log_dir: LogDir, index: Index, ingest: Ingest) -> None:
        self.log_dir = log_dir
        self.index = index
        self.ingest = ingest
        self.pool = ThreadPool(1)
        self._deriving: set[str] = set()
        self._deriving_request: set[str] = set()
        self.derive_errors = 0
        ingest.observers.append(self.observe)
        ingest.on_part_end = self.derive_small

    def derive_small(self, document: dict[str, Any]) -> None:
        """At the end of the last part of a small exchange (most), derive its fields in the
        same metadata update: one file rewrite fewer than deriving afterwards. At the end
        of a small request whose response is still to come, its request's fields."""
        record = ExchangeRecord(document)
        if record.ready:
            if record.needs_derive and record.unparsed_bytes() <= INLINE_BYTES:
                document["derived"] = self._compute(str(document.get("id")), document)
        elif record.request_only and record.unparsed_bytes(request_only=True) <= INLINE_BYTES:
            document["derived"] = self._compute(str(document.get("id")), document, request_only=True)

    def observe(self, exchange_id: str, document: dict[str, Any]) -> None:
        exchange_id = exchange_id.lower()
        self.index.put(document)
        record = ExchangeRecord(document)
        if exchange_id not in self._deriving and record.ready and record.needs_derive:
            self._deriving.add(exchange_id)
            # The proxy's metadata came after every part had ended, yet nothing is derived:
            # another worker process (that wrote the end) is most likely at it. Look again later.
            later = self.ingest.changing == "proxy" and record.ended("response")
            gevent.spawn(self._derive, exchange_id, None if later else document)
        elif exchange_id not in self._deriving_request and record.request_only:
            self._deriving_request.add(exchange_id)  # a large request: its fields on the thread
            gevent.spawn(self._derive_request, exchange_id, document)

    def _derive(self, exchange_id: str, document: dict[str, Any] | None) -> None:
        try:
            if document is None:
                gevent.sleep(RECHECK_AFTER)
                document = self.log_dir.read_metadata(exchange_id)
                if document is None or not ExchangeRecord(document).needs_derive:
                    return
            derived = self._compute(exchange_id, document)
        finally:
            self._deriving.discard(exchange_id)
        self.ingest.amend(exchange_id, lambda d: d.update(derived=derived))

    def _derive_request(self, exchange_id: str, document: dict[str, Any]) -> None:
        try:
            derived = self._compute(exchange_id, document, request_only=True)
        finally:
            self._deriving_request.discard(exchange_id)

        def change(current: dict[str, Any]) -> None:
            if "derived" not in current:  # not if the whole exchange was derived meanwhile
                current["derived"] = derived
        self.ingest.amend(exchange_id, change)

    def _compute(self, exchange_id: str, document: dict[str, Any], request_only: bool = False) -> dict[str, Any]:
        how = derive_request_document if request_only else derive_document
        try:
            if ExchangeRecord(document).unparsed_bytes(request_only) <= INLINE_BYTES:  # small: no thread hop
                return how(self.log_dir, document)
            return self.pool.apply(how, (self.log_dir, document))  # the loop keeps serving
        except Exception as e:  # a bug must not loop: store the failure instead
            self.derive_errors += 1
            print(f"orlogserver: deriving fields of {exchange_id} failed: {e!r}", file=sys.stderr)
            parts = ["request"] if request_only else sorted(ExchangeRecord(document).parts)
            return {"version": derive.VERSION, "parts": parts, "error": repr(e)}
