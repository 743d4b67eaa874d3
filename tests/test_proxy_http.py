"""End to end through a real orproxy: routing, headers, small bodies and the proxy's errors.

Every test talks plain HTTP (http.client or a raw socket, which add nothing of their own
but Host) to a proxy process in front of the fake upstream; the fake's ``/echo`` reports
the request exactly as it arrived on the wire (target, header lines, framing, body hash).
"""
import hashlib
import http.client
import json
import socket
import time
import uuid

import pytest

from helpers import free_port, http_request, send_exactly

# -- local helpers -----------------------------------------------------------------------


def _split(url):
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    return host, int(port)


def send(url, method, target, headers=(), body=None, timeout=10.0):
    """One request with exactly these header lines (a list of pairs, repeats allowed);
    http.client adds only Host (first). Returns (status, headers list, body)."""
    return send_exactly(*_split(url), method, target, headers, body, timeout)


def echo(url, target, method="GET", headers=(), body=None):
    status, resp_headers, data = send(url, method, target, headers, body)
    assert status == 200, (status, data[:500])
    return json.loads(data), resp_headers


def raw_exchange(url, data, half_close=False, timeout=10.0):
    """Send raw bytes, optionally half-close, and parse one response.
    Returns (status, headers list, body)."""
    sock = socket.create_connection(_split(url), timeout=timeout)
    try:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        resp = http.client.HTTPResponse(sock, method="POST")
        resp.begin()
        return resp.status, resp.getheaders(), resp.read()
    finally:
        sock.close()


def header(headers, name):
    """All values of a header (case-insensitive) in a list of pairs."""
    return [v for n, v in headers if n.lower() == name.lower()]


def one_header(headers, name):
    values = header(headers, name)
    assert len(values) == 1, "%s: %r in %r" % (name, values, headers)
    return values[0]


def upstream_hostport(fake_upstream):
    return fake_upstream.url.split("//", 1)[1]


def assert_proxy_error(status, headers, body, expected_status, code):
    """The contract's error shape: OpenAI-style JSON, type proxy_error, the code, and the
    request id both in the body and as X-Request-Id (a UUID)."""
    assert status == expected_status, (status, body[:500])
    request_id = one_header(headers, "X-Request-Id")
    uuid.UUID(request_id)
    assert one_header(headers, "Content-Type").startswith("application/json")
    doc = json.loads(body)
    error = doc["error"]
    assert error["type"] == "proxy_error"
    assert error["code"] == code
    assert error["request_id"] == request_id
    assert isinstance(error["message"], str) and error["message"]
    return error


# -- routing -----------------------------------------------------------------------------


def test_destination_without_path_keeps_the_whole_path(proxy):
    doc, _ = echo(proxy.url, "/api/v1/echo/some/path")
    assert doc["target"] == "/api/v1/echo/some/path"
    doc, _ = echo(proxy.url, "/v1/echo")
    assert doc["target"] == "/v1/echo"


def test_destination_with_path_replaces_the_source_prefix(proxy):
    doc, _ = echo(proxy.url, "/openrouter/echo/some/path")
    assert doc["target"] == "/api/v1/echo/some/path"


def test_longest_prefix_wins_and_sources_match_whole_segments(make_proxy, fake_upstream):
    up = fake_upstream.url
    # The shorter prefix is listed first: a first-match router would pick it.
    p = make_proxy(routes=[
        {"source": "/a/", "destination": up + "/short/echo/", "name": "short"},
        {"source": "/a/b/", "destination": up + "/long/echo/", "name": "long"},
    ])
    assert echo(p.url, "/a/b/x?q=1")[0]["target"] == "/long/echo/x?q=1"
    assert echo(p.url, "/a/b/c/d")[0]["target"] == "/long/echo/c/d"
    assert echo(p.url, "/a/b")[0]["target"].startswith("/long/echo")     # exact source
    assert echo(p.url, "/a/bx/y")[0]["target"] == "/short/echo/bx/y"     # not /a/b/
    assert echo(p.url, "/a/x")[0]["target"] == "/short/echo/x"
    status, headers, body = send(p.url, "GET", "/ax")                    # not /a/
    assert_proxy_error(status, headers, body, 404, "no_route")


