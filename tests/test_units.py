"""Pure functions: routing rewrites, header rules, secret masking (http1's head writer and
URL split: test_http1_units.py)."""
import pytest

from orproxy.headers import mask_secret, masked, strip_hop_by_hop
from orproxy.routes import Route, RouteTable


def table(*routes):
    return RouteTable([Route(source=s, destination=d, name=s) for s, d in routes])


@pytest.mark.parametrize("path, expected", [
    ("/api/v1/chat/completions", "https://openrouter.ai/api/v1/chat/completions"),
    ("/api/v1", "https://openrouter.ai/api/v1"),
    ("/api/v1x", None),
    ("/openrouter/chat/completions", "https://openrouter.ai/api/v1/chat/completions"),
    ("/openrouter/a%2fb?x=%41", "https://openrouter.ai/api/v1/a%2fb?x=%41"),
    ("/api/v1/models/special", "http://models.local/api/v1/models/special"),
    ("/elsewhere", None),
])
def test_longest_prefix_and_both_rewrites(path, expected):
    routes = table(("/api/v1/", "https://openrouter.ai/"),
                   ("/openrouter/", "https://openrouter.ai/api/v1/"),
                   ("/api/v1/models/", "http://models.local/"))
    route = routes.match(path.partition("?")[0])
    if expected is None:
        assert route is None
    else:
        assert route.origin + route.upstream_target(path) == expected


def test_root_source_matches_everything():
    route = table(("/", "http://up:8000/base/")).match("/x/y")
    assert route.origin + route.upstream_target("/x/y") == "http://up:8000/base/x/y"


def test_hop_by_hop_and_connection_named_headers_are_dropped():
    headers = [("Connection", "keep-alive, X-Secret-Hop"), ("X-Secret-Hop", "1"), ("Keep-Alive", "5"),
               ("TE", "trailers"), ("Upgrade", "h2c"), ("Proxy-Authorization", "x"), ("Accept", "*/*"),
               ("Authorization", "Bearer k")]
    assert strip_hop_by_hop(headers) == [("Accept", "*/*"), ("Authorization", "Bearer k")]
    assert ("Upgrade", "h2c") in strip_hop_by_hop(headers, keep=frozenset({"upgrade"}))


@pytest.mark.parametrize("name, value, shown", [
    ("Authorization", "Bearer sk-or-v1-0123456789abcd", "Bearer ****abcd"),
    ("X-Api-Key", "sk-ant-api03-xyzqrst", "****qrst"),
    ("Api-Key", "short", "****"),
    ("Authorization", "Bearer short", "Bearer ****"),
    ("Cookie", "session=0123456789abcdef", "****"),
    ("Set-Cookie", "a=b; Path=/", "****"),
])
def test_secrets_keep_scheme_and_last_four(name, value, shown):
    assert mask_secret(name, value) == shown


def test_masking_is_case_insensitive_and_configurable():
    headers = [("AUTHORIZATION", "Bearer 0123456789abcdef"), ("X-Custom-Token", "0123456789abcdef")]
    assert masked(headers, frozenset({"authorization"})) == [("AUTHORIZATION", "Bearer ****cdef"),
                                                             ("X-Custom-Token", "0123456789abcdef")]
    assert masked(headers, frozenset({"x-custom-token"}))[1] == ("X-Custom-Token", "****cdef")



# -- the free-text search's SQL and snippets (web/textsearch.py) -----------------------------

def _texts_db(bodies):
    import sqlite3
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE exchanges (id TEXT PRIMARY KEY, started_at REAL, status INTEGER)")
    conn.execute("CREATE INDEX by_time ON exchanges (started_at, id)")
    conn.execute("CREATE VIRTUAL TABLE texts USING fts5(id UNINDEXED, body)")
    for i, body in enumerate(bodies, 1):
        conn.execute("INSERT INTO exchanges (rowid, id, started_at, status) VALUES (?, ?, ?, ?)",
                     (i, "e%d" % i, 1000.0 + i, 200 if i % 2 else 500))
        conn.execute("INSERT INTO texts (rowid, id, body) VALUES (?, ?, ?)", (i, "e%d" % i, body))
    conn.execute("ANALYZE")
    return conn


def test_a_phrase_is_a_membership_test_in_the_newest_first_scan_common_or_rare():
    from orproxy.logserver.web import listing, query
    conn = _texts_db(["a rare one"] + ["common words here"] * 1500 + ["words common"])
    conn.row_factory = None
    for text, expected in (("common words", ["e1501", "e1499", "e1497"]), ("rare", ["e1"]), ("nothing", [])):
        parsed = query.parse_list_query({"q": [text], "status": ["200"], "limit": ["3"]})
        sql, args = listing._newest_first(parsed.where.flat(), None, 3)
        sql = sql.replace("SELECT *", "SELECT id")
        assert [r[0] for r in conn.execute(sql, args)] == expected, text
        plan = " / ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, args))
        assert "SCAN exchanges USING INDEX by_time" in plan and "TEMP B-TREE" not in plan, plan
        # first sought among the newest rows: the common phrase fills its page there, the others not
        others = query.Where(list(parsed.where.clauses), list(parsed.where.args))
        sql, args = listing._among_newest(others, None, parsed.where.text, 3)
        found = [r[0] for r in conn.execute(sql.replace("SELECT * FROM exchanges WHERE rowid IN", "SELECT id FROM "
                                                        "exchanges WHERE rowid IN"), args)]
        assert found == (expected if text == "common words" else []), text


