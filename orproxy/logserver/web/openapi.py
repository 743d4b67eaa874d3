"""The OpenAPI 3.1 document of the REST API, served at `/api/openapi.json`.

Built from the same declarations the code runs on (the route table, routes.py, for its
paths and operations; schema.FIELDS for list items; query.FILTERS for filter parameters),
so the document cannot drift from the API. This module holds the schemas and the pieces
the route table's operations are written with. The tests validate the document and check
every endpoint's responses against it.

The streaming endpoints are in it too: the live feed (`/api/live`, a WebSocket, and
`/api/events`, SSE) and the live tail (`/api/requests/{id}/tail`, SSE). OpenAPI 3.1 has
no words for a stream's items, so each says it with an extension: `x-events` on an
event stream maps each SSE event name to the schema of its data, `x-messages` on the
WebSocket's 101 gives the schema of every message.
"""
from __future__ import annotations

from typing import Any

from orproxy import __version__
from orproxy.logserver.llm import derive
from orproxy.logserver.store.record import STATES
from orproxy.logserver.store.schema import API_FIELDS
from orproxy.logserver.web.query import DEFAULT_LIMIT, FILTERS, LIVE_PARAMS, MAX_LIMIT
from orproxy.logserver.web.stats import PERCENTILES


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(kind: str, doc: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"type": [kind, "null"]}
    if doc:
        out["description"] = doc
    return out


def _object(properties: dict[str, Any], required: list[str] | None = None, doc: str = "",
            additional: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": properties,
                           "required": list(properties) if required is None else required,
                           "additionalProperties": additional}
    if doc:
        out["description"] = doc
    return out


def json_content(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERRORS = {
    "400": json_content(ref("Error"), "A bad parameter; `error.parameter` names it."),
    "404": json_content(ref("Error"), "No such exchange."),
    "405": json_content(ref("Error"), "Method not allowed on this path."),
}

ID = {"name": "id", "in": "path", "required": True, "description": "The exchange's UUID (X-Request-Id).",
       "schema": {"type": "string", "format": "uuid"}}


def filter_params() -> list[dict[str, Any]]:
    return [{"name": p.name, "in": "query", "required": False, "description": p.doc,
             "schema": {"type": "string"}, "example": p.example} for p in FILTERS]


def live_params() -> list[dict[str, Any]]:
    """The live feed's parameters: the list's filters, but `since` is a seq there."""
    since = {"name": "since", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0},
             "description": "The last `seq` seen (a list page's `max_seq`): what changed after it comes "
                            "first. Here not the time filter of the same name."}
    return [p for p in filter_params() if p["name"] not in LIVE_PARAMS] + [since]


def _live_schemas() -> dict[str, Any]:
    ids = {"type": "array", "items": {"type": "string"}}
    delta = _object({"text": {"type": "string"}, "reasoning": {"type": "string"},
                     "tool": _object({"index": {"type": "integer"}, "id": {"type": "string"},
                                      "name": {"type": "string"}, "arguments": {"type": "string"}},
                                     doc="A piece of a tool call: append name and arguments by index."),
                     "error": {"type": "string"}, "finish": {"type": "string"}}, required=[])
    return {
        "LiveMessage": {"oneOf": [ref("LiveHello"), ref("LiveRows"), ref("LiveReset"), ref("LivePing")],
                        "description": "One message of the live feed (JSON)."},
        "LiveHello": _object({"type": {"const": "hello"},
                              "seq": {"type": "integer", "description": "The feed starts after this seq."},
                              "time": {"type": "number", "description": "The server's clock (epoch s)."},
                              "worker": {"type": "integer", "description": "PID of the worker serving it."}},
                             doc="The first message."),
        "LiveRows": _object({
            "type": {"const": "rows"},
            "seq": {"type": "integer", "description": "The last seq covered: resume with it as `since`."},
            "items": {"type": "array", "items": ref("RequestItem"),
                      "description": "Rows that changed and match the filter: insert or update them."},
            "removed": {**ids, "description": "Ids to drop from the list: changed rows that no longer "
                                              "match the filter, and deleted exchanges."},
            "deleted": {**ids, "description": "The removed ids whose exchange was deleted (DELETE, "
                                              "retention, a reindex that found its files gone)."}},
            doc="What changed, oldest change first."),
        "LiveReset": _object({"type": {"const": "reset"}, "reason": {"type": "string"}},
                             doc="Reload the list (you fell behind); the stream ends after it."),
        "LivePing": _object({"type": {"const": "ping"}},
                            doc="After 15 s of silence (WebSocket; SSE sends a comment instead)."),
        "TailHead": _object({"start_line": {"type": "string"}, "status": _nullable("integer"),
                             "headers": {"type": "array", "items": {"type": "array", "items": {"type": "string"},
                                                                    "minItems": 2, "maxItems": 2}}}),
        "TailBody": _object({"text": {"type": "string"}}, doc="The next piece of the body, decoded, as text."),
        "TailDeltas": {"type": "array", "items": delta,
                       "description": "What each streamed LLM event completed here adds to the answer."},
        "TailNotice": _object({"message": {"type": "string"}}),
        "TailEnd": _object({"reason": {"enum": ["complete", "incomplete", "no response", "deleted", "timeout",
                                                "server stopping"]},
                            "bytes": _nullable("integer", "The response part's size, once it has ended.")},
                           required=["reason"], doc="The last event: close the EventSource."),
    }


