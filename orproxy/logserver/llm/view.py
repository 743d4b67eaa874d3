"""An exchange read back from its files: for the derived fields, and for the API's parsed
view (`GET /api/requests/{id}/exchange`).

Both are bounded: bodies are decoded up to a limit, so a huge download costs a bounded
amount of memory and time. The API parses on a thread; the indexer parses small exchanges
on the loop (about a millisecond at most: long streams are skimmed) and large ones on a thread.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

from orproxy.logserver.llm import derive
from orproxy.logserver.llm.bodies import ParsedBody, parse_body
from orproxy.logserver.llm.httpfile import Message, parse_message, read_message
from orproxy.logserver.store.logdir import LogDir

DERIVE_LIMIT = 16 * 1024 * 1024   # decoded bytes per body looked at for the derived fields
VIEW_LIMIT = 8 * 1024 * 1024      # decoded bytes per body shown by the API
PRETTY_LIMIT = 8 * 1024 * 1024    # JSON bodies up to this size are re-indented
MAX_VIEW_EVENTS = 20_000


def ended_parts(document: dict[str, Any]) -> list[str]:
    """The parts whose upload has ended (complete, or broken off)."""
    parts = document.get("parts") or {}
    return sorted(k for k, p in parts.items() if isinstance(p, dict) and "completed_at" in p)


def load_part(log_dir: LogDir, document: dict[str, Any], kind: str, limit: int) -> Message | None:
    part = (document.get("parts") or {}).get(kind)
    if not isinstance(part, dict):
        return None
    path = log_dir.file_path(str(part.get("file", "")))
    if path is None:
        return None
    data = log_dir.take_recent(os.path.basename(path))
    if data is not None:
        return parse_message(data, limit)
    try:
        return read_message(path, limit)
    except OSError:
        return None


def _request_path(document: dict[str, Any], request: Message | None) -> str | None:
    proxy = document.get("proxy") or {}
    if isinstance(proxy, dict) and proxy.get("path"):
        return proxy["path"]
    if request is not None and request.head is not None:
        return request.head.summary().get("path")
    head = ((document.get("parts") or {}).get("request") or {}).get("head") or {}
    return head.get("path") if isinstance(head, dict) else None  # ingest's summary of the head


def derive_request_document(log_dir: LogDir, document: dict[str, Any]) -> dict[str, Any]:
    """The `derived` entry of an exchange whose request has ended and whose response has
    not: the fields the request gives (derive.request_fields), so that an exchange in
    flight is listed with its model. Its `parts` is ["request"]."""
    request = load_part(log_dir, document, "request", DERIVE_LIMIT)
    fields = derive.request_fields(parse_body(request) if request else None, _request_path(document, request))
    return {"version": derive.VERSION, "parts": ["request"], "at": time.time(), **fields}


def has_request_fields(document: dict[str, Any]) -> bool:
    """The `derived` entry holds the request's fields (and how to finish them) by the
    current rules: derive_document need not read the request again."""
    derived = document.get("derived")
    return isinstance(derived, dict) and derived.get("version") == derive.VERSION \
        and derived.get("parts") == ["request"] and derive.REQUEST_GUESS in derived


def derive_document(log_dir: LogDir, document: dict[str, Any]) -> dict[str, Any]:
    """The `derived` entry of a metadata document, from the exchange's files (the request's
    fields taken from the entry if derive_request_document made it: parsed once)."""
    if has_request_fields(document):
        requested, path = document["derived"], _request_path(document, None)
    else:
        request = load_part(log_dir, document, "request", DERIVE_LIMIT)
        path = _request_path(document, request)
        requested = derive.request_fields(parse_body(request) if request else None, path)
    response = load_part(log_dir, document, "response", DERIVE_LIMIT)
    fields = derive.answer_fields(requested, parse_body(response, skim=True) if response else None, path)
    return {"version": derive.VERSION, "parts": ended_parts(document), "at": time.time(), **fields}


def needs_derive(document: dict[str, Any]) -> bool:
    """True when the derived fields are missing, stale, or older than the ended parts."""
    derived = document.get("derived")
    if not isinstance(derived, dict) or derived.get("version") != derive.VERSION:
        return bool(ended_parts(document))
    return set(ended_parts(document)) - set(derived.get("parts") or []) != set()


def _body_view(message: Message | None, parsed: ParsedBody) -> dict[str, Any]:
    if message is None:
        return {"kind": "empty", "size": 0}
    body = message.body
    out: dict[str, Any] = {"kind": parsed.kind, "size": body.raw_size, "encoding": body.encoding,
                           "decoded_size": len(body.data), "truncated": body.truncated}
    if body.decode_error:
        out["decode_error"] = body.decode_error
    if parsed.kind == "json":
        out["json"] = parsed.json
        out["text"] = (json.dumps(parsed.json, indent=2, ensure_ascii=False)
                       if len(body.data) <= PRETTY_LIMIT else parsed.text)
    elif parsed.text is not None:
        out["text"] = parsed.text
    if parsed.stream is not None:
        out["events"] = [e.to_dict() for e in parsed.stream.events]
        out["events_truncated"] = parsed.stream.truncated
        out["comments"] = parsed.stream.comments
        out["assembled"] = parsed.assembled
    return out


def _message_view(message: Message | None, parsed: ParsedBody, kind: str) -> dict[str, Any] | None:
    if message is None:
        return None
    head = message.head
    out: dict[str, Any] = {"start_line": head.start_line if head else None,
                           "headers": [[n, v] for n, v in head.headers] if head else [],
                           "body": _body_view(message, parsed)}
    parts = head.start_line.split(" ", 2) if head else []
    if kind == "request" and len(parts) >= 2:
        out.update(method=parts[0], target=parts[1], version=parts[2] if len(parts) > 2 else None)
    elif kind == "response" and len(parts) >= 2:
        out.update(version=parts[0], status=int(parts[1]) if parts[1].isdigit() else None,
                   reason=parts[2] if len(parts) > 2 else "")
    return out


def exchange_view(log_dir: LogDir, document: dict[str, Any]) -> dict[str, Any]:
    """Both messages parsed: headers as lists, bodies decoded, JSON re-indented, SSE events
    listed and the streamed answer assembled; plus the derived fields."""
    request = load_part(log_dir, document, "request", VIEW_LIMIT)
    response = load_part(log_dir, document, "response", VIEW_LIMIT)
    req_body = parse_body(request, MAX_VIEW_EVENTS)
    resp_body = parse_body(response, MAX_VIEW_EVENTS)
    fields = derive.derive(req_body if request else None, resp_body if response else None,
                           _request_path(document, request))
    return {"id": document.get("id"),
            "request": _message_view(request, req_body, "request"),
            "response": _message_view(response, resp_body, "response"),
            "llm": fields}


def part_path(log_dir: LogDir, document: dict[str, Any], kind: str) -> str | None:
    part = (document.get("parts") or {}).get(kind)
    if not isinstance(part, dict):
        return None
    path = log_dir.file_path(str(part.get("file", "")))
    return path if path and os.path.exists(path) else None
