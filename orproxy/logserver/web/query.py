"""The API's query parameters: declared once (name, meaning, parser), turned into SQL.

A bad value or an unknown parameter raises `ParamError` naming the parameter, which the
API answers with 400. Values only ever reach SQL as bound parameters.

Listing (listing.py) is newest first with keyset pagination: the cursor is the
(started_at, id) of the last row shown, so a page costs the same at any depth and rows
arriving meanwhile never shift a page. `updated_after` instead lists rows changed since a
`seq`, oldest change first: a UI's live view polls it.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from orproxy.logserver.llm import apis
from orproxy.logserver.store.record import STATES
from orproxy.logserver.web import textsearch
from orproxy.logserver.web.units import parse_time

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
LIVE_PARAMS = {"since"}  # accepted by the live feed besides the filters (a seq there, live/feed.py)
_STATUS_RE = re.compile(r"^([1-5])(?:xx|\d\d)$", re.IGNORECASE)
_TOKEN_RE = re.compile(r"^[^\x00-\x1f,]{1,200}$")
_LIKE_ESCAPE = str.maketrans({"\\": "\\\\", "%": "\\%", "_": "\\_"})
class ParamError(ValueError):
    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter


@dataclass
class Where:
    clauses: list[str] = field(default_factory=list)
    args: list[Any] = field(default_factory=list)
    models: list[str] | None = None  # an exact `model` filter, kept apart for listing.py
    search: str | None = None  # the free text's FTS phrase: the listing shows snippets of it
    text: tuple[list[str], list[Any]] | None = None  # the free text's sets of rowids (textsearch) and
    # their args, kept apart: listing.py chooses how to look for them

    def add(self, clause: str, *args: Any) -> None:
        self.clauses.append(clause)
        self.args.extend(args)

    def flat(self) -> "Where":
        """The same conditions with the model filter and the free text as plain clauses."""
        where = Where(list(self.clauses), list(self.args), search=self.search)
        if self.models:
            where.add(" OR ".join(["model = ? OR model_requested = ?"] * len(self.models)),
                      *[m for m in self.models for _ in (0, 1)])
        if self.text:
            where.add(textsearch.matching(self.text[0]), *self.text[1])
        return where

    def sql(self) -> str:
        return " WHERE " + " AND ".join(f"({c})" for c in self.clauses) if self.clauses else ""


def _values(name: str, text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise ParamError(name, "must not be empty")
    for v in values:
        if not _TOKEN_RE.match(v):
            raise ParamError(name, f"{v!r} is not a valid value")
    return values


def _in(column: str, values: list[Any]) -> str:
    return f"{column} IN ({', '.join('?' * len(values))})"


def _route(where: Where, text: str) -> None:
    values = _values("route", text)
    where.add(_in("route", values), *values)


def _method(where: Where, text: str) -> None:
    values = [v.upper() for v in _values("method", text)]
    where.add(_in("method", values), *values)


def _status(where: Where, text: str) -> None:
    ors, args = [], []
    for value in _values("status", text):
        m = _STATUS_RE.match(value)
        if not m:
            raise ParamError("status", f"{value!r} is not a status (200) or a class (4xx)")
        if value[1:].lower() == "xx":
            ors.append("status BETWEEN ? AND ?")
            args += [int(m.group(1)) * 100, int(m.group(1)) * 100 + 99]
        else:
            ors.append("status = ?")
            args.append(int(value))
    where.add(" OR ".join(ors), *args)


def _error(where: Where, text: str) -> None:
    values = _values("error", text)
    if values == ["any"]:
        where.add("error IS NOT NULL")
    elif values == ["none"]:
        where.add("error IS NULL")
    else:
        where.add(_in("error", values), *values)


def _model(where: Where, text: str) -> None:
    values = _values("model", text)
    if not any(v.endswith("*") for v in values):
        where.models = values
        return
    ors, args = [], []
    for value in values:
        if value.endswith("*"):
            pattern = value[:-1].translate(_LIKE_ESCAPE) + "%"
            ors += ["model LIKE ? ESCAPE '\\'", "model_requested LIKE ? ESCAPE '\\'"]
            args += [pattern, pattern]
        else:
            ors += ["model = ?", "model_requested = ?"]
            args += [value, value]
    where.add(" OR ".join(ors), *args)


def _provider(where: Where, text: str) -> None:
    values = _values("provider", text)
    where.add(_in("provider", values), *values)


def _api(where: Where, text: str) -> None:
    values = _values("api", text)
    where.add(_in("api", values), *values)


def _replay_of(where: Where, text: str) -> None:
    values = [v.lower() for v in _values("replay_of", text)]
    where.add(_in("replay_of", values), *values)


def _state(where: Where, text: str) -> None:
    values = _values("state", text)
    for v in values:
        if v not in STATES:
            raise ParamError("state", f"{v!r} is not one of {', '.join(STATES)}")
    where.add(_in("state", values), *values)


def _bool(name: str, column: str) -> Callable[[Where, str], None]:
    def parse(where: Where, text: str) -> None:
        if text.lower() not in ("true", "false", "1", "0"):
            raise ParamError(name, "must be true or false")
        where.add(f"coalesce({column}, 0) = ?", int(text.lower() in ("true", "1")))
    return parse


def _time(name: str, op: str) -> Callable[[Where, str], None]:
    def parse(where: Where, text: str) -> None:
        try:
            where.add(f"started_at {op} ?", parse_time(text))
        except ValueError as e:
            raise ParamError(name, str(e)) from None
    return parse


def _q(where: Where, text: str) -> None:
    text = text.strip()
    if not text or len(text) > 200:
        raise ParamError("q", "must be 1 to 200 characters")
    phrase = textsearch.to_phrase(text)
    sets, args = [], []
    if phrase:  # the whole texts and the short columns (store/index.py, `texts`)
        sets.append(textsearch.TEXT_MATCHES)
        args.append(textsearch.match_argument(phrase))
    low, high = textsearch.id_range(text)
    if low:  # the start of an id: a range of the primary key
        sets.append(textsearch.ID_MATCHES)
        args += [low, high]
    where.search = phrase
    where.text = (sets, args)


def _exact(name: str) -> Callable[[Where, str], None]:
    def parse(where: Where, text: str) -> None:
        values = _values(name, text)
        where.add(_in(name, values), *values)
    return parse


@dataclass(frozen=True)
class Param:
    name: str
    doc: str
    example: str
    apply: Callable[[Where, str], None]


FILTERS: tuple[Param, ...] = (
    Param("route", "Route name(s), comma-separated.", "openrouter", _route),
    Param("method", "HTTP method(s), comma-separated.", "POST", _method),
    Param("status", "Status codes or classes, comma-separated: 200, 4xx, 5xx.", "4xx,5xx", _status),
    Param("error", "The proxy's error code(s), comma-separated; `any` or `none`.", "any", _error),
    Param("model", "Model(s), comma-separated, matched against the model answered and the "
          "model requested; a trailing `*` matches a prefix.", "anthropic/claude-*", _model),
    Param("provider", "Provider(s) as the upstream named them (OpenRouter).", "Anthropic", _provider),
    Param("api", ", ".join(api.NAME for api in apis.APIS) + ".", "anthropic", _api),
    Param("replay_of", "The replays of these exchanges (ids, comma-separated).",
          "4f2cb051-6ec2-490c-b30c-ace08281d76c", _replay_of),
    Param("state", "in_flight, complete, incomplete; comma-separated.", "in_flight", _state),
    Param("streamed", "Only streamed (true) or only non-streamed (false) responses.", "true",
          _bool("streamed", "streamed")),
    Param("since", "Started at or after: epoch seconds, ISO 8601 (no zone means UTC), or "
          "-DURATION before now (-15m, -24h, -7d).", "-24h", _time("since", ">=")),
    Param("until", "Started before (same forms as since).", "2025-09-09T15:00:00Z", _time("until", "<")),
    Param("q", "Free text, case-insensitive: its words, as whole words and in order, in the whole "
          "request and response texts (messages, answers, tool calls; a later turn of a conversation "
          "holds only its new messages) of exchanges that are over, or in the path, route, models, "
          "error and error message of any exchange; or the start of the id. The listing's items "
          "then have a `snippet`.", "rate limit", _q),
    Param("conversation_id", "The turns of a conversation (the id of its first turn).",
          "3f2c1a9e-6b1d-4f0e-9c8a-2d7e5b4a1c00", _exact("conversation_id")),
    Param("session_id", "The exchanges of a client session (a session header the client sent).",
          "9f10edbb-1407-47e1-9b85-fa634be33732", _exact("session_id")),
    Param("previous_id", "The turns that continue this exchange.",
          "3f2c1a9e-6b1d-4f0e-9c8a-2d7e5b4a1c00", _exact("previous_id")),
)
_BY_NAME = {p.name: p for p in FILTERS}


def _single(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise ParamError(name, "given more than once")
    return values[0]


def parse_filters(params: dict[str, list[str]], allowed: set[str]) -> Where:
    """The WHERE clause of the filter parameters; any parameter not in `allowed` or
    `FILTERS` is a mistake."""
    where = Where()
    for name, values in params.items():
        if name in allowed:
            continue
        param = _BY_NAME.get(name)
        if param is None:
            raise ParamError(name, "unknown parameter")
        param.apply(where, ",".join(values) if name not in ("since", "until", "q", "streamed")
                    else _single(params, name) or "")
    return where


@dataclass
class ListQuery:
    where: Where
    limit: int = DEFAULT_LIMIT
    cursor: tuple[float, str] | None = None
    updated_after: int | None = None


def _int_param(params: dict[str, list[str]], name: str, low: int, high: int | None) -> int | None:
    text = _single(params, name)
    if text is None:
        return None
    if not re.fullmatch(r"\d{1,18}", text.strip()) or int(text) < low or (high is not None and int(text) > high):
        raise ParamError(name, f"must be an integer from {low}" + (f" to {high}" if high else ""))
    return int(text)


def encode_cursor(started_at: float, exchange_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([started_at, exchange_id]).encode()).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[float, str]:
    try:
        value = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        started_at, exchange_id = value
        if isinstance(started_at, (int, float)) and isinstance(exchange_id, str):
            return float(started_at), exchange_id
    except (ValueError, TypeError, binascii.Error):
        pass
    raise ParamError("cursor", "is not a cursor this server gave out")


def parse_list_query(params: dict[str, list[str]]) -> ListQuery:
    query = ListQuery(parse_filters(params, {"limit", "cursor", "updated_after"}))
    limit = _int_param(params, "limit", 1, MAX_LIMIT)
    query.limit = DEFAULT_LIMIT if limit is None else limit
    cursor = _single(params, "cursor")
    if cursor is not None:
        query.cursor = decode_cursor(cursor)
    query.updated_after = _int_param(params, "updated_after", 0, None)
    if query.cursor and query.updated_after is not None:
        raise ParamError("cursor", "cannot be combined with updated_after")
    return query