@pytest.mark.parametrize("target, upstream_target", [
    ("/api/v1/echo/a%2fb%2Fc/%7e%7E/%20x?x=%2f&y=a+b&z=%E2%82%AC&&w&q=%2F",
     "/api/v1/echo/a%2fb%2Fc/%7e%7E/%20x?x=%2f&y=a+b&z=%E2%82%AC&&w&q=%2F"),
    ("/openrouter/echo/models%2Fgpt-4o%2fmini?key=a%3Db&key=c",
     "/api/v1/echo/models%2Fgpt-4o%2fmini?key=a%3Db&key=c"),
    ("/v1/echo?", "/v1/echo?"),
    ("/v1/echo/..%2f..%2fx;p=1?a=/b/../c", "/v1/echo/..%2f..%2fx;p=1?a=/b/../c"),
])
def test_path_and_query_are_kept_byte_for_byte(any_proxy, target, upstream_target):
    doc, _ = echo(any_proxy.url, target)
    assert doc["target"] == upstream_target


# -- request headers ---------------------------------------------------------------------

SENT_HEADERS = [
    ("Content-Type", "application/json"),
    ("Authorization", "Bearer sk-or-v1-0123456789abcdef0123abcd"),
    ("X-Api-Key", "xk-0123456789qrst"),
    ("x-lower-case", "value  with  inner  spaces"),
    ("X-MiXeD-CaSe", "Mixed"),
    ("HTTP-Referer", "https://example.test/app"),
    ("X-Title", "orproxy tests"),
    ("Accept", "text/event-stream"),
    ("Accept-Encoding", "gzip, br"),
    ("User-Agent", "my-own-client/1.0"),
    ("Cookie", "session=abcdef0123456789"),
]


def test_request_headers_reach_the_upstream_exactly_as_sent(proxy, fake_upstream):
    body = b'{"model":"x"}'
    sent = SENT_HEADERS + [("Content-Length", str(len(body)))]
    doc, _ = echo(proxy.url, "/api/v1/echo", "POST", sent, body)
    # Names in their case, values as sent, in order; Host first (http.client sends it
    # first) and rewritten to the upstream's.
    assert doc["headers"] == [["Host", upstream_hostport(fake_upstream)]] + [list(h) for h in sent]


def test_no_header_of_the_proxys_own_is_added(any_proxy, fake_upstream):
    doc, _ = echo(any_proxy.url, "/api/v1/echo", "GET", [("X-Only", "1")])
    names = sorted(n.lower() for n, _ in doc["headers"])
    assert names == ["host", "x-only"], doc["headers"]
    for added in ("user-agent", "accept", "accept-encoding", "x-forwarded-for",
                  "x-forwarded-proto", "x-forwarded-host", "forwarded", "via", "x-real-ip"):
        assert added not in names


def test_headers_as_sent_under_both_servers(any_proxy, fake_upstream):
    """gunicorn loses header-name case (WSGI HTTP_* keys): compare names case-insensitively."""
    body = b"{}"
    sent = SENT_HEADERS + [("Content-Length", str(len(body)))]
    doc, _ = echo(any_proxy.url, "/v1/echo", "POST", sent, body)
    got = sorted((n.lower(), v) for n, v in doc["headers"])
    want = sorted([("host", upstream_hostport(fake_upstream))] + [(n.lower(), v) for n, v in sent])
    assert got == want


def test_host_is_rewritten_to_the_upstream(any_proxy, fake_upstream):
    doc, _ = echo(any_proxy.url, "/openrouter/echo", "GET", [])
    assert header([tuple(h) for h in doc["headers"]], "Host") == [upstream_hostport(fake_upstream)]


def test_authorization_is_forwarded_unmasked(any_proxy):
    secret = "Bearer sk-or-v1-ffffeeeeddddccccbbbbaaaa99998888"
    doc, _ = echo(any_proxy.url, "/api/v1/echo", "GET",
                  [("Authorization", secret), ("X-Api-Key", "sk-ant-0123456789wxyz"),
                   ("Api-Key", "short")])
    headers = [tuple(h) for h in doc["headers"]]
    assert header(headers, "Authorization") == [secret]
    assert header(headers, "X-Api-Key") == ["sk-ant-0123456789wxyz"]
    assert header(headers, "Api-Key") == ["short"]


