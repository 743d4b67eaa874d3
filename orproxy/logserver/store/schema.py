"""The fields of an indexed exchange, declared once: the SQLite columns, the items of
`GET /api/requests` and their OpenAPI schema all come from `FIELDS` (as gunicorn declares
each setting once). `row_from_document()` turns an exchange's metadata document (record.py)
into one row.

Times are epoch seconds (UTC, as `time.time()`), durations milliseconds.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

from orproxy.logserver.llm import apis, derive
from orproxy.logserver.llm.pricing import PRICE_TABLE, REPORTED, Pricing
from orproxy.logserver.store.record import STATES, ExchangeRecord

DEFAULT_PRICING = Pricing()  # the price table alone (the app's has the prices of config.yaml)


@dataclass(frozen=True)
class Field:
    name: str
    kind: str          # "str", "int", "float", "bool", "list" (a list of strings)
    doc: str
    api: bool = True   # part of the API item (False: internal bookkeeping)
    enum: tuple[str, ...] = ()

    @property
    def sql(self) -> str:
        return {"str": "TEXT", "int": "INTEGER", "float": "REAL", "bool": "INTEGER", "list": "TEXT"}[self.kind]

    def schema(self) -> dict[str, Any]:
        if self.kind == "list":
            return {"type": ["array", "null"], "items": {"type": "string"}, "description": self.doc}
        json_type = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}[self.kind]
        schema: dict[str, Any] = {"type": [json_type, "null"], "description": self.doc}
        if self.enum:
            schema["enum"] = [*self.enum, None]
        return schema


FIELDS: tuple[Field, ...] = (
    Field("id", "str", "The exchange's UUID (the X-Request-Id the client saw)."),
    Field("started_at", "float", "When the proxy received the request (epoch seconds, UTC); "
          "without proxy metadata, when the logging server received the first part."),
    Field("ended_at", "float", "When the proxy finished the exchange (epoch seconds, UTC)."),
    Field("duration_ms", "float", "ended_at - started_at, in milliseconds."),
    Field("ttft_ms", "float", "Time to first token: from the request to the first byte of the "
          "response body (for a streamed LLM answer, its first event), in milliseconds."),
    Field("state", "str", "in_flight: the proxy has not reported the end yet; complete: it has (or, "
          "from a proxy that reports none, both parts arrived whole and nothing came for --stale-after); "
          "incomplete: a part broke off, or nothing more arrived for --stale-after, and the proxy never "
          "reported the end (`incomplete_reason` says why).", enum=STATES),
    Field("incomplete_reason", "str", "Why an incomplete exchange is: the error of the part that broke "
          "off, or that nothing more arrived."),
    Field("method", "str", "HTTP method."),
    Field("path", "str", "The path and query the client called."),
    Field("route", "str", "The name of the route that matched."),
    Field("upstream_url", "str", "The URL the request went to."),
    Field("replay_of", "str", "The exchange this one replays (POST /api/requests/{id}/replay), "
          "from its request's X-Orproxy-Replay-Of header."),
    Field("client_addr", "str", "The client's address."),
    Field("status", "int", "HTTP status the client got."),
    Field("error", "str", "The proxy's error code (no_route, upstream_unreachable, upstream_timeout, "
          "upstream_broken, client_disconnected, bad_request), if any."),
    Field("error_message", "str", "The error message of the response body, if it has one."),
    Field("streamed", "bool", "The response was streamed (SSE, NDJSON or chunked)."),
    Field("request_bytes", "int", "Request body bytes the proxy forwarded."),
    Field("response_bytes", "int", "Response body bytes the client received."),
    Field("log_dropped_bytes", "int", "Bytes proxied but not logged (slow logging server)."),
    Field("stored_bytes", "int", "Bytes of this exchange's files in the log directory."),
    Field("content_type", "str", "The response's Content-Type."),
    Field("api", "str", "Which API the exchange speaks: "
          + ", ".join(f"{api.NAME} ({api.TITLE})" for api in apis.APIS) + "."),
    Field("provider", "str", "The provider that served the request, when the upstream says "
          "(OpenRouter's `provider`)."),
    Field("model", "str", "The model that answered, else the model requested."),
    Field("model_requested", "str", "`model` of the request body."),
    Field("model_answered", "str", "`model` of the response."),
    Field("stream", "bool", "`stream` of the request body."),
    Field("message_count", "int", "Messages in the request (`messages`, or `input`)."),
    Field("tools_offered", "int", "Tools declared in the request (`tools`)."),
    Field("tool_calls", "list", "Names of the tools the model called, in order."),
    Field("finish_reason", "str", "finish_reason (OpenAI) or stop_reason (Anthropic)."),
    Field("prompt_tokens", "int", "Input tokens, cached ones included."),
    Field("completion_tokens", "int", "Output tokens (reasoning included)."),
    Field("total_tokens", "int", "Total tokens."),
    Field("cached_tokens", "int", "Input tokens read from a prompt cache."),
    Field("cache_write_tokens", "int", "Input tokens written to a prompt cache (Anthropic)."),
    Field("reasoning_tokens", "int", "Reasoning tokens, when reported."),
    Field("cost", "float", "Cost in USD: the upstream's own figure when it reports one (OpenRouter "
          "usage.cost, plus upstream_inference_cost for bring-your-own-key), else computed from "
          "the price table (genai-prices) or config.yaml's prices for the model that answered."),
    Field("cost_source", "str", "Where `cost` comes from: reported by the upstream, or an estimate "
          "from the price table; null when neither knows.", enum=(REPORTED, PRICE_TABLE)),
    Field("session_id", "str", "The client's session, from a session header it sent (X-Session-Id, "
          "X-Claude-Code-Session-Id, Codex's session_id...; README, \"Conversations and sessions\")."),
    Field("conversation_id", "str", "The conversation the exchange is a turn of: the id of its first "
          "turn (its own id for a first turn)."),
    Field("previous_id", "str", "The turn this one continues: the exchange whose request messages "
          "(plus its answer) this request's messages extend, or whose response its Responses API "
          "`previous_response_id` names."),
    Field("response_id", "str", "The answer's own id (Responses API `resp_...`)."),
    Field("turn_key", "str", "A hash of the request's messages: the next turn is found by it.", api=False),
    Field("answer_key", "str", "A hash of the answer's first message: the next turn sends it back.", api=False),
    Field("tokens_per_s", "float", "completion_tokens per second of generation (from the first "
          "byte for a streamed answer, from the request otherwise)."),
    Field("prompt_preview", "str", "The start of the last user message."),
    Field("reply_preview", "str", "The start of the answer's text."),
    Field("seq", "int", "Grows on every change of the row: poll `updated_after` with the largest "
          "seq seen to get what changed."),
    Field("rev", "int", "Revision of the exchange's metadata file this row was built from (the "
          "detail's metadata.rev may be newer for a moment, until the index has caught up)."),
    Field("prefix", "str", "`<timestamp>_<uuid8>`: the start of the exchange's file names.", api=False),
)

BY_NAME = {f.name: f for f in FIELDS}
API_FIELDS = tuple(f for f in FIELDS if f.api)
COLUMNS = tuple(f.name for f in FIELDS)


def to_api(row: dict[str, Any]) -> dict[str, Any]:
    """A row as the API shows it: booleans as booleans, lists as lists."""
    item = {}
    for f in API_FIELDS:
        value = row.get(f.name)
        if value is not None:
            if f.kind == "bool":
                value = bool(value)
            elif f.kind == "list":
                value = json.loads(value)
        item[f.name] = value
    return item


def _ms(start: Any, end: Any) -> float | None:
    if isinstance(start, (int, float)) and isinstance(end, (int, float)) and end >= start:
        return round((end - start) * 1000, 3)
    return None


def row_from_document(document: dict[str, Any], *, pricing: Pricing,
                      stored_bytes: int | None = None) -> dict[str, Any]:
    """One index row from a metadata document: proxy metadata first, then what the logging
    server saw itself (part heads), then the derived LLM fields and the cost."""
    record = ExchangeRecord(document)
    proxy, derived = record.proxy, record.derived
    req_head, resp_head = record.head("request"), record.head("response")
    started_at = proxy.get("started_at") or record.received_at or file_time(document.get("timestamp"))
    row: dict[str, Any] = {
        "id": document.get("id"),
        "rev": int(document.get("rev") or 0),
        "prefix": record.prefix,
        "started_at": started_at,
        "ended_at": proxy.get("ended_at"),
        "duration_ms": _ms(started_at, proxy.get("ended_at")),
        "ttft_ms": _ms(started_at, proxy.get("first_byte_at")),
        "state": record.state,
        "incomplete_reason": record.incomplete_reason,
        "method": proxy.get("method") or req_head.get("method"),
        "path": record.request_path(),
        "route": proxy.get("route"),
        "upstream_url": proxy.get("upstream_url"),
        "replay_of": req_head.get("replay_of"),
        "client_addr": proxy.get("client_addr"),
        "status": proxy.get("status") or resp_head.get("status"),
        "error": proxy.get("error"),
        "streamed": proxy.get("streamed"),
        "request_bytes": proxy.get("request_bytes"),
        "response_bytes": proxy.get("response_bytes"),
        "log_dropped_bytes": proxy.get("log_dropped_bytes"),
        "stored_bytes": record.stored_bytes if stored_bytes is None else stored_bytes,
        "content_type": resp_head.get("content_type"),
    }
    for name in derive.FIELDS:
        row[name] = derived.get(name)
    row["model"] = row["model_answered"] or row["model_requested"]
    row["tokens_per_s"] = _tokens_per_s(proxy, started_at, row["completion_tokens"])
    row["cost"], row["cost_source"] = pricing.cost(row)
    return {name: convert(row.get(name)) for name, convert in _CONVERTERS}


def _as_str(value: Any) -> str | None:
    return value if isinstance(value, str) or value is None else str(value)


def _as_int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _as_float(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _as_bool(value: Any) -> int | None:
    return None if value is None else int(bool(value))


def _as_list(value: Any) -> str | None:
    return json.dumps(value) if isinstance(value, list) else None


# A Python value as stored: the declared type or NULL, never a surprise.
_CONVERTERS = tuple((f.name, {"str": _as_str, "int": _as_int, "float": _as_float, "bool": _as_bool,
                              "list": _as_list}[f.kind]) for f in FIELDS if f.name != "seq")


def file_time(stamp: Any) -> float | None:
    """Epoch seconds of a file-name timestamp (local time, as logdir.timestamp writes it)."""
    try:
        return time.mktime(time.strptime(str(stamp)[:19], "%Y-%m-%d_%H-%M-%S")) + int(str(stamp)[20:23]) / 1000
    except (ValueError, OverflowError):
        return None


def _tokens_per_s(proxy: dict[str, Any], started_at: Any, tokens: Any) -> float | None:
    end = proxy.get("ended_at")
    begin = proxy.get("first_byte_at") if proxy.get("streamed") else started_at
    if not isinstance(tokens, int) or not tokens or not isinstance(end, (int, float)) \
            or not isinstance(begin, (int, float)) or end - begin < 0.001:
        return None
    return round(tokens / (end - begin), 2)