def _har_schemas() -> dict[str, Any]:
    """The HAR export's document, as far as orproxy adds to HAR 1.2 (its own fields start
    with an underscore, the spec's rule); the rest is the spec's
    (http://www.softwareishard.com/blog/har-12-spec/)."""
    sse_event = _object({"event": {"type": "string", "description": "The event's type (`message` when "
                                   "the stream named none, as EventSource)."},
                         "data": {"type": "string"}, "id": {"type": "string"},
                         "complete": {"const": False, "description": "A last event the stream never ended."}},
                        required=["event", "data"])
    ws_message = _object({"type": {"enum": ["send", "receive"], "description": "send: from the client."},
                          "time": {"type": "number", "description": "When the proxy had the message (epoch s)."},
                          "opcode": {"enum": [1, 2, 8, 9, 10], "description": "RFC 6455: text, binary, close, "
                                     "ping, pong."},
                          "data": {"type": "string", "description": "Text; base64 for binary; a close's "
                                   "`<code> <reason>`."}})
    content = {"type": "object", "required": ["size", "mimeType"], "description":
               "HAR's content; `text` decoded from the Content-Encoding (base64 with `encoding` when not "
               "UTF-8 text or it holds control characters), at most the first 8 MiB decoded.",
               "properties": {"size": {"type": "integer"}, "mimeType": {"type": "string"},
                              "text": {"type": "string"}, "encoding": {"const": "base64"},
                              "_sseEvents": {"type": "array", "items": sse_event,
                                             "description": "A text/event-stream body's events, in order."},
                              "_truncated": {"const": True, "description": "The body was cut at 8 MiB decoded."}}}
    entry = {"type": "object", "required": ["startedDateTime", "time", "request", "response", "cache", "timings",
                                            "_requestId", "_state", "_exchange"],
             "description": "One exchange (HAR 1.2 entry). `timings.wait` runs to the first response byte, "
                            "`receive` from there to the end; `comment` says what is missing.",
             "properties": {
                 "startedDateTime": {"type": "string"}, "time": {"type": "number"},
                 "request": {"type": "object", "description": "`url` is the URL the client called; headers as "
                             "logged (secrets masked)."},
                 "response": {"type": "object", "properties": {"content": content}},
                 "cache": {"type": "object"}, "timings": {"type": "object"}, "comment": {"type": "string"},
                 "_requestId": {"type": "string", "description": "The X-Request-Id."},
                 "_state": {"enum": list(STATES), "description": "As the list's `state`: an exchange in "
                            "flight is exported with what has arrived."},
                 "_incompleteReason": _nullable("string"),
                 "_exchange": ref("RequestItem"),
                 "_resourceType": {"const": "websocket"},
                 "_webSocketMessages": {"type": "array", "items": ws_message,
                                        "description": "A WebSocket session's messages (Chrome's form)."}}}
    return {
        "Har": _object({"log": {
            "type": "object", "required": ["version", "creator", "entries"], "properties": {
                "version": {"const": "1.2"},
                "creator": _object({"name": {"const": "orproxy"}, "version": {"type": "string"}}),
                "pages": {"type": "array", "maxItems": 0},
                "entries": {"type": "array", "items": ref("HarEntry"), "description": "Newest first, as the list."},
                "comment": {"type": "string"}}}}, doc="A HAR 1.2 document."),
        "HarEntry": entry,
    }


