"""Safe by default (CONTRACT.md, "Security"): every attack of issue 13, raw bytes on
sockets, and its fixed answer. The logging server answers only its own pages and hosts,
and its token when it has one; the proxy forwards nothing whose framing two parsers could
read differently, and closes that connection; keys in query strings are masked in the log.
"""
import json
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from servers import LogServer
from helpers import script, wait_until
from log_helpers import exchange_complete, host_port, send, split_head

ID = "0f0e0d0c-0b0a-4908-8706-050403020100"


def raw(url, data, timeout=5.0, read_all=True):
    """Send bytes; (the answer, whether the peer then closed the connection). Reads one
    whole answer (its Content-Length), then waits a moment for the close."""
    sock = socket.create_connection(host_port(url), timeout=timeout)
    try:
        try:
            sock.sendall(data)
        except OSError:
            pass  # refused before the rest was taken
        answer = b""
        while not _whole(answer):
            chunk = sock.recv(65536)
            if not chunk:
                return answer, True
            answer += chunk
        if not read_all:
            return answer, False
        sock.settimeout(1.0)
        try:
            more = sock.recv(65536)
        except socket.timeout:
            return answer, False
        except ConnectionResetError:
            return answer, True
        return answer + more, more == b""
    finally:
        sock.close()


def _whole(answer):
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return not head.startswith(b"HTTP/1.1 101")  # no length: a 303, or a stream (the caller's)


def status_of(answer):
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else None


def body_of(answer):
    return json.loads(answer.partition(b"\r\n\r\n")[2].decode())


# -- the logging server: Host, Origin, ingest, traversal ------------------------------------

def request(method, target, host, *headers, body=b""):
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", *headers]
    if body or method in ("PUT", "POST"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@pytest.mark.parametrize("host", ["evil.example.com", "evil.example.com:{port}", "127.0.0.1:1",
                                  "localhost.evil.example:{port}"])
def test_a_host_the_logging_server_does_not_answer_for_is_refused(logserver, host):
    """DNS rebinding: a page whose own name resolves to 127.0.0.1 would be same-origin."""
    answer, _ = raw(logserver.url, request("GET", "/api/requests", host.format(port=logserver.port)))
    assert status_of(answer) == 403 and "Host" in body_of(answer)["error"]["message"]


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "[::1]:{port}"])
def test_its_own_names_are_answered(logserver, host):
    answer, _ = raw(logserver.url, request("GET", "/api/health", host.format(port=logserver.port)))
    assert status_of(answer) == 200


def test_a_name_given_with_allowed_host_is_answered_on_any_port_as_behind_a_balancer(make_logserver):
    """A balancer or TLS front end listens on a port of its own and passes its Host on."""
    server = make_logserver("--allowed-host", "logs.team.example")
    for host in ("logs.team.example:8443", "LOGS.team.example", "logs.team.example:%d" % server.port):
        answer, _ = raw(server.url, request("GET", "/api/health", host, f"Origin: http://{host}"))
        assert status_of(answer) == 200, host
    for host in ("127.0.0.1:1", "localhost:8443", "evil.example:%d" % server.port, "team.example:8443",
                 "logs.team.example:x@evil.example"):
        answer, _ = raw(server.url, request("GET", "/api/health", host))
        assert status_of(answer) == 403, host
    answer, _ = raw(server.url, request("GET", "/api/health", "logs.team.example:8443",
                                        "Origin: http://evil.example"))
    assert status_of(answer) == 403
    # behind a TLS front end the page's origin is https: the front end says so
    tls = ("logs.team.example", "Origin: https://logs.team.example")
    assert status_of(raw(server.url, request("GET", "/api/health", *tls))[0]) == 403
    assert status_of(raw(server.url, request("GET", "/api/health", *tls, "X-Forwarded-Proto: https"))[0]) == 200
    assert status_of(raw(server.url, request("GET", "/api/health", *tls, "X-Forwarded-Proto: https, http"))[0]) == 200


