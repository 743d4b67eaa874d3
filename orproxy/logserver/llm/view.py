"""The API's parsed view of an exchange (`GET /api/requests/{id}/exchange`): both messages
with their headers as lists, bodies decoded and classified, streamed answers assembled.

Bounded: the API reads each part back up to VIEW_LIMIT decoded bytes and MAX_VIEW_EVENTS
events, so a huge download costs a bounded amount of memory and time (and it parses on a
thread, off the gevent loop).
"""
from __future__ import annotations

import json
from typing import Any

from orproxy.logserver.llm import derive
from orproxy.logserver.llm.bodies import ParsedBody, parse_body
from orproxy.logserver.llm.httpfile import Message

VIEW_LIMIT = 8 * 1024 * 1024      # decoded bytes per body shown by the API
PRETTY_LIMIT = 8 * 1024 * 1024    # JSON bodies up to this size are re-indented
MAX_VIEW_EVENTS = 20_000


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


def exchange_view(exchange_id: str, request: Message | None, response: Message | None,
                  path: str | None) -> dict[str, Any]:
    """Both messages parsed (read back up to VIEW_LIMIT): headers as lists, bodies decoded,
    JSON re-indented, SSE events listed and the streamed answer assembled; plus the
    derived fields. `path` is the path the client called."""
    req_body = parse_body(request, MAX_VIEW_EVENTS)
    resp_body = parse_body(response, MAX_VIEW_EVENTS)
    fields = derive.derive(req_body if request else None, resp_body if response else None, path)
    return {"id": exchange_id,
            "request": _message_view(request, req_body, "request"),
            "response": _message_view(response, resp_body, "response"),
            "llm": fields}
