"""Finding a page of rows for a parsed query (query.py): the cheapest plan that is exact,
in SQL that both indexes run (SQLite's, translated for PostgreSQL by store/pgindex.py).

With a model filter each model column and value is its own ordered scan; with free text
the plan depends on how many rows match (`_page`).
"""
from __future__ import annotations

import json
import sqlite3
from typing import Any

from orproxy.logserver.store.index import last_seq
from orproxy.logserver.store.schema import to_api
from orproxy.logserver.web import textsearch
from orproxy.logserver.web.query import ListQuery, Where, encode_cursor


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
    phrase fills its page there. How many matches it found there tells how far the scan of
    the time index, which checks each row it meets against the matches, would go to fill
    the page. Farther than SCAN_ROWS rows, the matches are counted first, up to COLLECT:
    fewer are looked up and sorted, where the scan would go far or through every row (a
    rare word, an id prefix, no match: docs/scaling-out.md has the measurements)."""
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
    scan_rows = WINDOW * limit * limit / len(rows) if rows else float("inf")  # to fill the page, at that rate
    if scan_rows > SCAN_ROWS:  # too far: are the matches few?
        found = [r[0] for r in conn.execute(f"{textsearch.union(sets)} LIMIT ?", [*args, COLLECT])]
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
