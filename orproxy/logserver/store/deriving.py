"""The `derived` entry of a metadata document: the LLM fields (llm/derive.py) of the
exchange's parts, read back from the log dir (ingest.py decides when, and stores them).

When: once the response part has ended and no part is still arriving, or when the proxy
reported the end of an exchange that has no response part. A part that ends later (rare:
a request still uploading) makes the fields be derived again. With several worker
processes, the one that wrote the last part's end derives. Before that, when the request
part ends while the response is still to come (a stream, a slow upstream), the request's
fields (model, stream, prompt preview, api) are derived alone, so that an exchange in
flight is listed, and filtered, by its model; the final derivation then takes them from
there instead of parsing the request again.

Bounded: a body is decoded up to DERIVE_LIMIT and a long stream is skimmed (bodies.py).
Bodies up to INLINE_BYTES are parsed on the gevent loop (well under a millisecond), larger
ones on a thread of their own: a large body must not stall the loop.
"""
from __future__ import annotations

import sys
import time
from typing import Any

from gevent.threadpool import ThreadPool

from orproxy.logserver.llm import derive
from orproxy.logserver.llm.bodies import parse_body
from orproxy.logserver.store.logdir import LogDir
from orproxy.logserver.store.record import ExchangeRecord

DERIVE_LIMIT = 16 * 1024 * 1024   # decoded bytes per body looked at for the derived fields
INLINE_BYTES = 64 * 1024          # bodies up to this are parsed on the loop


def derive_request_document(log_dir: LogDir, document: dict[str, Any]) -> dict[str, Any]:
    """The `derived` entry of an exchange whose request has ended and whose response has
    not: the fields the request gives (derive.request_fields), so that an exchange in
    flight is listed with its model. Its `parts` is ["request"]."""
    record = ExchangeRecord(document)
    request = log_dir.read_part(record, "request", DERIVE_LIMIT)
    fields = derive.request_fields(parse_body(request) if request else None,
                                   record.request_path(request.head if request else None))
    return {"version": derive.VERSION, "parts": ["request"], "at": time.time(), **fields}


def derive_document(log_dir: LogDir, document: dict[str, Any]) -> dict[str, Any]:
    """The `derived` entry of a metadata document, from the exchange's files (the request's
    fields taken from the entry if derive_request_document made it: parsed once)."""
    record = ExchangeRecord(document)
    if record.has_request_fields:
        requested, path = record.derived, record.request_path()
    else:
        request = log_dir.read_part(record, "request", DERIVE_LIMIT)
        path = record.request_path(request.head if request else None)
        requested = derive.request_fields(parse_body(request) if request else None, path)
    response = log_dir.read_part(record, "response", DERIVE_LIMIT)
    fields = derive.answer_fields(requested, parse_body(response, skim=True) if response else None, path)
    return {"version": derive.VERSION, "parts": record.ended_parts, "at": time.time(), **fields}


class Deriver:
    """Derives on the loop what is small, on its thread what is large; a failure is stored
    as the entry's `error` (and counted), so that a bug cannot make it try for ever."""

    def __init__(self, log_dir: LogDir) -> None:
        self.log_dir = log_dir
        self.pool = ThreadPool(1)  # also rebuilds the index (app.py): files are read there
        self.errors = 0

    def inline(self, record: ExchangeRecord) -> dict[str, Any] | None:
        """At the end of a part, the entry to store in the same rewrite, if it is cheap:
        the whole exchange's once it is ready, else the request's fields; None otherwise."""
        if record.ready:
            if record.needs_derive and record.unparsed_bytes() <= INLINE_BYTES:
                return self.compute(record)
        elif record.request_only and record.unparsed_bytes(request_only=True) <= INLINE_BYTES:
            return self.compute(record, request_only=True)
        return None

    def compute(self, record: ExchangeRecord, request_only: bool = False) -> dict[str, Any]:
        how = derive_request_document if request_only else derive_document
        try:
            if record.unparsed_bytes(request_only) <= INLINE_BYTES:  # small: no thread hop
                return how(self.log_dir, record.document)
            return self.pool.apply(how, (self.log_dir, record.document))  # the loop keeps serving
        except Exception as e:  # a bug must not loop: store the failure instead
            self.errors += 1
            print(f"orlogserver: deriving fields of {record.id} failed: {e!r}", file=sys.stderr)
            parts = ["request"] if request_only else sorted(record.parts)
            return {"version": derive.VERSION, "parts": parts, "error": repr(e)}