def test_hop_by_hop_request_headers_are_removed(any_proxy):
    sent = [
        ("Connection", "keep-alive, X-Hop-One, x-hop-two"),
        ("X-Hop-One", "1"),
        ("X-Hop-Two", "2"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Trailer", "X-Checksum"),
        ("Proxy-Authorization", "Basic dXNlcjpwYXNz"),
        ("Proxy-Connection", "keep-alive"),
        ("Upgrade", "h2c"),
        ("X-End-To-End", "kept"),
    ]
    doc, _ = echo(any_proxy.url, "/api/v1/echo", "GET", sent)
    names = {n.lower() for n, _ in doc["headers"]}
    assert names == {"host", "x-end-to-end"}, doc["headers"]


def test_hop_by_hop_response_headers_are_removed(any_proxy):
    status, headers, body = send(any_proxy.url, "GET", "/api/v1/headers-hop")
    assert status == 200 and json.loads(body) == {"hop": True}
    assert header(headers, "X-End-To-End") == ["kept"]
    assert header(headers, "X-Hop") == []             # named by the upstream's Connection
    assert header(headers, "Keep-Alive") == []
    for value in header(headers, "Connection"):       # the proxy's own, if any
        assert "x-hop" not in value.lower()


def test_one_transfer_encoding_on_a_streamed_response(any_proxy):
    """The upstream's own Transfer-Encoding must not be passed through next to the
    server's (httpx, in the openai SDK, rejects a response with two)."""
    host, port = _split(any_proxy.url)
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"GET /api/v1/sse?events=2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    names = [line.split(":", 1)[0].strip().lower() for line in head]
    assert names.count("transfer-encoding") <= 1, head
    assert "content-length" not in names or "transfer-encoding" not in names, head


def test_two_set_cookie_headers_are_kept(any_proxy):
    status, headers, _ = send(any_proxy.url, "GET", "/api/v1/cookies")
    assert status == 200
    assert header(headers, "Set-Cookie") == ["session=abcdef0123456789; Path=/; HttpOnly",
                                             "theme=dark; Path=/"]


# -- X-Request-Id ------------------------------------------------------------------------


def test_every_response_carries_a_fresh_uuid_request_id(make_proxy, fake_upstream):
    p = make_proxy(routes=[
        {"source": "/v1/", "destination": fake_upstream.url + "/", "name": "fake"},
        {"source": "/dead/", "destination": "http://127.0.0.1:%d/" % free_port(), "name": "dead"},
    ])
    ids = []
    for method, target, expected in [
        ("GET", "/v1/echo", 200),
        ("POST", "/v1/chat/completions", 200),
        ("GET", "/v1/status/500", 500),           # the upstream's error, passed through
        ("GET", "/v1/status/204", 204),
        ("GET", "/nowhere", 404),                 # no_route
        ("GET", "/dead/x", 502),                  # upstream_unreachable
    ]:
        body = b"{}" if method == "POST" else None
        headers = [("Content-Length", "2")] if body else []
        status, resp_headers, _ = send(p.url, method, target, headers, body)
        assert status == expected, (target, status)
        value = one_header(resp_headers, "X-Request-Id")
        assert uuid.UUID(value).version == 4 and str(uuid.UUID(value)) == value, value
        ids.append(value)
    assert len(set(ids)) == len(ids)


def test_upstream_error_statuses_pass_through_unchanged(any_proxy, fake_upstream):
    direct = http_request("GET", fake_upstream.url + "/v1/status/503")
    status, headers, body = send(any_proxy.url, "GET", "/v1/status/503")
    assert status == 503 == direct[0]
    assert body == direct[2]
    assert one_header(headers, "Content-Type") == "application/json"
    uuid.UUID(one_header(headers, "X-Request-Id"))


# -- small bodies, keep-alive, encodings -------------------------------------------------


def test_keep_alive_connection_carries_several_exchanges(any_proxy):
    host, port = _split(any_proxy.url)
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        for i in range(5):
            body = (b"x%d" % i) * (1000 * i + 1)
            conn.request("POST", "/v1/echo?i=%d" % i, body=body,
                         headers={"Content-Type": "text/plain"})
            resp = conn.getresponse()
            doc = json.loads(resp.read())
            assert doc["target"] == "/v1/echo?i=%d" % i
            assert doc["body_sha256"] == hashlib.sha256(body).hexdigest()
            assert doc["framing"] == "length" and doc["content_length"] == str(len(body))
            conn.request("GET", "/v1/bytes?n=%d" % (5000 + i))
            resp = conn.getresponse()
            assert len(resp.read()) == 5000 + i
    finally:
        conn.close()


def test_empty_post_goes_upstream_with_content_length_zero(any_proxy):
    doc, _ = echo(any_proxy.url, "/v1/echo", "POST", [("Content-Length", "0")], b"")
    assert doc["method"] == "POST"
    assert doc["body_length"] == 0
    assert header([tuple(h) for h in doc["headers"]], "Content-Length") == ["0"]
    assert header([tuple(h) for h in doc["headers"]], "Transfer-Encoding") == []


@pytest.mark.parametrize("kind", ["gzip", "br"])
def test_content_encoding_passes_through_undecoded(any_proxy, fake_upstream, kind):
    direct_status, direct_headers, direct_body = http_request(
        "GET", fake_upstream.url + "/v1/" + kind, headers={"Accept-Encoding": kind})
    status, headers, body = send(any_proxy.url, "GET", "/v1/" + kind,
                                 [("Accept-Encoding", kind)])
    assert status == direct_status == 200
    assert one_header(headers, "Content-Encoding") == kind
    assert body == direct_body                          # the compressed bytes, untouched
    assert one_header(headers, "Content-Length") == one_header(direct_headers, "Content-Length")
    if kind == "gzip":
        import gzip
        assert json.loads(gzip.decompress(body))["compressed"] is True
    else:
        import brotli
        assert json.loads(brotli.decompress(body))["compressed"] is True


# -- errors made by the proxy ------------------------------------------------------------


def test_no_route_is_a_404_json_error(any_proxy):
    status, headers, body = send(any_proxy.url, "GET", "/not/routed?x=1")
    error = assert_proxy_error(status, headers, body, 404, "no_route")
    assert "/not/routed" in error["message"]
    status, headers, body = send(any_proxy.url, "GET", "/api/v1x/echo")   # not /api/v1/
    assert_proxy_error(status, headers, body, 404, "no_route")


def test_unreachable_upstream_is_a_502_json_error(make_proxy):
    closed_port = free_port()
    p = make_proxy(routes=[{"source": "/dead/", "name": "dead",
                            "destination": "http://127.0.0.1:%d/" % closed_port}])
    status, headers, body = send(p.url, "POST", "/dead/v1/chat/completions",
                                 [("Content-Length", "2")], b"{}")
    assert_proxy_error(status, headers, body, 502, "upstream_unreachable")
    status, headers, body = send(p.url, "GET", "/dead/v1/models")
    assert_proxy_error(status, headers, body, 502, "upstream_unreachable")


def test_silent_upstream_is_a_504_json_error_after_read_timeout(make_proxy, fake_upstream):
    p = make_proxy(routes=[{"source": "/slowroute/", "destination": fake_upstream.url + "/",
                            "name": "slow", "read_timeout": 0.5}])
    started = time.monotonic()
    status, headers, body = send(p.url, "GET", "/slowroute/slow?delay_ms=3000")
    elapsed = time.monotonic() - started
    assert_proxy_error(status, headers, body, 504, "upstream_timeout")
    assert elapsed < 2.5, "answered after %.2fs: the 0.5 s read timeout was not applied" % elapsed


def test_upstream_read_timeout_from_the_upstream_section(make_proxy, fake_upstream):
    p = make_proxy(extra={"upstream": {"read_timeout": 0.5}})
    status, headers, body = send(p.url, "GET", "/v1/slow?delay_ms=3000")
    assert_proxy_error(status, headers, body, 504, "upstream_timeout")
    # A quick upstream is unaffected by it.
    assert send(p.url, "GET", "/v1/slow?delay_ms=50")[0] == 200


@pytest.mark.parametrize("length", ["abc", "-5", "1x"])
def test_invalid_content_length_is_a_400_json_error(own_handler_proxy, length):
    # Not under gunicorn -k gevent: its parser answers before the app runs.
    request = ("POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: %s\r\n"
               "Connection: close\r\n\r\n{}" % length).encode()
    status, headers, body = raw_exchange(own_handler_proxy.url, request)
    assert_proxy_error(status, headers, body, 400, "bad_request")


def test_body_shorter_than_content_length_is_a_400_json_error(any_proxy):
    request = (b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
               b"Content-Type: application/json\r\n\r\n" + b"{" * 40)
    status, headers, body = raw_exchange(any_proxy.url, request, half_close=True)
    assert_proxy_error(status, headers, body, 400, "bad_request")


def test_orproxy_worker_loads_orproxy_only_after_gunicorn_patched_the_stdlib(make_proxy):
    """gunicorn imports the worker class in its master, before the worker monkey-patches:
    had orproxy.worker imported requests (and with it ssl) then, gevent would warn that
    ssl was patched too late, a setting in which it documents RecursionErrors."""
    p = make_proxy(gunicorn="orproxy.worker.GeventWorker", workers=1)
    assert send(p.url, "GET", "/v1/models")[0] == 200
    assert "orproxy.worker.GeventWorker" in p.stderr_text()  # gunicorn names its worker
    assert "MonkeyPatchWarning" not in p.stderr_text()
