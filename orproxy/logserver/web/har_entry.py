"""One exchange as a HAR 1.2 entry (http://www.softwareishard.com/blog/har-12-spec/).

Built from what the log holds: the exchange's metadata document (timings, state), its two
`.bin` parts read back within BODY_LIMIT decoded bytes each, and its index row. Field
choices follow what HAR readers expect (Chrome's and mitmproxy's exports):

- `request.url` is the URL the client called (the logged `X-Proxy-Path`, which is left
  out of the headers: it was never sent); headers are as logged, secrets masked.
- `response.content.text` is the body decoded from its Content-Encoding; base64, with
  `content.encoding: "base64"`, when it is not UTF-8 text or holds control characters.
- `timings`: `wait` from the request to the first response byte (the API's `ttft_ms`;
  a WebSocket's 101), `receive` from there to the end; the proxy does not time DNS,
  connect, TLS or the upload on their own, so `blocked`, `dns`, `connect`, `ssl` are -1
  and `send` is 0 (in `wait`). Unknown parts (an exchange in flight) are 0, as the spec
  wants them non-negative, and `timings.comment` names them.

orproxy's own fields start with an underscore (the spec's rule for custom fields):
`_requestId`, `_state`, `_incompleteReason`, `_exchange` (the exchange's row as
`GET /api/requests` lists it: route, model, tokens, cost, ...); on `response.content`,
`_sseEvents` ([{event, data, id?, complete?}], a streamed answer's events) and
`_truncated` (the body was cut at BODY_LIMIT); for a WebSocket session, Chrome's
`_resourceType: "websocket"` and `_webSocketMessages`.
"""
from __future__ import annotations

import base64
import re
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from orproxy.logserver.llm.httpfile import Body, Message
from orproxy.logserver.llm.sse import parse_sse
from orproxy.logserver.llm.wsmessages import read_messages
from orproxy.logserver.store.record import ExchangeRecord

BODY_LIMIT = 8 * 1024 * 1024  # decoded bytes of each body put in an entry (as the exchange view)
MAX_SSE_EVENTS = 20_000
CALLED_URL = "x-proxy-path"
CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]")  # C0 but tab, LF, CR: JSON's \u00XX escapes
WS_OPCODES = {"text": 1, "binary": 2, "close": 8, "ping": 9, "pong": 10}  # RFC 6455 5.2, as Chrome


def iso_time(epoch: float) -> str:
    """ISO 8601 in UTC with milliseconds: `2026-11-27T17:45:32.123Z`."""
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _pairs(pairs: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"name": name, "value": value} for name, value in pairs]


def _text(body: Body) -> tuple[str, str | None]:
    """The decoded body as HAR text: UTF-8, else base64 (and its encoding's name). A last
    character cut in two by the limit is dropped, not a reason for base64. Control
    characters (NUL, ...) make it base64 too: not text, and JSON writes each in 6 bytes,
    so 8 MiB of zeros would be a 48 MiB entry (base64 keeps any body within 4/3)."""
    data = body.data
    if not CONTROL.search(data):
        try:
            return data.decode("utf-8"), None
        except UnicodeDecodeError as e:
            if body.truncated and e.start >= len(data) - 3:
                try:
                    return data[:e.start].decode("utf-8"), None
                except UnicodeDecodeError:
                    pass
    return base64.b64encode(data).decode("ascii"), "base64"


def _cut_note(body: Body) -> str:
    return (f"only the first {len(body.data)} bytes of the body (decoded) are here; "
            f"{body.raw_size} bytes were logged")


class _Notes(list):
    """The entry's comment, sentence by sentence."""

    def text(self) -> str | None:
        return "; ".join(self) or None