def test_a_cross_site_websocket_to_the_live_feed_is_refused(logserver):
    """Browsers send Origin on a WebSocket upgrade but apply no same-origin rule to it."""
    upgrade = request("GET", "/api/live", f"127.0.0.1:{logserver.port}", "Origin: https://evil.example",
                      "Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13",
                      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==")
    answer, _ = raw(logserver.url, upgrade)
    assert status_of(answer) == 403 and b"101" not in answer.split(b"\r\n")[0]


@pytest.mark.parametrize("target", ["/api/requests", "/api/events", "/", "/api/requests/%s" % ID])
def test_another_origins_reads_are_refused(logserver, target):
    answer, _ = raw(logserver.url, request("GET", target, f"127.0.0.1:{logserver.port}",
                                           "Origin: https://evil.example"), read_all=False)
    assert status_of(answer) == 403


def test_cross_site_fetch_metadata_is_refused(logserver):
    answer, _ = raw(logserver.url, request("GET", "/api/requests", f"127.0.0.1:{logserver.port}",
                                           "Sec-Fetch-Site: cross-site"))
    assert status_of(answer) == 403


def test_its_own_origin_is_answered(logserver):
    host = f"127.0.0.1:{logserver.port}"
    answer, _ = raw(logserver.url, request("GET", "/api/health", host, f"Origin: http://{host}",
                                           "Sec-Fetch-Site: same-origin"))
    assert status_of(answer) == 200


@pytest.mark.parametrize("origin", ["http://127.0.0.1:{port}", "https://evil.example", "null"])
def test_an_ingest_put_with_any_origin_writes_nothing(logserver, origin):
    exchange_id = str(uuid.uuid4())
    host = f"127.0.0.1:{logserver.port}"
    for method, target in (("PUT", f"/{exchange_id}/request"), ("POST", "/ingest")):
        answer, _ = raw(logserver.url, request(method, target, host, "Origin: " + origin.format(port=logserver.port),
                                               body=b"GET / HTTP/1.1\r\n\r\n"))
        assert status_of(answer) == 403
    time.sleep(0.2)
    assert logserver.files(exchange_id) == []


def test_a_rebinding_page_can_neither_forge_nor_delete(logserver, proxy):
    rid = send(proxy.url, "GET", "/v1/echo")[3]
    logserver.wait_for_metadata(rid, predicate=exchange_complete)
    evil = f"evil.example.com:{logserver.port}"
    forged = str(uuid.uuid4())
    answer, _ = raw(logserver.url, request("PUT", f"/{forged}/request", evil, body=b"forged"))
    assert status_of(answer) == 403
    answer, _ = raw(logserver.url, request("DELETE", f"/api/requests/{rid}?force=true", evil))
    assert status_of(answer) == 403
    assert logserver.files(forged) == [] and logserver.file(rid, "metadata") is not None


@pytest.mark.parametrize("target", ["/..%2F..%2Fetc/request", "/%2e%2e%2f%2e%2e%2fetc/request",
                                    "/..%252F..%252Fetc/request"])
def test_an_encoded_traversal_is_a_bad_id_and_writes_nothing(logserver, tmp_path, target):
    answer, _ = raw(logserver.url, request("PUT", target, f"127.0.0.1:{logserver.port}", body=b"x"))
    assert status_of(answer) == 400 and "UUID" in body_of(answer)["error"]["message"]
    assert not any(p.name == "request.bin" or p.name.endswith("etc") for p in logserver.log_dir.parent.iterdir())


# -- the logging server's token -------------------------------------------------------------

@pytest.fixture
def token_server(tmp_path):
    server = LogServer(tmp_path / "logs", tmp_path, ["--token", "s3cret-token-123"]).start()
    yield server
    server.stop()


def test_with_a_token_every_request_needs_it(token_server):
    host = f"127.0.0.1:{token_server.port}"
    for target in ("/api/requests", "/", "/api/openapi.json"):
        answer, _ = raw(token_server.url, request("GET", target, host))
        assert status_of(answer) == 401
    answer, _ = raw(token_server.url, request("GET", "/api/requests", host, "Authorization: Bearer wrong-token-1"))
    assert status_of(answer) == 401
    answer, _ = raw(token_server.url, request("GET", "/api/requests", host, "Authorization: Bearer s3cret-token-123"))
    assert status_of(answer) == 200
    answer, _ = raw(token_server.url, request("PUT", f"/{ID}/request", host, body=b"x"))
    assert status_of(answer) == 401


def test_the_ui_takes_the_token_once_into_a_strict_cookie_and_off_the_address_bar(token_server):
    host = f"127.0.0.1:{token_server.port}"
    answer, _ = raw(token_server.url, request("GET", "/?token=s3cret-token-123&id=" + ID, host))
    head = answer.partition(b"\r\n\r\n")[0].decode()
    assert status_of(answer) == 303
    assert f"\r\nLocation: /?id={ID}\r\n" in head
    cookie = next(line for line in head.split("\r\n") if line.startswith("Set-Cookie: "))
    assert "orlogserver_token=s3cret-token-123" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    answer, _ = raw(token_server.url, request("GET", "/api/requests", host, "Cookie: orlogserver_token=s3cret-token-123"))
    assert status_of(answer) == 200
    answer, _ = raw(token_server.url, request("GET", "/?token=not-the-token", host))
    assert status_of(answer) == 401


def test_a_proxy_with_the_token_logs_to_it(make_proxy, token_server):
    p = make_proxy(logging={"server_url": token_server.url, "token": "s3cret-token-123"})
    rid = send(p.url, "GET", "/v1/echo")[3]
    token_server.wait_for_metadata(rid, predicate=exchange_complete)
    assert "s3cret-token-123" not in p.stdout_text() + p.stderr_text()


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_started_beyond_loopback_without_a_token_it_refuses_to_start(tmp_path, host):
    result = subprocess.run([script("orlogserver"), "--host", host, "--port", "0", "--log-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "--token" in result.stderr and "ORLOGSERVER_TOKEN" in result.stderr


# -- the proxy: framing it refuses, forwarding nothing ---------------------------------------

CORPUS = sorted((Path(__file__).parent / "hostile").glob("*.http"))  # the hostile heads, named by status


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_framing_two_parsers_could_read_differently_is_refused_and_nothing_forwarded(
        own_handler_proxy, fake_upstream, path):
    """Under orproxy's own server and its gunicorn worker (tests/test_hostile.py replays
    the same heads in pieces too)."""
    fake_upstream.reset_stats()
    answer, closed = raw(own_handler_proxy.url, path.read_bytes())
    assert status_of(answer) == int(path.name[:3]), answer[:300]
    error = body_of(answer)["error"]
    assert error["type"] == "proxy_error" and error["request_id"]
    assert closed, "the connection stays open after a refused head"
    time.sleep(0.1)
    assert fake_upstream.stats()["requests"] == 0


def test_a_head_past_the_size_or_count_limit_is_431(own_handler_proxy, fake_upstream):
    fake_upstream.reset_stats()
    many = b"".join(b"X-%d: y\r\n" % i for i in range(150))
    for data in (b"GET /v1/echo HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n",
                 b"GET /v1/echo HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 70000 + b"\r\n\r\n"):
        answer, closed = raw(own_handler_proxy.url, data)
        assert status_of(answer) == 431 and closed
    assert fake_upstream.stats()["requests"] == 0


def test_a_slow_head_is_408_and_its_connection_freed(make_proxy, fake_upstream):
    """A slowloris: the head dribbles in; after server.head_timeout it is answered and closed."""
    p = make_proxy(extra={"server": {"head_timeout": 1}})
    fake_upstream.reset_stats()
    sock = socket.create_connection(host_port(p.url), timeout=10)
    try:
        started = time.monotonic()
        sock.sendall(b"GET /v1/echo HTTP/1.1\r\n")
        for _ in range(4):
            time.sleep(0.4)
            try:
                sock.sendall(b"X-Slow: y\r\n")
            except OSError:
                break
        answer = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        assert status_of(answer) == 408 and 0.9 < time.monotonic() - started < 5
    finally:
        sock.close()
    assert fake_upstream.stats()["requests"] == 0


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(make_proxy):
    p = make_proxy(extra={"server": {"idle_timeout": 1}})
    sock = socket.create_connection(host_port(p.url), timeout=10)
    try:
        sock.sendall(b"GET /v1/echo HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert wait_until(lambda: sock.recv(65536) == b"", 5) and time.monotonic() - started < 4
    finally:
        sock.close()


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef",
    b"HTTP/1.1 200 OK\r\nX-A: one\rX-B: two\r\nContent-Length: 1\r\n\r\nz",
])
def test_conflicting_framing_from_an_upstream_is_a_502_never_relayed(make_proxy, answer):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    import threading

    def upstream():
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(answer)
        time.sleep(0.5)
        conn.close()
    threading.Thread(target=upstream, daemon=True).start()
    try:
        p = make_proxy(routes=[{"source": "/bad/", "destination": "http://127.0.0.1:%d/" % port, "name": "bad"}])
        status, _, body, _ = send(p.url, "GET", "/bad/x")
        assert status == 502 and "abc" not in json.loads(body)["error"]["message"]  # (not the random id)
    finally:
        listener.close()


# -- secrets ----------------------------------------------------------------------------------

def test_keys_in_query_strings_and_goog_headers_are_masked_in_the_log_not_upstream(proxy, logserver, fake_upstream):
    key = "AIzaSyD-0123456789abcdefghijKLMN"
    status, _, data, rid = send(proxy.url, "GET", "/v1/echo?alt=sse&key=%s&api_key=sk-abcdefghijklmnop" % key,
                                [("X-Goog-Api-Key", key)])
    assert status == 200
    echoed = json.loads(data)
    assert key in echoed["target"] and ["X-Goog-Api-Key", key] in echoed["headers"]  # upstream: as sent
    logserver.wait_for_metadata(rid, predicate=exchange_complete)
    logged = logserver.file(rid, "request").read_bytes()
    first, headers, _ = split_head(logged)
    assert first == "GET /v1/echo?alt=sse&key=****KLMN&api_key=****mnop HTTP/1.1"
    assert ("X-Goog-Api-Key", "****KLMN") in headers
    assert dict(headers)["X-Proxy-Path"].endswith("/v1/echo?alt=sse&key=****KLMN&api_key=****mnop")
    # The request file and the metadata (the index's path and upstream_url come from it);
    # the response body is the echo's, which quotes the request as the upstream got it.
    logged = logged + logserver.file(rid, "metadata").read_bytes()
    assert key.encode() not in logged and b"sk-abcdefghijklmnop" not in logged
