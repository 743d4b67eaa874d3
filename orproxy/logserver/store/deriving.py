"""The `derived` entry of a metadata document: the LLM fields (llm/derive.py) of the
exchange's parts, read back from the log dir.

Bounded: a body is decoded up to DERIVE_LIMIT, and a long stream is skimmed (bodies.py),
so a huge download costs a bounded amount of memory and time. An exchange whose request
has ended while its answer is still to come gets the request's fields alone first; the
final derivation then takes them from there instead of parsing the request again.
"""
from __future__ import annotations

import time
from typing import Any

from orproxy.logserver.llm import derive
from orproxy.logserver.llm.bodies import parse_body
from orproxy.logserver.store.logdir import LogDir
from orproxy.logserver.store.record import ExchangeRecord

DERIVE_LIMIT = 16 * 1024 * 1024   # decoded bytes per body looked at for the derived fields


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