def test_a_search_takes_the_cheapest_exact_plan_for_its_number_of_matches(monkeypatch):
    from orproxy.logserver.web import listing, query
    monkeypatch.setattr(listing, "COLLECT", 100)  # (2,048 in use: too many rows for a unit test)
    bodies = []
    for i in range(1, 3001):  # every row "common"; "middle" in 2000-2900, "old" in 1-200, "rare" in 3
        bodies.append(" ".join(["common"] + ["middle"] * (2000 <= i <= 2900) + ["old"] * (i <= 200)
                               + ["rare"] * (i in (10, 20, 30)) + ["sparse"] * (i % 20 == 0)
                               + ["few"] * (i == 2990 or 100 <= i <= 150)))
    conn = _texts_db(bodies)
    conn.row_factory = None
    statements = []
    conn.set_trace_callback(lambda sql: sql.startswith("--") or statements.append(sql))  # (-- FTS5's own)

    def search(text, **params):
        statements.clear()
        parsed = query.parse_list_query({"q": [text], "limit": ["3"], **params})
        return [row[0] for row in listing._page(conn, parsed, 4)], len(statements)

    # a common phrase: among the newest 8 pages; a rare one: collected and sorted, complete
    assert search("common") == (["e3000", "e2999", "e2998", "e2997"], 1)
    assert search("rare") == (["e30", "e20", "e10"], 3)
    assert "json_each('[10, 20, 30]')" in statements[-1]  # the rowids collected
    plan = " / ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + statements[-1]))
    assert "USING INTEGER PRIMARY KEY (rowid=?)" in plan, plan  # looked up, not scanned for
    cursor = query.encode_cursor(1020.0, "e20")
    assert search("rare", cursor=[cursor]) == (["e10"], 2)  # the window before the cursor holds it
    assert search("nothing") == ([], 2)
    # a few among the newest: the scan by time, checking each row, goes on from there
    assert search("sparse") == (["e3000", "e2980", "e2960", "e2940"], 2)
    # too many to collect: the scan by time too
    assert search("middle") == (["e2900", "e2899", "e2898", "e2897"], 3)
    assert search("old", status=["5xx"]) == (["e200", "e198", "e196", "e194"], 3)
    assert "+rowid IN" in statements[-1] and "USING INDEX by_time" in " / ".join(
        r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + statements[-1]))
    # a few among the newest, but the scan would still go far: counted, and collected if few
    monkeypatch.setattr(listing, "SCAN_ROWS", 10)
    assert search("few") == (["e2990", "e150", "e149", "e148"], 3)
    assert search("sparse") == (["e3000", "e2980", "e2960", "e2940"], 3)  # 150: too many, the scan


def test_a_snippet_shows_the_match_in_its_own_case_with_words_around_it():
    from orproxy.logserver.web import textsearch
    conn = _texts_db(["lorem ipsum " * 20 + "open SRC/App.py\nnow " + "dolor sit " * 20, "café"])
    items = [{"id": "e1"}, {"id": "e2"}, {"id": "e3"}]
    textsearch.add_snippets(conn, items, textsearch.to_phrase("src app.py"))
    snippet = items[0]["snippet"]
    assert {"text": "SRC/App.py", "match": True} in snippet
    text = "".join(piece["text"] for piece in snippet)
    assert text.startswith("…") and text.endswith("…") and "\n" not in text and " now dolor" in text
    assert len(text) < 200 and "snippet" not in items[1] and "snippet" not in items[2]


# -- the stats' sums (web/stats.py) ----------------------------------------------------------

