"""What orproxy logs: the console line (and logging.file), and what lands on the logging
server (request/response .bin files, metadata), with secrets masked. A logging server that
is down, killed, stalled or restarted: tests/test_logging_outages.py.
"""
import datetime
import hashlib
import http.client
import json
import re
import socket
import time
import uuid


from helpers import free_port, pattern_bytes, wait_until
from log_helpers import host_port, logged, send, split_head, values

BIN_NAME_RE = re.compile(
    r"^(\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}\.\d{3})_([0-9a-f]{8})_(request|response)\.bin$")
META_NAME_RE = re.compile(r"^(\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}\.\d{3})_([0-9a-f]{8})_metadata\.json$")
CONSOLE_RE = re.compile(
    r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}) \[([0-9a-f]{8})\] ([A-Z]+) (\S+) -> (\S+) \[([^\]]+)\]$")


# -- local helpers -----------------------------------------------------------------------


def assert_never_logged(logserver, proxy_url, request_id):
    """Nothing for ``request_id`` reaches the logging server: checked after a later,
    logged exchange of the same proxy has been completely written."""
    status, _, _, later = send(proxy_url, "GET", "/v1/echo?marker=later")
    assert status == 200
    logged(logserver, later)
    time.sleep(0.3)
    assert logserver.files(request_id) == []


# -- the logged request and response -----------------------------------------------------


def test_request_log_is_the_request_as_sent_upstream(proxy, logserver, fake_upstream):
    body = b'{"model":"fake/model-a","messages":[{"role":"user","content":"hi"}]}'
    headers = [("Content-Type", "application/json"), ("X-Title", "orproxy tests"),
               ("Content-Length", str(len(body)))]
    status, _, _, rid = send(proxy.url, "POST", "/api/v1/echo?x=%2F1&y", headers, body)
    assert status == 200
    request, _, _ = logged(logserver, rid)
    expected = ("POST /api/v1/echo?x=%%2F1&y HTTP/1.1\r\n"
                "Host: %s\r\n"
                "Content-Type: application/json\r\n"
                "X-Title: orproxy tests\r\n"
                "Content-Length: %d\r\n"
                "X-Proxy-Path: %s/api/v1/echo?x=%%2F1&y\r\n"
                "\r\n" % (fake_upstream.url.split("//")[1], len(body), proxy.url)).encode() + body
    assert request == expected


def test_request_log_of_a_prefixed_route_has_the_upstream_target(proxy, logserver):
    status, _, _, rid = send(proxy.url, "GET", "/openrouter/echo/models%2Fx?a=b")
    assert status == 200
    request, _, _ = logged(logserver, rid)
    line, headers, body = split_head(request)
    assert line == "GET /api/v1/echo/models%2Fx?a=b HTTP/1.1"
    assert values(headers, "X-Proxy-Path") == [proxy.url + "/openrouter/echo/models%2Fx?a=b"]
    assert body == b""


def test_response_log_is_status_line_headers_and_the_body_the_client_got(proxy, logserver):
    status, client_headers, client_body, rid = send(
        proxy.url, "POST", "/v1/echo", [("Content-Type", "text/plain")], b"hello")
    assert status == 200
    _, response, _ = logged(logserver, rid)
    line, headers, body = split_head(response)
    assert line == "HTTP/1.1 200 OK"
    assert values(headers, "Content-Type") == ["application/json"]
    assert values(headers, "Content-Length") == [str(len(client_body))]
    assert body == client_body


def test_response_log_of_a_chunked_stream_is_de_chunked(proxy, logserver):
    status, _, client_body, rid = send(proxy.url, "GET", "/v1/sse?events=4&interval_ms=20")
    assert status == 200 and client_body.count(b"\n\n") == 4
    _, response, _ = logged(logserver, rid)
    line, headers, body = split_head(response)
    assert line == "HTTP/1.1 200 OK"
    assert values(headers, "Content-Type") == ["text/event-stream"]
    assert body == client_body                      # no chunk-size lines in it

    n = 1024 * 1024 + 17
    status, _, client_body, rid = send(proxy.url, "GET", "/v1/bytes?n=%d&chunked=1&block=7000" % n)
    assert status == 200 and client_body == pattern_bytes(n)
    _, response, _ = logged(logserver, rid)
    assert split_head(response)[2] == client_body


