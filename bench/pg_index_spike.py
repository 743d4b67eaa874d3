"""Can PostgreSQL hold the index at 1,000,000 exchanges with listings under 50 ms p99
(issue 15's target)? A spike, before any code: the `exchanges` columns the listings use,
1,000,000 rows made by SQL, a `texts` table of tsvectors (GIN) from a Zipf-like
vocabulary, and the query shapes of web/query.py, each timed 50 times.

    /tmp/sv/bin/python bench/pg_index_spike.py [--rows N]    (the venv of bench/storage_clients.py)
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from storage_clients import postgresql  # noqa: E402

SCHEMA = """
CREATE TABLE exchanges (
    rowid bigserial PRIMARY KEY, id text UNIQUE NOT NULL, started_at double precision NOT NULL,
    route text, model text, model_requested text, status integer, seq bigint NOT NULL,
    prompt_preview text, filler text);
CREATE TABLE texts (rowid bigint PRIMARY KEY, body tsvector NOT NULL);
"""
INDEXES = """
CREATE INDEX by_time ON exchanges (started_at, id);
CREATE INDEX by_model ON exchanges (model, started_at, id);
CREATE INDEX by_model_requested ON exchanges (model_requested, started_at, id);
CREATE INDEX by_seq ON exchanges (seq);
CREATE INDEX texts_body ON texts USING gin (body);
ANALYZE;
"""
# Word n of 5,000 drawn about n times rarer than word 0 (floor(5000^u) - 1 for uniform u)
FILL = """
INSERT INTO exchanges (id, started_at, route, model, model_requested, status, seq, prompt_preview, filler)
SELECT md5(i::text), 1760000000 + i * 2.0,
       (ARRAY['openrouter','openai','anthropic','local'])[1 + i % 4],
       (ARRAY['openai/gpt-4o-mini','anthropic/claude-sonnet-4','gpt-4.1','o3-mini','llama3.2:3b'])[1 + (i * 7) % 5],
       (ARRAY['openai/gpt-4o-mini','anthropic/claude-sonnet-4','gpt-4.1','o3-mini','llama3.2:3b'])[1 + (i * 7) % 5],
       (ARRAY[200,200,200,200,200,200,200,200,429,500])[1 + i % 10], i, 'question ' || i, repeat('x', 600)
FROM generate_series(1, %(rows)s) AS i;
INSERT INTO texts (rowid, body)
SELECT e.rowid, to_tsvector('simple', (SELECT string_agg('w' || (floor(power(5000, random())) - 1)::int, ' ')
                                        FROM generate_series(1, 60) WHERE e.rowid > 0))
FROM exchanges e;
"""
NEWEST = "ORDER BY started_at DESC, id DESC LIMIT 51"
MATCH = "rowid IN (SELECT rowid FROM texts WHERE body @@ phraseto_tsquery('simple', %s))"
# The same as a filter of the newest-first scan (`IS TRUE` keeps the planner from making
# it a join it would then sort): the membership test web/textsearch.py makes in SQLite
MEMBER = f"({MATCH}) IS TRUE"
# Or the matches collected first, then joined and sorted (MATERIALIZED: the planner cannot
# fold it back into a scan by time that hopes to meet matches early)
SORTED = ("WITH m AS MATERIALIZED (SELECT rowid FROM texts WHERE body @@ phraseto_tsquery('simple', %s)) "
          f"SELECT e.* FROM exchanges e JOIN m USING (rowid) {NEWEST}")
QUERIES = {
    "newest 50": (f"SELECT * FROM exchanges {NEWEST}", []),
    "model + time range": (f"SELECT * FROM exchanges WHERE model = %s AND started_at >= %s AND started_at < %s {NEWEST}",
                           ["gpt-4.1", 1760000000 + 500000.0, 1760000000 + 1500000.0]),
    "status 5xx": (f"SELECT * FROM exchanges WHERE status >= 500 {NEWEST}", []),
    "page 20 (cursor)": (f"SELECT * FROM exchanges WHERE (started_at, id) < (%s, %s) {NEWEST}",
                         [1760000000 + 1999000.0, "z"]),
    "q the commonest word": (f"SELECT * FROM exchanges WHERE {MATCH} {NEWEST}", ["w0"]),
    "q a word in 1 of 100": (f"SELECT * FROM exchanges WHERE {MATCH} {NEWEST}", ["w400"]),
    "q a rare word": (f"SELECT * FROM exchanges WHERE {MATCH} {NEWEST}", ["w4990"]),
    "q no match": (f"SELECT * FROM exchanges WHERE {MATCH} {NEWEST}", ["nothing"]),
    "q two common words as a phrase": (f"SELECT * FROM exchanges WHERE {MATCH} {NEWEST}", ["w0 w1"]),
    "q + model": (f"SELECT * FROM exchanges WHERE model = %s AND {MATCH} {NEWEST}", ["gpt-4.1", "w3"]),
    "q a word in 1 of 100, as a filter": (f"SELECT * FROM exchanges WHERE {MEMBER} {NEWEST}", ["w400"]),
    "q a rare word, as a filter": (f"SELECT * FROM exchanges WHERE {MEMBER} {NEWEST}", ["w4990"]),
    "q no match, as a filter": (f"SELECT * FROM exchanges WHERE {MEMBER} {NEWEST}", ["nothing"]),
    "q the commonest word, sorted": (SORTED, ["w0"]),
    "q a word in 1 of 100, sorted": (SORTED, ["w400"]),
    "q a rare word, sorted": (SORTED, ["w4990"]),
    "q no match, sorted": (SORTED, ["nothing"]),
    "count of matches, at most 5,000": ("SELECT count(*) FROM (SELECT 1 FROM texts WHERE "
                                        "body @@ phraseto_tsquery('simple', %s) LIMIT 5000) AS m", ["w400"]),
    "live feed: changes after a seq": ("SELECT * FROM exchanges WHERE seq > %s ORDER BY seq LIMIT 500", [999000]),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    import psycopg
    with postgresql() as dsn:
        conn = psycopg.connect(dsn, autocommit=True)
        started = time.monotonic()
        conn.execute(SCHEMA)
        for statement in FILL.split(";\n"):
            if statement.strip():
                conn.execute(statement.replace("%(rows)s", str(args.rows)))
        filled = time.monotonic() - started
        for statement in INDEXES.strip().splitlines():
            conn.execute(statement)
        built = time.monotonic() - started - filled
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        print(f"{args.rows:,} rows: filled in {filled:.0f} s, indexed in {built:.0f} s, {size / 1e6:,.0f} MB")
        for name, (sql, params) in QUERIES.items():
            conn.execute(sql, params).fetchall()
            times = []
            for _ in range(50):
                t = time.perf_counter()
                rows = conn.execute(sql, params).fetchall()
                times.append((time.perf_counter() - t) * 1e3)
            times.sort()
            print(f"  {name:38s} p50 {times[25]:7.2f}  p99 {times[49]:7.2f} ms  ({len(rows)} rows)", flush=True)


if __name__ == "__main__":
    main()
