"""What orproxy logs: the console line (and logging.file), and what lands on the logging
server (request/response .bin files, metadata), with secrets masked; and that a logging
server which is down, killed mid-stream, stalled or restarted never hurts proxied requests.
"""
import datetime
import hashlib
import http.client
import json
import os
import resource
import re
import signal
import socket
import time
import uuid
from pathlib import Path

import pytest

from helpers import free_port, pattern_bytes, wait_until
from log_helpers import host_port, exchange_complete, logged, send, split_head, values

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


# -- the logging server misbehaving ------------------------------------------------------


def _logging_resumes(proxy, logserver, target, timeout):
    """Send `target` through the proxy until one such exchange is logged whole; its id."""
    def logged_again():
        status, _, _, rid = send(proxy.url, "GET", target)
        assert status == 200
        try:
            logserver.wait_for_metadata(rid, predicate=exchange_complete, timeout=1.0)
        except AssertionError:
            return None
        return rid
    return wait_until(logged_again, timeout=timeout, interval=0.2, message="logging to resume")


def _mixed_request(url, i):
    """One of three kinds of exchange, each checked byte for byte."""
    kind = i % 3
    if kind == 0:
        body = pattern_bytes(20000 + i, offset=i)
        status, _, data, _ = send(url, "POST", "/v1/echo?i=%d" % i,
                                  [("Authorization", "Bearer sk-0123456789abcdef")], body)
        assert status == 200
        assert json.loads(data)["body_sha256"] == hashlib.sha256(body).hexdigest()
    elif kind == 1:
        n = 200000 + i
        status, _, data, _ = send(url, "GET", "/v1/bytes?n=%d" % n)
        assert status == 200 and data == pattern_bytes(n)
    else:
        status, _, data, _ = send(url, "GET", "/v1/sse?events=3&i=%d" % i)
        assert status == 200
        assert [json.loads(e[6:])["index"] for e in data.split(b"\n\n") if e] == [0, 1, 2]


def test_logging_server_killed_then_restarted(make_proxy, logserver):
    p = make_proxy()
    rid = send(p.url, "GET", "/v1/echo?before=1")[3]
    logged(logserver, rid)

    # Killed in the middle of a logged stream: the stream goes on to its end.
    host, port = host_port(p.url)
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", "/v1/sse?events=6&interval_ms=100")
        resp = conn.getresponse()
        first = resp.read1(65536)
        assert first.startswith(b"data: ")
        logserver.kill()
        rest = resp.read()
    finally:
        conn.close()
    assert (first + rest).count(b"\n\n") == 6

    # Down: every proxied request succeeds, byte for byte, and promptly.
    started = time.monotonic()
    for i in range(50):
        _mixed_request(p.url, i)
    assert time.monotonic() - started < 20

    # Back on the same port: logging resumes by itself within a few seconds.
    logserver.start()
    rid = _logging_resumes(p, logserver, "/v1/echo?after=1", timeout=10)
    request, _, _ = logged(logserver, rid)
    assert request.startswith(b"GET /v1/echo?after=1 HTTP/1.1\r\n")
    assert p.alive


def test_logging_server_stalled_never_delays_requests(make_proxy, logserver):
    p = make_proxy()
    rid = send(p.url, "GET", "/v1/echo")[3]
    logged(logserver, rid)
    pid = logserver.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        slowest = 0.0
        for i in range(20):
            started = time.monotonic()
            _mixed_request(p.url, i)
            if i % 10 == 0:      # bodies bigger than the socket buffers to the logger
                n = 16 * 1024 * 1024
                status, _, data, _ = send(p.url, "GET", "/v1/bytes?n=%d" % n)
                assert status == 200 and data == pattern_bytes(n)
            slowest = max(slowest, time.monotonic() - started)
        assert slowest < 2.0, "a request took %.2fs with the logging server stalled" % slowest
    finally:
        os.kill(pid, signal.SIGCONT)
    assert p.alive

    _logging_resumes(p, logserver, "/v1/echo?after=stall", timeout=20)


def test_a_logging_server_silent_for_longer_than_10_s_still_gets_every_exchange(make_proxy, logserver):
    """At idle CPU priority under a saturating load, the logging server may not run for many
    seconds. The proxy waits up to 60 s for its answers before it treats it as stalled and
    drops new exchanges' logs for a second; with a 10 s limit, the exchanges sent around
    the 10 s mark were not logged."""
    p = make_proxy()
    logged(logserver, send(p.url, "GET", "/v1/echo")[3])  # the logging server is known to answer
    pid = logserver.process.pid
    sent = []
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        while time.monotonic() - started < 12.5:
            status, _, _, rid = send(p.url, "GET", "/v1/echo?stalled=%d" % len(sent))
            assert status == 200
            sent.append(rid)
            time.sleep(0.25)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert len(sent) >= 40
    for rid in sent:
        request, _, metadata = logged(logserver, rid, timeout=20)
        assert request.startswith(b"GET /v1/echo?stalled=")
        assert metadata["proxy"]["log_dropped_bytes"] == 0


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_the_logging_server_runs_at_idle_cpu_priority(logserver):
    """So that on a shared machine a waking proxy preempts it at once (README, orlogserver
    --priority): nice levels only lowered its share, not the proxy's wait for the CPU."""
    assert os.sched_getscheduler(logserver.process.pid) == os.SCHED_IDLE


def _open_files_limit(pid):
    """(soft, hard) of the process's open-files limit, as /proc shows them."""
    for line in Path("/proc/%d/limits" % pid).read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-files line in /proc/%d/limits" % pid)


@pytest.mark.skipif(not Path("/proc/self/limits").exists(), reason="reads /proc/PID/limits")
@pytest.mark.parametrize("gunicorn", [False, True], ids=["orproxy", "gunicorn"])
def test_the_proxy_raises_its_open_files_limit_to_the_hard_one(make_proxy, gunicorn):
    """A shell's usual soft limit of 1,024 would cap held streams near 300 (3 descriptors
    each with logging); the proxy lifts it as Go programs do, and sizes its log streams
    by it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard <= 1024:
        pytest.skip("the hard open-files limit is too low to show a raise")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))  # the proxy inherits it
    try:
        proxy = make_proxy(gunicorn=gunicorn, workers=1)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    pids = [proxy.pid] if not gunicorn else [int(p) for p in wait_until(
        lambda: Path("/proc/%d/task/%d/children" % (proxy.pid, proxy.pid)).read_text().split(), 10)]
    for pid in pids:  # under gunicorn, its worker
        assert _open_files_limit(pid) == (hard, hard)
