"""The PostgreSQL index at 1,000,000 exchanges, through the real logging server (issue 15:
listings and a filtered query, p99 under 50 ms).

1. Starts a throwaway PostgreSQL (orproxy.testing.postgres) and applies the index's own
   migrations (store/pgschema.py).
2. Fills `exchanges` by SQL (not by ingest: deriving a million exchanges would take 20
   minutes) with rows like the seeded ones: 5 models, 4 routes, 10% errors, one every 2 s,
   and `texts` with 60 words each from a Zipf-like vocabulary of 5,000 (word n about n
   times rarer than word 0), folded as the index folds them. The indexes are dropped
   for the fill and made again after it, as a bulk load would.
3. Starts `orlogserver --index` on it and times each query over one keep-alive connection
   (bench/scenarios/index.py's measure_queries): p50, p99, max.

    .venv/bin/python bench/pg_listing.py [--rows 1000000] [--queries 100]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import psycopg  # noqa: E402

from bench.procs import Proc, free_port  # noqa: E402
from bench.scenarios.index import measure_queries  # noqa: E402
from orproxy.logserver.store.pgschema import migrate  # noqa: E402

BASE = 1_760_000_000.0
MODELS = ["openai/gpt-4o-mini", "anthropic/claude-sonnet-4", "gpt-4.1", "o3-mini", "llama3.2:3b"]
ROUTES = ["openrouter", "openai", "anthropic", "local"]
FILL = f"""
INSERT INTO exchanges (id, started_at, ended_at, duration_ms, ttft_ms, state, method, path, route, status,
                       error, streamed, request_bytes, response_bytes, stored_bytes, api, model,
                       model_requested, prompt_tokens, completion_tokens, total_tokens, cost, seq, rev,
                       prompt_preview, reply_preview)
SELECT overlay(overlay(overlay(overlay(md5(i::text) placing '-' from 9 for 0) placing '-' from 14 for 0)
                       placing '-' from 19 for 0) placing '-' from 24 for 0),
       {BASE} + i * 2.0, {BASE} + i * 2.0 + 1.5, 1500, 300, 'complete', 'POST', '/v1/chat/completions',
       (ARRAY{ROUTES})[1 + i %% 4], (ARRAY[200,200,200,200,200,200,200,200,429,500])[1 + i %% 10],
       CASE WHEN i %% 10 = 9 THEN 'upstream_broken' END, i %% 2, 900, 2000, 3100, 'openai',
       (ARRAY{MODELS})[1 + (i * 7) %% 5], (ARRAY{MODELS})[1 + (i * 7) %% 5], 120, 200, 320, 0.0004, i, 1,
       'question ' || i, 'answer ' || i
FROM generate_series(%(low)s, %(high)s) AS i
"""
TEXTS = """
INSERT INTO texts (rowid, id, body, words)
SELECT rowid, id, body, to_tsvector('simple', body) FROM (
    SELECT e.rowid, e.id, (SELECT string_agg('w' || (floor(power(5000, random())) - 1)::int, ' ')
                           FROM generate_series(1, 60) WHERE e.rowid > 0) AS body
    FROM exchanges e WHERE e.seq BETWEEN %(low)s AND %(high)s) AS made
"""


def fill(url: str, rows: int) -> float:
    start = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
        # Every index the migrations made, but the keys': made again after the fill
        made = conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN ('exchanges', 'texts') "
                            "AND indexdef NOT LIKE 'CREATE UNIQUE INDEX%'").fetchall()
        for name, _ in made:
            conn.execute(f"DROP INDEX {name}")
        step = 100_000
        for low in range(1, rows + 1, step):
            bounds = {"low": low, "high": min(rows, low + step - 1)}
            conn.execute(FILL, bounds)
            conn.execute(TEXTS, bounds)
            print(f"  {bounds['high']:,} rows ({time.monotonic() - start:.0f} s)", flush=True)
        for _, definition in made:
            conn.execute(definition)
        conn.execute("VACUUM ANALYZE exchanges")
        conn.execute("VACUUM ANALYZE texts")
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    print(f"filled {rows:,} rows in {time.monotonic() - start:.0f} s; database {size / 2**20:,.0f} MB", flush=True)
    return size


def queries(rows: int) -> dict[str, dict[str, str]]:
    mid = BASE + rows  # the rows span 2 s each
    return {
        "newest 50": {},
        "model + time range": {"model": "gpt-4.1", "since": str(mid - 21600), "until": str(mid + 21600)},
        "model prefix + time range": {"model": "anthropic/*", "since": str(mid - 21600), "until": str(mid + 21600)},
        "route + status class": {"route": "anthropic", "status": "5xx"},
        "errors (error=any)": {"error": "any"},
        "state=in_flight (none)": {"state": "in_flight"},
        "q the commonest word": {"q": "w0"},
        "q a word 1 exchange in 60 has": {"q": "w80"},
        "q a rare word": {"q": "w4000"},
        "q a two-word phrase": {"q": "w0 w1"},
        "q + model": {"q": "w50", "model": "gpt-4.1"},
        "q that matches nothing": {"q": "rate limit"},
        "q the start of an id": {"q": "0a1b"},
        "updated_after (the live view's poll)": {"updated_after": str(rows - 200)},
        "stats: 6 h window": {"since": str(mid - 10800), "until": str(mid + 10800)},
        "health: /api/health (a balancer's check)": {},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()
    from orproxy.testing.postgres import Cluster
    with Cluster.start() as cluster:
        url = cluster.url()
        fill(url, args.rows)
        port = free_port()
        log_dir = tempfile.mkdtemp(prefix="pg-listing-")
        server = Proc("orlogserver", [os.path.join(os.path.dirname(sys.executable), "orlogserver"), "--port",
                                      str(port), "--log-dir", log_dir, "--index", url], log_dir)
        server.start().wait_port(port)
        try:
            results = measure_queries(port, queries(args.rows), args.queries)
        finally:
            server.stop()
    print(f"\n{'query':45} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'rows':>5}")
    for name, r in results.items():
        print(f"{name:45} {r['p50']:8.2f} {r['p99']:8.2f} {r['max']:8.2f} {r['rows'] if r['rows'] is not None else '':>5}")


if __name__ == "__main__":
    main()
