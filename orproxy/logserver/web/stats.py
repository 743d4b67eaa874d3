"""`GET /api/stats`: counts, errors, tokens and cost by model and route, and latency and
time-to-first-token percentiles, over the exchanges the filters select (query.py).

"What did that agent run cost" is `?since=...&until=...`; "how slow is claude today" is
`?model=claude-*&since=-24h`. Runs on a reader thread, in one read transaction.
"""
from __future__ import annotations

import sqlite3
from typing import Any

from orproxy.logserver.web.query import Where

PERCENTILES = (50, 90, 95, 99)

_SUMS = """count(*) AS count,
  sum(CASE WHEN error IS NOT NULL OR status >= 400 THEN 1 ELSE 0 END) AS errors,
  sum(CASE WHEN state = 'in_flight' THEN 1 ELSE 0 END) AS in_flight,
  sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens,
  sum(total_tokens) AS total_tokens, sum(cached_tokens) AS cached_tokens,
  sum(reasoning_tokens) AS reasoning_tokens, sum(cost) AS cost,
  sum(CASE WHEN cost_source = 'price_table' THEN cost END) AS estimated_cost,
  sum(request_bytes) AS request_bytes, sum(response_bytes) AS response_bytes,
  min(started_at) AS first_started_at, max(started_at) AS last_started_at"""

_INTS = ("count", "errors", "in_flight", "prompt_tokens", "completion_tokens", "total_tokens",
         "cached_tokens", "reasoning_tokens", "request_bytes", "response_bytes")


def _totals(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    for key in _INTS:
        out[key] = int(out[key] or 0)
    for key in ("cost", "estimated_cost"):
        out[key] = round(out[key], 10) if out[key] is not None else None
    return out


def percentiles(values: list[float]) -> dict[str, float | None]:
    """Nearest-rank percentiles of sorted values (None when there are none)."""
    out: dict[str, float | None] = {}
    for p in PERCENTILES:
        if not values:
            out[f"p{p}"] = None
        else:
            rank = max(1, -(-p * len(values) // 100))  # ceil(p/100 * n)
            out[f"p{p}"] = values[rank - 1]
    out["max"] = values[-1] if values else None
    return out


def _sorted_column(conn: sqlite3.Connection, column: str, where: Where) -> list[float]:
    clause = where.sql() + (" AND " if where.clauses else " WHERE ") + f"{column} IS NOT NULL"
    return [r[0] for r in conn.execute(f"SELECT {column} FROM exchanges{clause} ORDER BY {column}",
                                       where.args)]


def compute(conn: sqlite3.Connection, where: Where) -> dict[str, Any]:
    where = where.flat()
    sql_where = where.sql()
    conn.execute("BEGIN")
    try:
        totals = _totals(conn.execute(f"SELECT {_SUMS} FROM exchanges{sql_where}", where.args).fetchone())
        groups = {}
        for key in ("model", "route"):
            rows = conn.execute(f"SELECT {key} AS name, {_SUMS} FROM exchanges{sql_where} "
                                f"GROUP BY {key} ORDER BY count(*) DESC, {key}", where.args)
            groups[key] = [_totals(r) for r in rows]
        latency = _sorted_column(conn, "duration_ms", where)
        ttft = _sorted_column(conn, "ttft_ms", where)
    finally:
        conn.execute("COMMIT")
    for group in groups.values():
        for entry in group:
            entry.pop("first_started_at")
            entry.pop("last_started_at")
    return {**totals, "by_model": groups["model"], "by_route": groups["route"],
            "latency_ms": {"count": len(latency), **percentiles(latency)},
            "ttft_ms": {"count": len(ttft), **percentiles(ttft)}}
