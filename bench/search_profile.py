"""Where a free-text query's time goes, in this process, on a seeded index: the whole page
(`list_rows`), the phrase's matches alone, the main query, the snippets.

    .venv/bin/python -m orproxy.testing.seed_logs /dev/shm/idx --count 20000 --texts
    .venv/bin/orlogserver --reindex --log-dir /dev/shm/idx
    .venv/bin/python bench/search_profile.py /dev/shm/idx [QUERY ...]

Without queries: no match, the commonest word, a rare word, a phrase of two common words.
"""
import argparse
import os
import sqlite3
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from orproxy.logserver.web import listing, query, textsearch  # noqa: E402
from orproxy.testing.seed_logs import VOCABULARY, corpus  # noqa: E402


def timed(fn, rounds=10):
    """p50 and max in ms over `rounds`, after one warm-up."""
    fn()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1e3)
    times.sort()
    return times[len(times) // 2], times[-1]


def profile(conn, text):
    parsed = query.parse_list_query({"q": [text]})
    phrase = parsed.where.search
    matches = conn.execute("SELECT count(*) FROM texts WHERE texts MATCH ?", (phrase,)).fetchone()[0] if phrase else 0
    sql, args = listing._newest_first(parsed.where.flat(), None, parsed.limit + 1)
    items = [{"id": row["id"]} for row in conn.execute(sql, args).fetchall()][:parsed.limit]
    print("q=%r: %d texts match" % (text, matches))
    matching = "SELECT count(*) FROM (%s)" % textsearch.TEXT_MATCHES
    for name, fn in (("page (list_rows)", lambda: listing.list_rows(conn, parsed)),
                     ("the matches alone", lambda: conn.execute(matching, (phrase,)).fetchall() if phrase else None),
                     ("main query", lambda: conn.execute(sql, args).fetchall()),
                     ("snippets", lambda: textsearch.add_snippets(conn, [dict(i) for i in items], phrase or ""))):
        print("  %-20s p50 %6.1f ms, max %6.1f" % ((name,) + timed(fn)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("log_dir")
    ap.add_argument("queries", nargs="*")
    args = ap.parse_args()
    conn = sqlite3.connect(os.path.join(args.log_dir, ".ids", "index.sqlite3"), isolation_level=None)
    conn.row_factory = sqlite3.Row
    words = corpus()[len(corpus()) // 2:].split(" ")[1:3]
    for text in args.queries or ["zzzqqq nothing", VOCABULARY[0], VOCABULARY[5000], " ".join(words)]:
        profile(conn, text)


if __name__ == "__main__":
    main()