def event_stream(description: str, events: dict[str, str]) -> dict[str, Any]:
    return {"description": description, "content": {"text/event-stream": {
        "schema": {"type": "string"}, "x-events": {name: ref(schema) for name, schema in events.items()}}}}


def _diff_schema() -> dict[str, Any]:
    pieces = {"type": "array", "description": "[op, text] pieces: \"=\" kept, \"-\" removed, \"+\" added.",
              "items": {"type": "array", "prefixItems": [{"enum": ["=", "-", "+"]}, {"type": "string"}],
                        "minItems": 2, "maxItems": 2}}
    index = {"type": ["integer", "null"]}
    message = {"type": "object", "required": ["op", "from", "to"], "additionalProperties": False,
               "description": "A run of `count` same messages, or one added, removed or changed "
                              "(`from`/`to`: its index in the earlier/this request).",
               "properties": {"op": {"enum": ["same", "added", "removed", "changed"]}, "from": index, "to": index,
                              "count": {"type": "integer"}, "role": {"type": "string"}, "text": {"type": "string"},
                              "truncated": {"type": "boolean"}, "answer": {"type": "boolean"}, "diff": pieces}}
    change = {"type": "object", "required": ["op"], "additionalProperties": False,
              "properties": {"op": {"enum": ["same", "added", "removed", "changed"]}, "text": {"type": ["string", "null"]},
                             "diff": pieces}}
    named = {"type": "object", "required": ["name", "op"], "additionalProperties": False,
             "properties": {"name": {"type": "string"}, "op": {"enum": ["added", "removed", "changed"]},
                            "declaration": {}, "diff": pieces, "from": {}, "to": {}}}
    return _object({
        "id": {"type": "string"}, "against": {"type": "string", "description": "The exchange compared with."},
        "against_is": {"enum": ["previous", "given"]},
        "model": {"type": ["object", "null"], "properties": {"from": {"type": ["string", "null"]},
                                                             "to": {"type": ["string", "null"]}}},
        "system": change, "tools": {"type": "array", "items": named},
        "params": {"type": "array", "items": named}, "messages": {"type": "array", "items": message},
        "counts": _object({op: {"type": "integer"} for op in ("same", "added", "removed", "changed")})})