def test_stats_sum_each_model_and_route_from_one_grouped_pass():
    import sqlite3
    from orproxy.logserver.store.index import create_schema, upsert_rows
    from orproxy.logserver.web import query, stats
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.row_factory = sqlite3.Row
    create_schema(conn)
    rows = [("a", "m1", "r1", 10, 0.5, 100.0), ("b", "m1", "r2", 20, None, 300.0), ("c", None, "r1", 5, None, 200.0),
            ("d", "m2", "r2", None, None, None), ("e", "m2", "r2", 1, 0.25, 50.0)]
    upsert_rows(conn, [{"id": i, "rev": 1, "started_at": 1000.0 + n, "model": model, "route": route, "status": 200,
                        "prompt_tokens": tokens, "cost": cost, "duration_ms": ms, "state": "complete"}
                       for n, (i, model, route, tokens, cost, ms) in enumerate(rows)])
    result = stats.compute(conn, query.parse_filters({}, set()))
    assert (result["count"], result["prompt_tokens"], result["cost"]) == (5, 36, 0.75)
    assert (result["first_started_at"], result["last_started_at"]) == (1000.0, 1004.0)
    assert [(g["name"], g["count"], g["prompt_tokens"], g["cost"]) for g in result["by_model"]] == [
        ("m1", 2, 30, 0.5), ("m2", 2, 1, 0.25), (None, 1, 5, None)]  # the largest first, ties by name
    assert [(g["name"], g["count"]) for g in result["by_route"]] == [("r2", 3), ("r1", 2)]
    assert "first_started_at" not in result["by_model"][0]
    assert result["latency_ms"]["count"] == 4 and result["latency_ms"]["p50"] == 100.0
    assert result["latency_ms"]["max"] == 300.0
    empty = stats.compute(conn, query.parse_filters({"route": ["none"]}, set()))
    assert (empty["count"], empty["cost"], empty["by_model"], empty["latency_ms"]["p50"]) == (0, None, [], None)


def test_a_link_to_an_alike_turn_of_another_session_is_not_sure_so_it_is_looked_for_again():
    from orproxy.logserver.store.linking import Clue, Turn, _best
    clue = Clue(None, [(3, "k")], {3: "answer"})
    other = Turn("b", "b", "session-b", 10.0, True, "answer")
    own = Turn("a", "a", "session-a", 9.0, True, "answer")
    assert _best(clue, {"k": [other]}, 11.0, "session-a").sure is False  # its own not seen yet
    link = _best(clue, {"k": [other, own]}, 11.0, "session-a")
    assert link.previous is own and link.sure
    assert _best(clue, {"k": [other]}, 11.0, None).sure  # no session: nothing better to wait for


def test_of_alike_turns_one_begun_after_the_request_loses_to_one_begun_before():
    """A later look (relinking.py) sees the alike first turn of a run that began after the
    request, within the clock allowance (EARLIER_BY): the latest must not win by that."""
    from orproxy.logserver.store.linking import EARLIER_BY, Clue, Turn, _best
    clue = Clue(None, [(1, "k")], {1: "answer"})
    own = Turn("own", "own", None, 10.0, True, "answer")
    next_run = Turn("next", "next", None, 10.0 + 1.5 + EARLIER_BY / 2, True, "answer")
    assert _best(clue, {"k": [own, next_run]}, 11.5, None).previous is own
    assert _best(clue, {"k": [next_run]}, 11.5, None).previous is next_run  # the allowance still holds


def test_a_recent_link_by_messages_is_not_sure_once_others_are_seen_writing_the_index():
    """Another server may hold the turn just before, not indexed yet: the relinker looks.
    Alone (no recent turn in the index that memory lacks), a link from memory is sure."""
    import time as clock

    from orproxy.logserver.store.linking import SETTLING, Clue, Linker, Turn, _turns_by_key

    class Index:  # what the index answers: the turns of a key, as _turns_by_key reads them
        def __init__(self):
            self.turns = {}

        def read(self, fn, *args):
            assert fn is _turns_by_key
            return {key: self.turns[key] for key in args[0] if key in self.turns}

    index = Index()
    linker = Linker(index)
    first = Clue(None, [(1, "k")], {1: "answer"})
    linker.remember(Turn("t1", "t1", None, clock.time() - 1, True, "answer"), "k", None)
    assert linker.follow(first, clock.time(), None).sure  # alone so far
    index.turns["j"] = [Turn("theirs", "theirs", None, clock.time() - 2, True, "other")]  # another server's
    assert linker.follow(Clue(None, [(1, "j")], {1: "other"}), clock.time(), None).previous.id == "theirs"
    assert not linker.follow(first, clock.time(), None).sure  # others write: looked for again
    old = clock.time() - SETTLING - 5
    linker.remember(Turn("t0", "t0", None, old - 1, True, "answer"), "k", None)
    assert linker.follow(first, old, None).sure  # long settled: sure again


def test_health_counts_a_large_index_at_most_every_few_seconds():
    """count(*) scans the index (52 ms at 1,000,000 rows in PostgreSQL) and a balancer may
    ask every second: a small index is counted each time, a large one reused a while."""
    from orproxy.logserver.web import api as api_module

    class Index:
        def __init__(self, count):
            self.count, self.reads = count, 0

        def read(self, fn):
            self.reads += 1
            return fn(self)

        def execute(self, sql):
            assert sql == "SELECT count(*) FROM exchanges"
            return self

        def fetchone(self):
            return (self.count,)

    for count, reads in ((5, 3), (api_module.LARGE, 1)):
        index = Index(count)
        api = api_module.Api(None, index)
        assert [api._exchanges() for _ in range(3)] == [count] * 3 and index.reads == reads
    api._count = (api_module.LARGE, api._count[1] - api_module.COUNT_FRESH_FOR - 1)  # long ago
    index.count += 1
    assert api._exchanges() == api_module.LARGE + 1 and index.reads == 2
