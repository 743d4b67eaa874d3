"""Several logging servers behind one balancer (issue 15; README, "Scaling out"): two
orlogserver processes behind nginx, and a proxy logging through nginx, with either storage:
one log dir and one PostgreSQL index ("shared-dir"), or bodies in an object store (moto's
S3) and the index in PostgreSQL, each server with a local dir of its own ("s3"). Real processes throughout: nginx, PostgreSQL, orproxy, orlogserver,
the fake upstream, and Chromium for the UI.

Without nginx these tests are skipped, unless ORPROXY_REQUIRE_NGINX=1 (CI) makes that a
failure; without PostgreSQL likewise (ORPROXY_REQUIRE_POSTGRES=1).
"""
import http.client
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from servers import LogServer, build_config, start_proxy
from helpers import wait_until
from live_helpers import StreamingChat, send_chat, sse_events, wait_row
from log_helpers import exchange, host_port, logged_once
from test_ui_browser import _expect, _wait_live, browser, row_of  # noqa: F401 (fixtures)


def test_the_readmes_nginx_configuration_is_the_one_the_tests_run():
    from orproxy.testing.balancer import SITE
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = readme.split("```nginx\n", 1)[1].split("```", 1)[0]
    for line in SITE.format(servers="", listen="").splitlines():
        if line.strip() and "listen" not in line:
            assert line.strip() in block, line


@pytest.fixture(params=["shared-dir", "s3"])
def storage(request):
    """The servers' arguments and log dirs: one shared dir, or an object store and dirs of their own."""
    if request.param == "shared-dir":
        return [], lambda tmp_path, n: tmp_path / "logs"
    bucket = request.getfixturevalue("s3_server").new_bucket()
    return ["--store", bucket], lambda tmp_path, n: tmp_path / f"local{n}"


@contextmanager
def _behind_nginx(postgres_cluster, tmp_path, fake_upstream, backup, storage):
    from orproxy.testing.balancer import Balancer
    url = postgres_cluster.new_database()
    args, log_dir = storage
    servers = [LogServer(log_dir(tmp_path, n), tmp_path / f"server{n}",
                         ["--index", url, "--allowed-host", "127.0.0.1", *args]).start() for n in (1, 2)]
    first, second = (s.port for s in servers)
    try:
        with Balancer.start([first] if backup else [first, second], [second] if backup else []) as balancer:
            proxy = start_proxy(tmp_path / "proxy", build_config(fake_upstream.url, balancer.url))
            try:
                yield servers, balancer, proxy
            finally:
                proxy.stop(timeout=5)
    finally:
        for server in servers:
            server.stop(timeout=5)


@pytest.fixture
def balanced(nginx, postgres_cluster, tmp_path, fake_upstream, storage):
    """Two logging servers on one storage and one new database, behind nginx (round
    robin), and a proxy logging through it: (servers, balancer, proxy)."""
    with _behind_nginx(postgres_cluster, tmp_path, fake_upstream, False, storage) as parts:
        yield parts


@pytest.fixture
def primary_and_backup(nginx, postgres_cluster, tmp_path, fake_upstream, storage):
    """The same, but nginx sends everything to the first server while it is up, and to
    the second (its `backup`) only while the first is down."""
    with _behind_nginx(postgres_cluster, tmp_path, fake_upstream, True, storage) as parts:
        yield parts


def _listing(server):
    resp = requests.get(server.url + "/api/requests", params={"limit": 1000}, timeout=5)
    return [(i["id"], i["state"], i["seq"], i["response_bytes"]) for i in resp.json()["items"]]


def _ingest_backends(balancer):
    return {backend for backend, method, path, status in balancer.routed() if path == "/ingest"}


def test_behind_a_balancer_every_exchange_is_logged_once_byte_exact_and_listed_alike(balanced):
    servers, balancer, proxy = balanced
    sent = [exchange(proxy.url, i) for i in range(24)]  # JSON 20 KB up, 300 KB down, SSE
    for rid, request_body, response_body in sent:
        logged_once(servers[0], rid, request_body, response_body)  # (one storage: either server's view)
    ids = {rid for rid, _, _ in sent}
    wait_until(lambda: {row[0] for row in _listing(servers[0])} == ids
               and all(row[1] == "complete" for row in _listing(servers[0]))
               and _listing(servers[0]) == _listing(servers[1]), 10, 0.1, "the same whole listing from both")
    for rid, _, response_body in sent[:6]:
        answers = [requests.get(f"{s.url}/api/requests/{rid}/response", timeout=5) for s in servers]
        assert answers[0].content == answers[1].content and len(answers[0].content) >= len(response_body)
    assert _ingest_backends(balancer) == {f"127.0.0.1:{s.port}" for s in servers}, "both took part of the log"
    assert not [r for r in balancer.routed() if r[2] == "/ingest" and not r[3].startswith("2")], "none failed"


