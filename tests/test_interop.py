"""The logging stream still works with the original Go program, both ways (CONTRACT.md:
its wire format must keep working with its logging server and its proxy), and an
exchange that stops arriving gets a final state. The Go ends are tests/go_peers.py."""
import http.client
import sys
from pathlib import Path
import uuid

import pytest

from api_helpers import ApiClient
from go_peers import go_proxy_put
from helpers import ServerProcess, free_port, wait_until
from log_helpers import send, split_head


@pytest.fixture
def go_logging_server(tmp_path):
    process = ServerProcess("go-logging-server", [sys.executable, str(Path(__file__).parent / "go_peers.py"), "--port", "0",
                                                  "--dir", str(tmp_path / "go")], tmp_path)
    process.url = process.start("listening")
    process.logs = tmp_path / "go" / "logs"
    yield process
    process.stop()


@pytest.fixture
def quick_logserver(make_logserver):
    """An orlogserver of its own that sweeps exchanges which stop arriving after 1 s."""
    return make_logserver("--stale-after", "1s")


def test_orproxy_logs_to_the_go_logging_server_with_plain_puts(make_proxy, go_logging_server):
    p = make_proxy(logging={"server_url": go_logging_server.url})
    body = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
    status, _, answer, rid = send(p.url, "POST", "/v1/chat/completions", [("Content-Type", "application/json")], body)
    status2, _, streamed, rid2 = send(p.url, "GET", "/v1/sse?events=4&interval_ms=30")
    assert status == status2 == 200

    def files(exchange_id):
        """Its two files, the request's first (each is named by the time its PUT came, and
        the two PUTs go at once: their names may sort either way)."""
        names = [f.name for f in go_logging_server.logs.iterdir() if exchange_id[:8] in f.name]
        return sorted(names, key=lambda name: name.endswith("_response.bin")) if len(names) == 2 else None
    for exchange_id, request_body, response_body in ((rid, body, answer), (rid2, b"", streamed)):
        request, response = wait_until(lambda: files(exchange_id), 10, message="both parts at the Go server")
        assert request.endswith("_request.bin") and response.endswith("_response.bin")
        logged_request = (go_logging_server.logs / request).read_bytes()
        assert logged_request.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n" if request_body
                                         else b"GET /v1/sse?events=4&interval_ms=30 HTTP/1.1\r\n")
        assert split_head(logged_request)[2] == request_body
        assert split_head((go_logging_server.logs / response).read_bytes())[2] == response_body
    assert not [f for f in go_logging_server.logs.iterdir() if "metadata" in f.name]  # it has no place for it
    assert "takes no batches" in p.stderr_text() and "Traceback" not in p.stderr_text()


def test_a_go_logging_server_that_was_down_when_the_proxy_started_breaks_no_stream(make_proxy, tmp_path):
    """The proxy spools while the logging server is down; then the Go server answers (405):
    a stream that had spilled to the spool goes on intact, what comes next goes as plain
    PUTs, and the spooled bytes are said to wait for an orlogserver."""
    port = free_port()
    p = make_proxy(logging={"server_url": f"http://127.0.0.1:{port}"})
    host, proxy_port = p.url.split("//", 1)[1].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(proxy_port), timeout=20)
    go = ServerProcess("go-logging-server", [sys.executable, str(Path(__file__).parent / "go_peers.py"),
                                             "--port", str(port), "--dir", str(tmp_path / "go")], tmp_path)
    try:
        conn.request("GET", "/v1/sse?events=30&interval_ms=100")
        response = conn.getresponse()
        received = response.read1(65536)
        wait_until(lambda: "unreachable" in p.stderr_text(), 10, message="the proxy finding it down")
        go.start("listening")
        received += response.read()
        assert response.status == 200 and received.count(b"\n\n") == 30
        rid = send(p.url, "GET", "/v1/echo")[3]
        wait_until(lambda: [f for f in (tmp_path / "go" / "logs").iterdir() if rid[:8] in f.name], 10,
                   message="the next exchange at the Go server")
    finally:
        conn.close()
        go.stop()
    assert "wait there for an orlogserver" in p.stderr_text() and "Traceback" not in p.stderr_text()


def test_the_go_proxys_plain_puts_are_logged_and_listed(quick_logserver):
    exchange_id = str(uuid.uuid4())
    request = [("Content-Type", "application/json"), ("Authorization", "Bearer sk-...")]
    body = b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "from Go"}]}'
    answer = b'{"object": "chat.completion", "model": "gpt-4o", "choices": []}'
    assert go_proxy_put(quick_logserver.url, exchange_id, "request", request, body) == 201
    assert go_proxy_put(quick_logserver.url, exchange_id, "response", [("Content-Type", "application/json")],
                        answer) == 201
    api = ApiClient(quick_logserver.url)
    _, _, raw = api.raw("/api/requests/%s/request" % exchange_id)
    assert raw == b"Content-Type: application/json\r\nAuthorization: Bearer sk-...\r\n\r\n" + body
    # No metadata ever comes from it: once nothing more arrives, the exchange is complete.
    row = api.wait_row(exchange_id, lambda r: r["state"] == "complete", timeout=15)
    assert row["incomplete_reason"] is None and "swept" in row["metadata"]


def test_an_exchange_that_stops_arriving_is_marked_incomplete_with_the_reason(quick_logserver):
    exchange_id = str(uuid.uuid4())
    assert go_proxy_put(quick_logserver.url, exchange_id, "request", [("Host", "x")], b"{}") == 201
    api = ApiClient(quick_logserver.url)
    row = api.wait_row(exchange_id, lambda r: r["state"] != "in_flight", timeout=15)
    assert row["state"] == "incomplete" and "nothing arrived" in row["incomplete_reason"]
    assert api.ok("/api/requests", state="incomplete")["items"][0]["id"] == exchange_id
