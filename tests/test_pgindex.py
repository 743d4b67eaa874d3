"""The index in PostgreSQL (`orlogserver --index postgresql://…`, store/pgindex.py) as such:
the SQL it is given, its start (bad URLs, migrations), several logging servers sharing
it, and a reindex into it. The API and UI suites run against it as well (their modules
are marked `both_indexes`, conftest.py); this module tests what only it has."""
import threading
import time

import psycopg
import pytest
import requests

from servers import LogServer, build_config, start_proxy
from helpers import wait_until
from live_helpers import send_chat, sse_events, wait_row
from orproxy.logserver.llm.searchtext import folded_words
from orproxy.logserver.store.index import TEXT_MATCHES
from orproxy.logserver.store.pgindex import masked, translate
from orproxy.logserver.store.pgschema import MIGRATIONS


# -- units: no sockets ------------------------------------------------------------------

def test_sqlite_sql_is_translated_only_where_postgresql_says_it_otherwise():
    assert translate("SELECT id FROM exchanges WHERE id = ? AND seq > ?") == \
        "SELECT id FROM exchanges WHERE id = %s AND seq > %s"
    assert translate("model LIKE ? ESCAPE '\\'") == "model ILIKE %s ESCAPE '\\'"
    assert translate("x = '?%' AND y LIKE ?") == "x = '?%' AND y ILIKE %s"  # literals kept
    assert translate("a % b = ?") == "a %% b = %s"
    assert "phraseto_tsquery('simple', %s)" in translate(f"+rowid IN ({TEXT_MATCHES})")
    assert translate("BEGIN") == "BEGIN ISOLATION LEVEL REPEATABLE READ"  # a reader's one snapshot


def test_words_are_folded_as_sqlites_tokenizer_folds_them():
    assert folded_words("Café-Bar naïve  x_y 中文 ÉCOLE 3.5") == "cafe bar naive x y 中文 ecole 3 5"
    assert folded_words("plain ascii, RATE-limit!") == "plain ascii rate limit"


def test_a_database_url_in_a_message_hides_its_password():
    assert masked("postgresql://orproxy:hunter2@db.lan:5432/logs?sslmode=require") == \
        "postgresql://orproxy:***@db.lan:5432/logs"
    assert masked("postgresql://orproxy@db.lan/logs") == "postgresql://orproxy@db.lan/logs"


# -- start-up -----------------------------------------------------------------------------

@pytest.mark.parametrize("url, says", [
    ("mysql://u@h/db", "'mysql' is not an index this server knows"),
    ("postgresql://orproxy:hunter2@127.0.0.1:1/logs", "postgresql://orproxy:***@127.0.0.1:1/logs"),
])
def test_an_index_that_cannot_be_opened_is_one_line_and_exit_2(run_cli, tmp_path, url, says):
    done = run_cli("orlogserver", "--log-dir", str(tmp_path / "logs"), "--port", "0", "--index", url)
    assert done.returncode == 2, done.stderr
    assert says in done.stderr and "Traceback" not in done.stderr and "hunter2" not in done.stderr
    assert done.stderr.startswith("orlogserver: --index ")


def test_migrations_are_applied_once_by_servers_starting_together(postgres_cluster, tmp_path):
    url = postgres_cluster.new_database()
    servers = [LogServer(tmp_path / f"logs{n}", tmp_path / f"work{n}", ["--index", url]) for n in (1, 2)]
    starting = [threading.Thread(target=s.start) for s in servers]
    try:
        for thread in starting:
            thread.start()
        for thread in starting:
            thread.join()
        assert all(s.alive for s in servers), [s.stderr_text() for s in servers]
        servers[0].stop()
        servers[0].start()  # a restart finds every migration applied
        with psycopg.connect(url) as conn:
            versions = [r[0] for r in conn.execute("SELECT version FROM orproxy_migrations ORDER BY version")]
        assert versions == [version for version, _ in MIGRATIONS]
    finally:
        for server in servers:
            server.stop(timeout=5)


# -- several logging servers, one index ---------------------------------------------------

@pytest.fixture
def two_instances(postgres_cluster, tmp_path, fake_upstream):
    """Two orlogserver processes on one log dir and one PostgreSQL index, and a proxy
    logging to each."""
    url = postgres_cluster.new_database()
    servers = [LogServer(tmp_path / "logs", tmp_path / f"work{n}", ["--index", url]).start() for n in (1, 2)]
    proxies = [start_proxy(tmp_path / f"proxy{n}", build_config(fake_upstream.url, s.url))
               for n, s in enumerate(servers)]
    yield servers, proxies
    for process in (*proxies, *servers):
        process.stop(timeout=5)


def _listing(server):
    return [(i["id"], i["state"], i["seq"]) for i in
            requests.get(server.url + "/api/requests", params={"limit": 1000}, timeout=5).json()["items"]]