def _request(message: Message | None, record: ExchangeRecord, row: dict[str, Any],
             notes: _Notes) -> dict[str, Any]:
    head = message.head if message else None
    line = _start_line(head.start_line if head else "", request=True)
    url = (head.header(CALLED_URL) if head else None) or _fallback_url(head, row)
    headers = [(n, v) for n, v in head.headers if n.lower() != CALLED_URL] if head else []
    out: dict[str, Any] = {
        "method": line[0] if line else row.get("method") or record.head("request").get("method") or "",
        "url": url,
        "httpVersion": line[2] if len(line) == 3 else "",
        "cookies": [],
        "headers": _pairs(headers),
        "queryString": _pairs(parse_qsl(urlsplit(url).query, keep_blank_values=True)),
        "headersSize": _head_size(line, headers) if head else -1,
        "bodySize": message.body.raw_size if message else -1,
    }
    if message is None:
        notes.append("the request was not logged")
    elif message.body.raw_size:
        text, encoding = _text(message.body)
        post = {"mimeType": head.header("content-type") or "" if head else "", "text": text}
        if encoding:
            post["_encoding"] = encoding  # HAR 1.2's postData has no `encoding`: ours
        if message.body.truncated:
            post["_truncated"] = True
            notes.append("request: " + _cut_note(message.body))
        out["postData"] = post
    return out


def _start_line(text: str, request: bool) -> list[str]:
    """`METHOD target HTTP/x` or `HTTP/x status reason` in three parts, else [] (the
    original Go program's plain PUTs log the headers alone)."""
    parts = text.split(" ", 2)
    if len(parts) == 2 and not request:
        parts.append("")
    if len(parts) != 3 or not parts[2 if request else 0].startswith("HTTP/"):
        return []
    return parts


def _fallback_url(head: Any, row: dict[str, Any]) -> str:
    """An absolute URL for a request logged without X-Proxy-Path (another proxy's log)."""
    host = (head.header("host") if head else None) or "unknown"
    return f"http://{host}{row.get('path') or '/'}"


def _head_size(line: list[str], headers: list[tuple[str, str]]) -> int:
    """Bytes of the head as logged, without the X-Proxy-Path line (never on the wire)."""
    return len(" ".join(line)) + 2 + sum(len(n) + len(v) + 4 for n, v in headers) + 2


def _response(message: Message | None, row: dict[str, Any], websocket: bool, notes: _Notes,
              entry: dict[str, Any]) -> dict[str, Any]:
    if message is None or message.head is None:
        if row.get("state") == "in_flight":
            notes.append("no response yet")
        return {"status": row.get("status") or 0, "statusText": "", "httpVersion": "", "cookies": [],
                "headers": [], "content": {"size": 0, "mimeType": ""}, "redirectURL": "",
                "headersSize": -1, "bodySize": -1}
    head, body = message.head, message.body
    line = _start_line(head.start_line, request=False)
    status = int(line[1]) if line and line[1].isdigit() else row.get("status") or 0
    content: dict[str, Any] = {"size": 0, "mimeType": head.header("content-type") or ""}
    out = {"status": status, "statusText": line[2] if line else "", "httpVersion": line[0] if line else "",
           "cookies": [], "headers": _pairs(head.headers), "content": content,
           "redirectURL": head.header("location") or "", "headersSize": head.size,
           "bodySize": 0 if websocket else body.raw_size}
    if websocket:
        entry["_resourceType"] = "websocket"
        entry["_webSocketMessages"] = _ws_messages(body, notes)
        return out
    if body.raw_size:
        _content(content, body, notes)
    return out


def _content(content: dict[str, Any], body: Body, notes: _Notes) -> None:
    text, encoding = _text(body)
    content["text"] = text
    if encoding:
        content["encoding"] = encoding
    if body.decode_error:
        notes.append(f"response: {body.decode_error}; the body is as logged")
    whole = not body.truncated and not body.decode_error
    content["size"] = len(body.data) if whole or not body.encoding else body.raw_size
    if whole and body.encoding:
        content["compression"] = len(body.data) - body.raw_size
    if body.truncated:
        content["_truncated"] = True
        notes.append("response: " + _cut_note(body))
    if encoding is None and "text/event-stream" in content["mimeType"].lower():
        stream = parse_sse(text, MAX_SSE_EVENTS)
        content["_sseEvents"] = [_sse_event(e) for e in stream.events]
        if stream.truncated:
            notes.append(f"only the first {MAX_SSE_EVENTS} events are in _sseEvents")