def test_response_log_keeps_the_content_encoding(proxy, logserver):
    status, headers, client_body, rid = send(proxy.url, "GET", "/v1/gzip",
                                             [("Accept-Encoding", "gzip")])
    assert status == 200 and client_body[:2] == b"\x1f\x8b"
    _, response, _ = logged(logserver, rid)
    _, logged_headers, body = split_head(response)
    assert values(logged_headers, "Content-Encoding") == ["gzip"]
    assert body == client_body                      # still gzip, not decoded


def test_request_body_is_logged_byte_exact(proxy, logserver):
    body = pattern_bytes(300000, offset=11)
    status, _, data, rid = send(proxy.url, "POST", "/v1/sink", [], body)
    assert status == 200 and json.loads(data)["sha256"] == hashlib.sha256(body).hexdigest()
    request, _, meta = logged(logserver, rid)
    assert split_head(request)[2] == body


def test_response_is_logged_while_it_streams(proxy, logserver):
    host, port = host_port(proxy.url)
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", "/v1/sse?events=8&interval_ms=250")
        resp = conn.getresponse()
        rid = resp.getheader("X-Request-Id")
        received = resp.read1(65536)
        assert b'"index":0' in received
        # Long before the stream ends (about 1.75 s from now) the first event is logged.
        started = time.monotonic()
        logserver.wait_for_file(rid, "response", timeout=1.0,
                                predicate=lambda p: b'"index":0' in p.read_bytes())
        assert time.monotonic() - started < 1.0
        assert b'"index":7' not in logserver.file(rid, "response").read_bytes()
        rest = resp.read()
    finally:
        conn.close()
    assert (received + rest).count(b"\n\n") == 8
    _, response, _ = logged(logserver, rid)
    assert split_head(response)[2] == received + rest