def _schemas() -> dict[str, Any]:
    snippet = {"type": "array", "description": "With `q`, when the whole texts matched: the words around "
               "the match, in segments (`match` true for the matching words).",
               "items": _object({"text": {"type": "string"}, "match": {"type": "boolean"}})}
    item = _object({**{f.name: f.schema() for f in API_FIELDS}, "snippet": snippet},
                   required=[f.name for f in API_FIELDS],
                   doc="One exchange as a list row. Times are epoch seconds (UTC); durations ms.")
    totals = {
        "count": {"type": "integer"}, "errors": {"type": "integer",
                                                 "description": "Status >= 400 or a proxy error code."},
        "in_flight": {"type": "integer"},
        **{k: {"type": "integer"} for k in ("prompt_tokens", "completion_tokens", "total_tokens",
                                            "cached_tokens", "reasoning_tokens", "request_bytes",
                                            "response_bytes")},
        "cost": _nullable("number", "Sum of the costs, reported or estimated (null when none is known)."),
        "estimated_cost": _nullable("number", "The part of `cost` estimated from the price table."),
    }
    group = _object({"name": _nullable("string", "The model or route (null: unknown)."), **totals})
    spread = _object({"count": {"type": "integer"},
                      **{f"p{p}": _nullable("number") for p in PERCENTILES}, "max": _nullable("number")},
                     doc="Nearest-rank percentiles in milliseconds.")
    llm = _object({name: {} for name in derive.FIELDS},
                  doc="The LLM fields derived from the bodies (see the list item for their meaning).")
    event = _object({"event": _nullable("string"), "data": {"type": "string"}, "json": {},
                     "id": {"type": "string"}, "complete": {"type": "boolean"}},
                    required=["event", "data", "json"], doc="One server-sent event (or NDJSON line); "
                    "`json` is its data parsed, or null.")
    body = _object({
        "kind": {"enum": ["empty", "json", "sse", "ndjson", "text", "binary"]},
        "size": {"type": "integer", "description": "Body bytes as logged (still encoded)."},
        "encoding": _nullable("string", "Content-Encoding (gzip, br, deflate), decoded here."),
        "decoded_size": {"type": "integer"},
        "truncated": {"type": "boolean", "description": "Only the first 8 MiB (decoded) are shown."},
        "decode_error": {"type": "string"},
        "json": {"description": "The parsed JSON body."},
        "text": {"type": "string", "description": "The decoded body; JSON re-indented."},
        "events": {"type": "array", "items": ref("Event")},
        "events_truncated": {"type": "boolean"},
        "comments": {"type": "integer", "description": "SSE comment lines (keep-alives)."},
        "assembled": {"type": ["object", "null"], "description": "A streamed LLM answer put together "
                      "as the non-streamed answer of the same API (chat.completion or message)."},
    }, required=["kind", "size"])
    message = _object({
        "start_line": _nullable("string"),
        "headers": {"type": "array", "items": {"type": "array", "items": {"type": "string"},
                                               "minItems": 2, "maxItems": 2},
                    "description": "[name, value] pairs in logged order (secrets masked)."},
        "body": ref("Body"),
        "method": {"type": "string"}, "target": {"type": "string"},
        "version": _nullable("string"), "status": _nullable("integer"), "reason": {"type": "string"},
    }, required=["start_line", "headers", "body"])
    file_ref = _object({"name": _nullable("string"), "bytes": _nullable("integer"),
                        "complete": _nullable("boolean"), "url": {"type": "string"}})
    return {
        "Error": _object({"error": _object({"message": {"type": "string"}, "parameter": {"type": "string"}},
                                           required=["message"])}),
        "RequestItem": item,
        "RequestList": _object({
            "items": {"type": "array", "items": ref("RequestItem")},
            "next_cursor": _nullable("string", "Pass as `cursor` for the next (older) page."),
            "has_more": {"type": "boolean"},
            "max_seq": {"type": "integer", "description": "Pass as `updated_after` to poll for changes."},
        }),
        "RequestDetail": _object({
            **{f.name: f.schema() for f in API_FIELDS},
            "metadata": {"type": "object", "description":
                         "The exchange's _metadata.json: id, timestamp, rev, parts, proxy, derived."},
            "files": {"type": "object", "additionalProperties": file_ref,
                      "description": "The request and response files, by kind."}},
            doc="The list row of the exchange, plus its metadata document and files."),
        "Exchange": _object({"id": {"type": "string"},
                             "request": {"oneOf": [ref("Message"), {"type": "null"}]},
                             "response": {"oneOf": [ref("Message"), {"type": "null"}]},
                             "llm": llm}),
        "Message": message,
        "Body": body,
        "Event": event,
        "Stats": _object({**totals, "first_started_at": _nullable("number"),
                          "last_started_at": _nullable("number"),
                          "by_model": {"type": "array", "items": group},
                          "by_route": {"type": "array", "items": group},
                          "latency_ms": spread, "ttft_ms": spread}),
        "Health": _object({"status": {"const": "ok"}, "version": {"type": "string"},
                           "time": {"type": "number"}, "log_dir": {"type": "string"},
                           "exchanges": {"type": "integer"}, "index_errors": {"type": "integer"}},
                          additional=True),
        "Diff": _diff_schema(),
        "Deleted": _object({"id": {"type": "string"}, "deleted": {"const": True},
                            "freed_bytes": {"type": "integer"}}),
        **_live_schemas(),
        **_har_schemas(),
    }


def list_params() -> list[dict[str, Any]]:
    """`GET /api/requests`'s parameters: the filters, and the page's."""
    limit = {"name": "limit", "in": "query", "description": f"Rows per page (1-{MAX_LIMIT}).",
             "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}}
    cursor = {"name": "cursor", "in": "query", "description": "`next_cursor` of the previous page.",
              "schema": {"type": "string"}}
    updated_after = {"name": "updated_after", "in": "query", "description":
                     "Instead of the newest rows: rows changed after this `seq` (a previous "
                     "`max_seq`), oldest change first. Not with cursor.",
                     "schema": {"type": "integer", "minimum": 0}}
    return [*filter_params(), limit, cursor, updated_after]


def document(paths: dict[str, Any]) -> dict[str, Any]:
    """The whole document, around the `paths` of the route table (routes.openapi_paths)."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "orlogserver API", "version": __version__, "description":
                 "The logging server of orproxy: exchanges proxied to LLM APIs, indexed. Times "
                 "are epoch seconds (UTC); durations are milliseconds. Unknown query parameters "
                 "are refused (400)."},
        "paths": paths,
        "components": {"schemas": _schemas()},
    }
