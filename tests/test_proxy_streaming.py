"""End to end through a real orproxy: streams, big bodies, disconnects, breaks, shutdown.

Under both servers where it matters (``any_proxy``: orproxy's own gevent server and
``gunicorn -k gevent -w 2``). Timing assertions use generous bounds only: they tell
"event by event" from "buffered until the end", not milliseconds.
"""
import concurrent.futures
import hashlib
import http.client
import json
import signal
import socket
import time

import pytest

from helpers import pattern_bytes, pattern_sha256, wait_until

MiB = 1024 * 1024


# -- local helpers -----------------------------------------------------------------------


def _split(url):
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    return host, int(port)


def connect(url, timeout=15.0):
    host, port = _split(url)
    return http.client.HTTPConnection(host, port, timeout=timeout)


def read_events(resp, buf=b""):
    """Read an SSE body as it arrives; return [(arrival time_ns, event dict)] and the
    leftover bytes after the last complete event. ``buf``: bytes already read."""
    events = []
    while True:
        data = resp.read1(65536)
        if not data:
            break
        now = time.time_ns()
        buf += data
        while b"\n\n" in buf:
            raw, buf = buf.split(b"\n\n", 1)
            assert raw.startswith(b"data: "), raw
            events.append((now, json.loads(raw[len(b"data: "):])))
    return events, buf


def assert_event_by_event(events, count, interval_ms):
    assert [e["index"] for _, e in events] == list(range(count))
    gaps = [(b - a) / 1e6 for (a, _), (b, _) in zip(events, events[1:])]
    # Each event arrives on its own: most gaps close to the interval (not all at once).
    assert sum(g > interval_ms / 2 for g in gaps) >= len(gaps) - 1, gaps
    # The first event arrives long before the upstream even sends the last one.
    first_arrival = events[0][0]
    last_sent = events[-1][1]["sent_ns"]
    assert first_arrival < last_sent - (count - 2) * interval_ms * 1e6, (
        "first event arrived %.0f ms before the last was sent"
        % ((last_sent - first_arrival) / 1e6))


def hash_body(resp, block=MiB):
    h, total = hashlib.sha256(), 0
    while True:
        data = resp.read(block)
        if not data:
            break
        total += len(data)
        h.update(data)
    return total, h.hexdigest()


# -- SSE ---------------------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["chunked", "length", "close"])
def test_sse_events_arrive_one_by_one(any_proxy, framing):
    count, interval_ms = 5, 200
    conn = connect(any_proxy.url)
    try:
        conn.request("GET", "/api/v1/sse?events=%d&interval_ms=%d&framing=%s"
                     % (count, interval_ms, framing))
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("Content-Type") == "text/event-stream"
        assert resp.getheader("X-Request-Id")
        if framing == "length":
            assert resp.getheader("Content-Length") is not None   # the upstream's, kept
        events, rest = read_events(resp)
    finally:
        conn.close()
    assert rest == b""
    assert_event_by_event(events, count, interval_ms)