def _sse_event(event: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"event": event.event or "message", "data": event.data}  # EventSource's default type
    if event.id is not None:
        out["id"] = event.id
    if not event.complete:
        out["complete"] = False
    return out


def _ws_messages(body: Body, notes: _Notes) -> list[dict[str, Any]]:
    """The session's messages as Chrome exports them: type send|receive, time (epoch
    seconds), opcode (RFC 6455's number), data (text, or base64 for binary)."""
    log = read_messages(body.data)
    out = []
    for m in log.messages:
        if m.opcode == "error":  # the proxy stopped decoding a direction: not a frame
            notes.append(f"{m.direction}: {m.payload.decode('utf-8', 'replace')}")
            continue
        data = base64.b64encode(m.payload).decode("ascii") if m.opcode == "binary" \
            else m.payload.decode("utf-8", "replace")
        out.append({"type": "send" if m.direction == "client" else "receive", "time": m.time,
                    "opcode": WS_OPCODES[m.opcode], "data": data})
    if log.error:
        notes.append(f"the message log stops at a malformed record: {log.error}")
    elif log.truncated or body.truncated:
        notes.append(f"only the messages in the first {len(body.data)} bytes of the message log are here")
    return out


def _timings(record: ExchangeRecord, started: float, websocket: bool) -> dict[str, Any]:
    proxy = record.proxy
    response = record.part("response")
    head_at = proxy.get("upstream_headers_at")
    first = head_at if websocket else proxy.get("first_byte_at") or head_at
    first = first or response.get("received_at")  # no proxy metadata: the logging server's clock
    end = proxy.get("ended_at") or (response.get("completed_at") if record.state != "in_flight" else None)
    unknown = []
    if first is None:
        unknown.append("wait")
    if end is None:
        unknown.append("receive")
    wait = (first if first is not None else end if end is not None else started) - started
    receive = end - first if first is not None and end is not None else 0.0
    timings: dict[str, Any] = {"blocked": -1, "dns": -1, "connect": -1, "ssl": -1, "send": 0,
                               "wait": round(max(wait, 0.0) * 1000, 3),
                               "receive": round(max(receive, 0.0) * 1000, 3)}
    if unknown:
        timings["comment"] = f"unknown, given as 0: {', '.join(unknown)} (the exchange had not ended)"
    return timings


def har_entry(document: dict[str, Any], row: dict[str, Any], request: Message | None,
              response: Message | None) -> dict[str, Any]:
    """The HAR entry of one exchange: its metadata document, its row (as the API lists it)
    and its parts read back (None where there is none)."""
    record = ExchangeRecord(document)
    started = row.get("started_at") or record.received_at or 0.0
    websocket = isinstance(record.proxy.get("websocket"), dict) or (row.get("status") == 101)
    notes = _Notes()
    entry: dict[str, Any] = {"startedDateTime": iso_time(started), "time": 0}
    entry["request"] = _request(request, record, row, notes)
    entry["response"] = _response(response, row, websocket, notes, entry)
    entry["cache"] = {}
    entry["timings"] = timings = _timings(record, started, websocket)
    entry["time"] = round(sum(v for k, v in timings.items() if k != "comment" and v > 0), 3)
    state = row.get("state") or record.state
    entry["_requestId"] = record.id
    entry["_state"] = state
    if state == "in_flight":
        notes.insert(0, "in flight when exported: what had arrived so far")
    elif state == "incomplete":
        entry["_incompleteReason"] = row.get("incomplete_reason") or record.incomplete_reason
        notes.insert(0, f"incomplete: {entry['_incompleteReason']}")
    entry["_exchange"] = row
    if notes:
        entry["comment"] = notes.text()
    return entry
