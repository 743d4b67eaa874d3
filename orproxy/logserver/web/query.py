"""The API's query parameters: declared once (name, meaning, parser), turned into SQL.

A bad value or an unknown parameter raises `ParamError` naming the parameter, which the
API answers with 400. Values only ever reach SQL as bound parameters.

Listing is newest first with keyset pagination: the cursor is the (started_at, id) of the
last row shown, so a page costs the same at any depth and rows arriving meanwhile never
shift a page. `updated_after` instead lists rows changed since a `seq`, oldest change
first: a UI's live view polls it.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from orproxy.logserver.llm import apis
from orproxy.logserver.store.index import last_seq
from orproxy.logserver.store.record import STATES
from orproxy.logserver.store.schema import to_api
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
    models: list[str] | None = None  # an exact `model` filter, kept apart for list_rows
    search: str | None = None  # the free text's FTS phrase: the listing shows snippets of it
    text: tuple[list[str], list[Any]] | None = None  # the free text's sets of rowids (textsearch) and
    # their args, kept apart: list_rows chooses how to look for them

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


def list_rows(conn: sqlite3.Connection, query: ListQuery) -> dict[str, Any]:
    """One page of rows (runs on a reader thread), in one read transaction."""
    limit = query.limit + 1
    conn.execute("BEGIN")
    try:
        rows = _page(conn, query, limit)
        max_seq = last_seq(conn)
    finally:
        conn.execute("COMMIT")
    more = len(rows) > query.limit
    rows = rows[:query.limit]
    items = [to_api(dict(r)) for r in rows]
    if query.where.search and items:
        textsearch.add_snippets(conn, items, query.where.search)
    next_cursor = None
    if more and query.updated_after is None:
        next_cursor = encode_cursor(rows[-1]["started_at"], rows[-1]["id"])
    if query.updated_after is not None:
        max_seq = max([query.updated_after, *(i["seq"] for i in items)]) if more else max_seq
    return {"items": items, "next_cursor": next_cursor, "has_more": more, "max_seq": max_seq}


_ORDER = "ORDER BY started_at DESC, id DESC"
WINDOW = 8  # pages of the newest rows a free-text search looks among first
COLLECT = 2048  # matches few enough to collect and sort (below: why)
ROWIDS_IN = "rowid IN (SELECT CAST(value AS bigint) FROM json_each(?))"  # a JSON list's rows
SCAN_ROWS = 8192  # rows the scan for a phrase may expect to check before it counts them first


def _page(conn: sqlite3.Connection, query: ListQuery, limit: int) -> list[Any]:
    """`limit` rows of the query, by the cheapest plan that is exact.

    A free-text search first looks among the newest rows (`_among_newest`): a common
    phrase fills its page there. The matches it found there tell how far the scan of the
    time index, which checks each row it meets against the matches (SQLite: against their
    rowids, collected once; PostgreSQL: a lookup of the row's text, 2-3 µs), would go to
    fill the page. If farther than SCAN_ROWS rows, the matches are counted, up to COLLECT:
    fewer are collected and sorted, a few ms, where the scan would go far (1.4 s at
    1,000,000 exchanges in PostgreSQL for the start of an id, 70 ms for no match). (Counting
    first whatever the window found cost a phrase 1 row in 12 has 10-15 ms more in
    PostgreSQL; a wider window, of 200 pages, 20-130 ms.)"""
    if query.updated_after is not None:
        where = query.where.flat()
        where.add("seq > ?", query.updated_after)
        return conn.execute(f"SELECT * FROM exchanges{where.sql()} ORDER BY seq ASC LIMIT ?",
                            [*where.args, limit]).fetchall()
    where = Where(list(query.where.clauses), list(query.where.args))
    if query.cursor:
        where.add("(started_at, id) < (?, ?)", *query.cursor)
    models, text = query.where.models, query.where.text
    if not text:
        return conn.execute(*_newest_first(where, models, limit)).fetchall()
    sets, args = text
    if not sets:
        return []
    rows = conn.execute(*_among_newest(where, models, text, limit)).fetchall()
    if len(rows) >= limit:
        return rows
    if len(rows) * SCAN_ROWS < WINDOW * limit * limit:  # the scan would go too far: are they few?
        found = [r[0] for r in conn.execute(f"{' UNION ALL '.join(sets)} LIMIT ?", [*args, COLLECT])]
        if len(found) < COLLECT:
            return conn.execute(*_among_rowids(where, models, found, limit)).fetchall() if found else []
    where.add(textsearch.matching(sets), *args)
    return conn.execute(*_newest_first(where, models, limit)).fetchall()


def _newest_first(where: Where, models: list[str] | None, limit: int,
                  columns: str = "*") -> tuple[str, list[Any]]:
    """The newest rows first. With a model filter, one ordered index scan per model column
    and value, each stopped after `limit` rows, then merged: an OR would collect and sort
    every match, and PostgreSQL's plan of a UNION of whole scans sorts them all (330 ms
    for a model 1 row in 5 has at 1,000,000 exchanges): milliseconds at any size."""
    if not models:
        return f"SELECT {columns} FROM exchanges{where.sql()} {_ORDER} LIMIT ?", [*where.args, limit]
    branches, args = [], []
    rest = "".join(f" AND ({c})" for c in where.clauses)
    for model in models:
        for column in ("model", "model_requested"):
            branches.append(f"SELECT id, started_at FROM (SELECT id, started_at FROM exchanges WHERE {column} = ?"
                            f"{rest} {_ORDER} LIMIT ?) AS b{len(branches)}")
            args += [model, *where.args, limit]
    hits = " UNION ".join(branches)
    return (f"SELECT {columns} FROM exchanges WHERE id IN (SELECT id FROM ({hits} {_ORDER} LIMIT ?) AS hits) {_ORDER}",
            [*args, limit])


def _among_newest(rest: Where, models: list[str] | None, text: tuple[list[str], list[Any]],
                  limit: int) -> tuple[str, list[Any]]:
    """A page of a free-text search sought among the newest WINDOW pages of rows the other
    filters pass, with only the phrase's matches from the oldest rowid among them on
    collected (FTS5 seeks to it, PostgreSQL reads that range of `texts` by its key: rows
    get rowids as they arrive, so about the last WINDOW pages' worth): a common phrase
    fills the page there in a few ms, where collecting all its matches takes 45 ms at
    100,000 exchanges (textsearch.py). A page it does not fill is sought otherwise (_page)."""
    inner, inner_args = _newest_first(rest, models, WINDOW * limit, columns="rowid AS rowid, started_at, id")
    sets, args = text
    check = textsearch.among(textsearch.matching(sets), "newest")
    return (f"WITH newest AS MATERIALIZED ({inner}) SELECT * FROM exchanges WHERE rowid IN "
            f"(SELECT rowid FROM newest WHERE {check} {_ORDER} LIMIT ?) {_ORDER}",
            [*inner_args, *args, limit])


def _among_rowids(rest: Where, models: list[str] | None, rowids: list[int], limit: int) -> tuple[str, list[Any]]:
    """A page among these rows (fewer than COLLECT), looked up by rowid and sorted. The
    rowids go as one JSON argument: a statement of 2,000 placeholders cost psycopg 14 ms
    to convert (pgindex.py translates `json_each`)."""
    where = Where(list(rest.clauses), list(rest.args), models=models).flat()
    where.add(ROWIDS_IN, json.dumps(rowids))
    return f"SELECT * FROM exchanges{where.sql()} {_ORDER} LIMIT ?", [*where.args, limit]


def get_row(conn: sqlite3.Connection, exchange_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT * FROM exchanges WHERE id = ?", (exchange_id,)).fetchone()
    return dict(row) if row else None