def test_request_is_logged_while_it_is_uploaded(proxy, logserver):
    body = pattern_bytes(1024 * 1024, offset=5)
    first = 512 * 1024
    sock = socket.create_connection(host_port(proxy.url), timeout=10)
    try:
        sock.sendall(b"PUT /v1/sink HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
        sock.sendall(body[:first])
        # The upload is still open, yet the request log already holds a good part of it.
        def partly_logged():
            for path in logserver.log_dir.glob("*_request.bin"):
                if path.stat().st_size >= 64 * 1024:
                    data = path.read_bytes()
                    if b"PUT /v1/sink HTTP/1.1" in data[:100] and body[:1000] in data:
                        return path
            return None
        path = wait_until(partly_logged, timeout=3, message="the request log during the upload")
        assert path.stat().st_size < len(body)
        sock.sendall(body[first:])
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        assert resp.status == 200
        assert json.loads(resp.read())["sha256"] == hashlib.sha256(body).hexdigest()
        rid = resp.getheader("X-Request-Id")
    finally:
        sock.close()
    request, _, _ = logged(logserver, rid)
    assert logserver.file(rid, "request") == path
    assert split_head(request)[2] == body


# -- secrets -----------------------------------------------------------------------------


def test_secrets_are_masked_in_logs_but_forwarded_intact(proxy, logserver):
    secrets = {
        "Authorization": ("Bearer sk-or-v1-0123456789abcdef0123abcd", "Bearer ****abcd"),
        "X-Api-Key": ("sk-ant-api03-0123456789qrst", "****qrst"),
        "Api-Key": ("short-key", "****"),
        "Cookie": ("session=supersecretcookie0123456789; theme=dark", "****"),
    }
    headers = [(name, value) for name, (value, _) in secrets.items()]
    status, _, data, rid = send(proxy.url, "GET", "/v1/echo", headers)
    assert status == 200
    upstream = json.loads(data)["headers"]
    for name, (value, _) in secrets.items():          # the upstream got them unmasked
        assert values(upstream, name) == [value]
    request, response, _ = logged(logserver, rid)
    _, logged_headers, _ = split_head(request)
    for name, (value, shown) in secrets.items():
        assert values(logged_headers, name) == [shown]
    response_head = split_head(response)[0:2]
    for name, (value, _) in secrets.items():
        secret = value.split(" ")[-1]
        assert secret[:-4].encode() not in request
        # The echo's body repeats the headers: it is logged as the client got it, so
        # only the response head is checked there.
        assert secret[:-4] not in repr(response_head)


def test_set_cookie_is_masked_in_the_response_log(proxy, logserver):
    status, headers, _, rid = send(proxy.url, "GET", "/v1/cookies")
    assert status == 200
    assert values(headers, "Set-Cookie")[0].startswith("session=abcdef0123456789")
    _, response, _ = logged(logserver, rid)
    _, logged_headers, _ = split_head(response)
    cookies = values(logged_headers, "Set-Cookie")
    assert cookies and all(v == "****" or set(v.replace(", ", "")) == {"*"} for v in cookies), cookies
    assert b"abcdef0123456789" not in response and b"theme=dark" not in response


def test_redact_headers_is_configurable_and_case_insensitive(make_proxy, logserver):
    p = make_proxy(logging={"redact_headers": ["x-custom-secret", "Authorization"]})
    status, _, data, rid = send(p.url, "GET", "/v1/echo",
                                [("X-CUSTOM-Secret", "custom-0123456789-9876"),
                                 ("Authorization", "Bearer tok-0123456789wxyz")])
    assert status == 200
    assert values(json.loads(data)["headers"], "X-Custom-Secret") == ["custom-0123456789-9876"]
    request, _, _ = logged(logserver, rid)
    _, logged_headers, _ = split_head(request)
    assert values(logged_headers, "X-CUSTOM-Secret") == ["****9876"]
    assert values(logged_headers, "Authorization") == ["Bearer ****wxyz"]
    assert b"0123456789" not in request


# -- file names and metadata -------------------------------------------------------------


def test_request_id_names_the_log_files(proxy, logserver):
    status, _, _, rid = send(proxy.url, "POST", "/v1/chat/completions",
                             [("Content-Type", "application/json")], b'{"model":"m"}')
    assert status == 200
    assert str(uuid.UUID(rid)) == rid
    logged(logserver, rid)
    names = sorted(p.name for p in logserver.files(rid))
    kinds = {}
    for name in names:
        m = BIN_NAME_RE.match(name) or META_NAME_RE.match(name)
        assert m, name
        assert m.group(2) == rid[:8]
        kinds[name.rsplit("_", 1)[1]] = m.group(1)
    assert set(kinds) == {"request.bin", "response.bin", "metadata.json"}, names
    # The metadata file shares the timestamp of the exchange's first part.
    assert kinds["metadata.json"] in (kinds["request.bin"], kinds["response.bin"])
    stamp = datetime.datetime.strptime(kinds["request.bin"], "%Y-%m-%d_%H-%M-%S.%f")
    assert abs((datetime.datetime.now() - stamp).total_seconds()) < 60


def test_metadata_has_the_id_the_parts_and_the_proxys_outcome(proxy, logserver):
    body = b'{"model":"fake/model-a"}'
    status, _, data, rid = send(proxy.url, "POST", "/api/v1/chat/completions",
                                [("Content-Type", "application/json")], body)
    assert status == 200
    request, response, meta = logged(logserver, rid)
    assert meta["id"] == rid
    assert meta["parts"]["request"]["file"] == logserver.file(rid, "request").name
    assert meta["parts"]["response"]["file"] == logserver.file(rid, "response").name
    assert meta["parts"]["request"]["bytes"] == len(request)
    assert meta["parts"]["response"]["bytes"] == len(response)
    proxy_meta = meta["proxy"]
    assert proxy_meta["id"] == rid
    assert proxy_meta["status"] == 200
    assert proxy_meta["route"] == "openrouter"
    assert proxy_meta["request_bytes"] == len(body)
    assert proxy_meta["response_bytes"] == len(data)
    assert not proxy_meta.get("error")


def test_metadata_of_a_proxy_error(make_proxy, logserver):
    p = make_proxy(routes=[{"source": "/dead/", "name": "dead",
                            "destination": "http://127.0.0.1:%d/" % free_port()}])
    status, _, data, rid = send(p.url, "GET", "/dead/v1/models")
    assert status == 502
    _, response, meta = logged(logserver, rid)
    assert meta["proxy"]["status"] == 502
    assert meta["proxy"]["error"] == "upstream_unreachable"
    line, _, body = split_head(response)
    assert line.startswith("HTTP/1.1 502")
    assert body == data


# -- which exchanges are logged ----------------------------------------------------------


def test_unrouted_requests_are_not_logged_by_default(proxy, logserver):
    status, _, _, rid = send(proxy.url, "GET", "/nowhere/at/all")
    assert status == 404
    assert_never_logged(logserver, proxy.url, rid)


def test_logging_default_true_logs_an_unrouted_404(make_proxy, logserver):
    p = make_proxy(logging={"default": True})
    status, _, data, rid = send(p.url, "GET", "/nowhere/at/all?x=1")
    assert status == 404
    request, response, meta = logged(logserver, rid)
    assert split_head(request)[0] == "GET /nowhere/at/all?x=1 HTTP/1.1"
    line, _, body = split_head(response)
    assert line.startswith("HTTP/1.1 404")
    assert body == data and json.loads(body)["error"]["code"] == "no_route"
    assert meta["proxy"]["status"] == 404


def test_route_with_logging_false_sends_nothing(make_proxy, logserver, fake_upstream):
    p = make_proxy(routes=[
        {"source": "/v1/models", "destination": fake_upstream.url + "/", "name": "models",
         "logging": False},
        {"source": "/v1/", "destination": fake_upstream.url + "/", "name": "fake"},
    ])
    status, _, data, rid = send(p.url, "GET", "/v1/models")
    assert status == 200 and json.loads(data)["object"] == "list"
    status, _, _, rid_post = send(p.url, "POST", "/v1/models", [], b"x" * 1000)
    assert_never_logged(logserver, p.url, rid)
    assert logserver.files(rid_post) == []


def test_logging_enabled_false_sends_nothing(make_proxy, logserver):
    p = make_proxy(logging={"enabled": False})
    status, _, _, rid = send(p.url, "GET", "/v1/echo")
    assert status == 200
    time.sleep(0.5)
    assert logserver.files(rid) == []


# -- console line ------------------------------------------------------------------------


def test_console_line_on_stdout_and_in_logging_file(make_proxy, tmp_path, fake_upstream):
    log_file = tmp_path / "requests.log"
    p = make_proxy(logging={"file": str(log_file)})
    p.mark()
    ids = []
    for method, target, body in [("POST", "/api/v1/chat/completions", b'{"model":"m"}'),
                                 ("GET", "/openrouter/models?key=secret", None),
                                 ("GET", "/nowhere", None)]:
        ids.append(send(p.url, method, target, [], body)[3])
    p.wait_for_stdout(re.escape("[%s]" % ids[-1][:8]))
    lines = [line for line in p.stdout_text().splitlines() if line.strip()]
    routed = [CONSOLE_RE.match(line) for line in lines[:2]]
    assert all(routed), lines
    up = fake_upstream.url
    assert [m.groups()[1:] for m in routed] == [
        (ids[0][:8], "POST", "/api/v1/chat/completions", up + "/", "openrouter"),
        (ids[1][:8], "GET", "/openrouter/models", up + "/api/v1/", "prefixed"),
    ]
    for m in routed:
        when = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")
        assert abs((datetime.datetime.now() - when).total_seconds()) < 60
    assert "secret" not in p.stdout_text()           # the query string is left out
    assert re.match(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} \[%s\] GET /nowhere" % ids[2][:8],
                    lines[2]), lines
    assert len(lines) == 3, lines
    wait_until(lambda: log_file.exists() and len(log_file.read_text().splitlines()) >= 3,
               timeout=5, message="3 lines in logging.file")
    assert log_file.read_text().splitlines() == lines


def test_console_false_prints_no_request_lines(make_proxy):
    p = make_proxy(logging={"console": False})
    p.mark()
    rid = send(p.url, "GET", "/v1/echo")[3]
    time.sleep(0.3)
    assert rid[:8] not in p.stdout_text()
    assert not any(CONSOLE_RE.match(line) for line in p.stdout_text().splitlines())