def test_chat_completion_stream_arrives_one_by_one(any_proxy):
    count, interval_ms = 5, 200
    conn = connect(any_proxy.url)
    try:
        body = json.dumps({"model": "m", "stream": True,
                           "messages": [{"role": "user", "content": "hi"}]})
        conn.request("POST", "/v1/chat/completions?events=%d&interval_ms=%d"
                     % (count, interval_ms), body=body,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        arrivals, buf = [], b""
        while True:
            data = resp.read1(65536)
            if not data:
                break
            buf += data
            while b"\n\n" in buf:
                raw, buf = buf.split(b"\n\n", 1)
                arrivals.append((time.time_ns(), raw))
    finally:
        conn.close()
    assert arrivals[-1][1] == b"data: [DONE]"
    deltas = [(t, json.loads(raw[6:])) for t, raw in arrivals[:-1]]
    texts = [d["choices"][0]["delta"].get("content") for _, d in deltas if d["choices"]]
    assert "".join(t for t in texts if t) == "".join("tok%d " % i for i in range(count))
    content_times = [t for t, d in deltas
                     if d["choices"] and d["choices"][0]["delta"].get("content")]
    gaps = [(b - a) / 1e6 for a, b in zip(content_times, content_times[1:])]
    assert sum(g > interval_ms / 2 for g in gaps) >= len(gaps) - 1, gaps


def test_response_head_arrives_before_a_slow_first_event(any_proxy):
    conn = connect(any_proxy.url)
    try:
        started = time.monotonic()
        conn.request("GET", "/v1/sse?events=2&first_delay_ms=1500")
        resp = conn.getresponse()
        head_after = time.monotonic() - started
        assert resp.status == 200
        events, _ = read_events(resp)
        end_after = time.monotonic() - started
    finally:
        conn.close()
    assert head_after < 1.0, "the head came only after %.2fs" % head_after
    assert end_after >= 1.4                     # the events themselves were slow
    assert [e["index"] for _, e in events] == [0, 1]


def test_concurrent_streams_under_gunicorn_with_two_workers(make_proxy):
    p = make_proxy(gunicorn=True, workers=2)

    def one_stream(i):
        conn = connect(p.url)
        try:
            conn.request("GET", "/v1/sse?events=5&interval_ms=200&i=%d" % i)
            resp = conn.getresponse()
            assert resp.status == 200
            return read_events(resp)
        finally:
            conn.close()

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one_stream, range(6)))
    elapsed = time.monotonic() - started
    for events, rest in results:
        assert rest == b""
        assert_event_by_event(events, 5, 200)
    # Six 0.8 s streams side by side, not one after the other (which would take 4.8 s).
    assert elapsed < 3.0, elapsed


# -- client disconnect -------------------------------------------------------------------