def test_two_logging_servers_on_one_index_list_and_show_the_same(two_instances):
    servers, proxies = two_instances
    ids = [send_chat(proxy.url, f"shared-{n}-{i}") for i in range(5) for n, proxy in enumerate(proxies)]
    for rid in ids:
        for server in servers:
            wait_row(server.url, rid, lambda row: row["state"] == "complete")
    wait_until(lambda: _listing(servers[0]) == _listing(servers[1]) and len(_listing(servers[0])) == 10,
               5, 0.05, "the same listing from both")
    assert {i for i, _, _ in _listing(servers[1])} == set(ids)
    for rid in ids:  # each exchange once, whichever server took it
        bodies = [requests.get(f"{s.url}/api/requests/{rid}/response", timeout=5).content for s in servers]
        assert bodies[0] == bodies[1] and bodies[0]
    found = requests.get(servers[1].url + "/api/requests", params={"q": "shared-0-3"}, timeout=5).json()
    assert [i["id"] for i in found["items"]] == [ids[6]]


def test_the_live_feed_of_one_server_shows_what_the_other_took_within_a_second(two_instances):
    servers, proxies = two_instances
    seen, ready = {}, threading.Event()

    def listen():
        with requests.get(servers[1].url + "/api/events", stream=True, timeout=10) as resp:
            for name, data, _ in sse_events(resp):
                ready.set()
                for item in (data.get("items") or []) if isinstance(data, dict) else []:
                    seen.setdefault(item["id"], time.monotonic())
                if box.get("rid") in seen:
                    return

    box = {}
    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert ready.wait(5), "the feed said nothing"
    sent = time.monotonic()
    box["rid"] = send_chat(proxies[0].url, "feed-crossing")  # taken by server 1
    wait_until(lambda: box["rid"] in seen, 5, 0.02, "the row in server 2's feed")
    assert seen[box["rid"]] - sent < 1.0


def test_a_reindex_into_postgresql_gives_the_listing_of_the_files(postgres_cluster, tmp_path, fake_upstream,
                                                                  run_cli):
    server = LogServer(tmp_path / "logs", tmp_path / "work", ["--index", postgres_cluster.new_database()]).start()
    proxy = start_proxy(tmp_path / "proxy", build_config(fake_upstream.url, server.url))
    try:
        ids = [send_chat(proxy.url, f"reindexed-{i}") for i in range(6)]
        for rid in ids:
            wait_row(server.url, rid, lambda row: row["state"] == "complete" and row["prompt_tokens"])
        # (a row above may be the one its file gives, the index's a moment later)
        before = wait_until(lambda: (lambda items: items if len(items) == 6 else None)(
            requests.get(server.url + "/api/requests", timeout=5).json()["items"]), 10, 0.05, "6 rows listed")
    finally:
        proxy.stop(timeout=5)
        server.stop(timeout=5)
    fresh = postgres_cluster.new_database()
    done = run_cli("orlogserver", "--reindex", "--log-dir", str(tmp_path / "logs"), "--index", fresh, timeout=60)
    assert done.returncode == 0 and "indexed 6 exchanges" in done.stdout, done.stdout + done.stderr
    again = LogServer(tmp_path / "logs", tmp_path / "work2", ["--index", fresh]).start()
    try:
        after = requests.get(again.url + "/api/requests", timeout=5).json()["items"]
        without_seq = lambda items: [{k: v for k, v in i.items() if k != "seq"} for i in items]  # noqa: E731
        assert without_seq(after) == without_seq(before) and len(after) == 6
        found = requests.get(again.url + "/api/requests", params={"q": "reindexed-4"}, timeout=5).json()
        assert [i["id"] for i in found["items"]] == [ids[4]]
    finally:
        again.stop(timeout=5)


def test_a_nul_in_a_value_or_a_text_is_stored_as_u_fffd_and_costs_no_other_row(postgres_cluster):
    from orproxy.logserver.store.pgindex import PgIndex
    from orproxy.logserver.web import listing, query
    index = PgIndex(postgres_cluster.new_database())
    try:
        index.upsert_rows([{"id": "a", "rev": 1, "started_at": 1.0, "path": "/ws\x00echo"},
                           {"id": "b", "rev": 1, "started_at": 2.0, "path": "/plain"}],
                          {"a": "binary\x00frame", "b": "plain words"})
        assert index.read(listing.get_row, "a")["path"] == "/ws\ufffdecho"
        assert index.read(listing.get_row, "b")["path"] == "/plain"
        found = index.read(listing.list_rows, query.parse_list_query({"q": ["binary frame"]}))
        assert [i["id"] for i in found["items"]] == ["a"]
    finally:
        index.close()