def test_the_balancers_502_while_the_servers_are_down_means_down_not_a_server_without_batches(balanced):
    """nginx answers 502 for servers that are down. The proxy must keep its log in the spool
    and send it again, not take nginx for the Go program's server (405) and fall back to
    plain PUTs, which would leave out the metadata and the spool."""
    servers, balancer, proxy = balanced
    for server in servers:
        server.stop(timeout=5)
    sent = [exchange(proxy.url, i) for i in range(6)]
    wait_until(lambda: any(r[2] == "/ingest" and r[3] == "502" for r in balancer.routed()), 5, 0.05,
               "the proxy meeting nginx's 502")
    for server in servers:
        server.start()
    for rid, request_body, response_body in sent:
        logged_once(servers[0], rid, request_body, response_body)
    assert "HTTP 502" in proxy.stderr_text() and "takes no batches" not in proxy.stderr_text()


def _tail(url, rid, into):
    """Read an exchange's tail to its end: (when each body event came, its text)."""
    with requests.get(f"{url}/api/requests/{rid}/tail", stream=True, timeout=20) as resp:
        for name, data, _ in sse_events(resp):
            if name == "body":
                into.append((time.monotonic(), data["text"]))
            if name == "end":
                return


def test_the_tail_of_an_in_flight_stream_is_served_by_either_server(balanced):
    servers, _, proxy = balanced
    chat = StreamingChat(proxy.url, "acme/tail-across", events=40, interval_ms=100).start()
    wait_row(servers[1].url, chat.id)
    tails = [[], []]
    readers = [threading.Thread(target=_tail, args=(s.url, chat.id, t), daemon=True) for s, t in zip(servers, tails)]
    for reader in readers:
        reader.start()
    text = chat.wait().text
    for reader, tail in zip(readers, tails):
        reader.join(20)
        assert not reader.is_alive(), "the tail never ended"
        assert "".join(piece for _, piece in tail) == text
        assert tail[-1][0] - tail[0][0] > 0.8, "the tail must arrive as it streams, not at the end"


def test_a_server_killed_mid_stream_loses_nothing_the_other_takes_over(primary_and_backup):
    servers, balancer, proxy = primary_and_backup
    host, port = host_port(proxy.url)
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("GET", "/v1/sse?events=30&interval_ms=100")
        response = conn.getresponse()
        rid = response.getheader("X-Request-Id")
        received = response.read1(65536)
        servers[0].wait_for_file(rid, "response", min_size=200)  # the first server has part of it
        time.sleep(0.5)  # and goes on taking it: the kill may come mid-batch or between two
        servers[0].kill()
        received += response.read()
    finally:
        conn.close()
    assert received.count(b"\n\n") == 30
    logged_once(servers[1], rid, b"", received)
    row = wait_row(servers[1].url, rid, lambda r: r["state"] == "complete")
    assert row["response_bytes"] == len(received)
    assert _ingest_backends(balancer) == {f"127.0.0.1:{s.port}" for s in servers}, "the backup took over"


def test_a_browser_on_one_server_shows_within_a_second_what_the_other_took(browser, primary_and_backup):  # noqa: F811
    servers, balancer, proxy = primary_and_backup
    context = browser.new_context()
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(servers[1].url + "/")
        _wait_live(page)
        rid = send_chat(proxy.url, "acme/across-servers")
        answered = time.monotonic()  # the exchange is over: the proxy logs it now
        _expect()(row_of(page, rid)).to_be_visible(timeout=5000)
        seen = time.monotonic() - answered
    finally:
        context.close()
    assert seen < 1.0, seen
    assert _ingest_backends(balancer) == {f"127.0.0.1:{servers[0].port}"}, "taken by the other server"
    assert not errors, errors