def test_client_disconnect_closes_the_silent_upstream(any_proxy, fake_upstream):
    before = fake_upstream.stats()
    sock = socket.create_connection(_split(any_proxy.url), timeout=10)
    try:
        sock.sendall(b"GET /api/v1/hang HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while not (b"data: " in data and b"\n\n" in data[data.index(b"data: "):]):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        assert data.startswith(b"HTTP/1.1 200")
        fake_upstream.wait_stats(lambda s: s["hang_open"] > before["hang_open"], timeout=5)
    finally:
        sock.close()
    closed_at = time.monotonic()
    # The upstream is silent: only the proxy noticing the client leave can close it.
    stats = fake_upstream.wait_stats(
        lambda s: s["hang_closed"] >= before["hang_closed"] + 1, timeout=2)
    assert time.monotonic() - closed_at < 2.0
    assert stats["hang_open"] == before["hang_open"]


def test_client_disconnect_while_waiting_for_the_head(any_proxy, fake_upstream):
    """A client gone before the upstream answers: the proxy neither hangs nor breaks."""
    sock = socket.create_connection(_split(any_proxy.url), timeout=10)
    sock.sendall(b"GET /v1/slow?delay_ms=600 HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.2)
    sock.close()
    time.sleep(0.6)
    conn = connect(any_proxy.url)
    try:
        conn.request("GET", "/v1/bytes?n=1000")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == pattern_bytes(1000)
    finally:
        conn.close()


# -- broken upstream ---------------------------------------------------------------------


@pytest.mark.parametrize("framing, rst", [("length", False), ("chunked", False),
                                          ("length", True), ("chunked", True)])
def test_upstream_breaking_mid_body_breaks_the_client_response(any_proxy, framing, rst):
    after = 100000
    conn = connect(any_proxy.url, timeout=10)
    try:
        conn.request("GET", "/v1/break?after=%d&framing=%s&delay_ms=50%s"
                     % (after, framing, "&rst=1" if rst else ""))
        resp = conn.getresponse()
        assert resp.status == 200
        if framing == "length":
            assert resp.getheader("Content-Length") == str(2 * after)
        with pytest.raises((http.client.IncompleteRead, ConnectionError)) as info:
            data = resp.read()
            pytest.fail("clean end after %d bytes: the break was hidden" % len(data))
    finally:
        conn.close()
    if isinstance(info.value, http.client.IncompleteRead):
        partial = info.value.partial
        assert len(partial) <= after
        assert partial == pattern_bytes(len(partial))
        if not rst:
            assert len(partial) == after        # every byte the upstream sent arrived


# -- big bodies --------------------------------------------------------------------------


def _echoed(proxy, body, headers, **options):
    """The fake upstream's account of the upload it received (POST /v1/echo)."""
    conn = connect(proxy.url, timeout=30)
    try:
        conn.request("POST", "/v1/echo", body=body, **options,
                     headers={"Content-Type": "application/octet-stream", **headers})
        resp = conn.getresponse()
        assert resp.status == 200
        return json.loads(resp.read())
    finally:
        conn.close()


def test_10_mib_upload_with_content_length_is_byte_exact(any_proxy):
    body = pattern_bytes(10 * MiB, offset=7)
    doc = _echoed(any_proxy, body, {})
    assert doc["framing"] == "length"
    assert doc["content_length"] == str(len(body))
    assert doc["body_length"] == len(body)
    assert doc["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert not [v for n, v in doc["headers"] if n.lower() == "transfer-encoding"]


def test_10_mib_chunked_upload_goes_upstream_chunked_and_byte_exact(any_proxy):
    body = pattern_bytes(10 * MiB, offset=3)
    blocks = [body[i:i + 100003] for i in range(0, len(body), 100003)]   # odd sizes
    doc = _echoed(any_proxy, iter(blocks), {"Transfer-Encoding": "chunked"}, encode_chunked=True)
    assert doc["framing"] == "chunked"
    assert doc["content_length"] is None
    assert not [v for n, v in doc["headers"] if n.lower() == "content-length"]
    assert doc["body_length"] == len(body)
    assert doc["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_64_mib_download_is_byte_exact_with_content_length(any_proxy):
    n = 64 * MiB
    conn = connect(any_proxy.url, timeout=60)
    try:
        conn.request("GET", "/v1/bytes?n=%d" % n)
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("Content-Length") == str(n)
        assert resp.getheader("Transfer-Encoding") is None
        total, digest = hash_body(resp)
    finally:
        conn.close()
    assert total == n
    assert digest == pattern_sha256(n)


def test_chunked_download_stays_chunked_and_byte_exact(proxy):
    n = 8 * MiB + 12345
    conn = connect(proxy.url, timeout=30)
    try:
        conn.request("GET", "/v1/bytes?n=%d&chunked=1&block=30000" % n)
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("Content-Length") is None
        assert resp.getheader("Transfer-Encoding") == "chunked"
        total, digest = hash_body(resp)
    finally:
        conn.close()
    assert (total, digest) == (n, pattern_sha256(n))


# -- graceful shutdown -------------------------------------------------------------------


def _refused(url):
    try:
        with socket.create_connection(_split(url), timeout=1) as s:
            s.sendall(b"GET /v1/bytes?n=10 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return False
    except ConnectionRefusedError:
        return True
    except OSError:       # e.g. reset while the listening socket closes: ask again
        return False


@pytest.mark.parametrize("gunicorn", [False, True, "orproxy.worker.GeventWorker"],
                         ids=["pywsgi", "gunicorn", "gunicorn-worker"])
def test_sigterm_lets_a_stream_finish_refuses_new_connections_and_exits_0(make_proxy, gunicorn):
    p = make_proxy(gunicorn=gunicorn)
    count, interval_ms = 11, 200                      # a 2 s stream
    conn = connect(p.url)
    try:
        conn.request("GET", "/v1/sse?events=%d&interval_ms=%d" % (count, interval_ms))
        resp = conn.getresponse()
        assert resp.status == 200
        first = resp.read1(65536)
        assert first.startswith(b"data: ")
        p.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        wait_until(lambda: _refused(p.url), timeout=1.5, interval=0.05,
                   message="new connections refused after SIGTERM")
        assert time.monotonic() - signalled < 1.5     # while the stream still runs
        events, rest = read_events(resp, first)       # raises if the stream is cut
    finally:
        conn.close()
    assert [e["index"] for _, e in events] == list(range(count)) and rest == b""
    p.process.proc.wait(timeout=10)
    assert p.process.returncode == 0, p.process.describe()
