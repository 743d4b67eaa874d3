"""In-process wire tests: ProxyApp and the logging server's app on port 0 in this process,
against scripted upstreams (scripted_upstream.py) that hold bytes back, dribble SSE, break
the chunking or close mid-body, and a raw client whose answers h11 reads (wire_harness.py).
Each test asserts what reached the client, what reached the upstream, and what was logged.
"""
import json
import time

import gevent
import pytest
from gevent.event import Event

from scripted_upstream import chunk, closed_port, response_head
from wire_harness import Wire, live_greenlets, open_sockets

SECRET = "sk-or-v1-0123456789abcdef0123"
CHUNKED = [("Transfer-Encoding", "chunked")]
SSE = [("Content-Type", "text/event-stream"), *CHUNKED]


@pytest.fixture
def wire(tmp_path):
    """The test's harness; the test fails if a server logged an error, or if it leaves a
    greenlet running or a socket open."""
    before, sockets_before = live_greenlets(), open_sockets()
    harness = Wire(tmp_path / "logs")
    yield harness
    errors = harness.close()
    assert not errors, errors
    with gevent.Timeout(5, False):
        while len(live_greenlets()) > len(before):
            gevent.sleep(0.01)
    left = [g for g in live_greenlets() if g not in before]
    assert not left, left
    left = [s for s in open_sockets() if s not in sockets_before]
    assert not left, left


def exchange(wire, script, method="POST", target="/up/v1/chat", headers=(), body=b"", **route):
    """One request through a fresh proxy to an upstream running `script`; the client's
    answer, the upstream and the client (still open)."""
    upstream = wire.upstream(script)
    client = wire.client(wire.proxy(upstream.url, **route))
    client.request(method, target, list(headers), body)
    return client.response(), upstream, client


def answers(body, status="200 OK", headers=()):
    """A script: read one request, answer it with a Content-Length."""
    def script(peer):
        peer.request()
        peer.response(body, status, list(headers))
    return script


# -- bodies both ways, and their logs ------------------------------------------------------

def test_a_json_exchange_is_relayed_and_logged_as_it_went_over_the_wire(wire):
    payload = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    reply = b'{"choices": [{"message": {"content": "hello"}}]}'
    upstream_head = response_head("200 OK", [("Content-Type", "application/json"),
                                             ("Set-Cookie", "session=0123456789abcdef"),
                                             ("Content-Length", str(len(reply)))])
    answer, upstream, _ = exchange(wire, lambda peer: (peer.request(), peer.send(upstream_head + reply)),
                                   headers=[("Authorization", "Bearer " + SECRET),
                                            ("Content-Type", "application/json")], body=payload)
    assert (answer.status, answer.body, answer.complete) == (200, reply, True)
    assert answer.header("set-cookie") == "session=0123456789abcdef"
    sent = upstream.requests[0]
    assert sent.header("authorization") == "Bearer " + SECRET  # forwarded unmasked
    assert sent.header("content-length") == str(len(payload)) and sent.header("transfer-encoding") is None

    logged_head = sent.raw[:-len(payload) - 2].replace(SECRET.encode(), b"****" + SECRET[-4:].encode())
    assert wire.log.part(answer.request_id, "request") == (
        logged_head + b"X-Proxy-Path: http://proxy.test/up/v1/chat\r\n\r\n" + payload)
    assert wire.log.part(answer.request_id, "response") == (
        upstream_head.replace(b"session=0123456789abcdef", b"****") + reply)
    proxy = wire.log.metadata(answer.request_id)["proxy"]
    assert (proxy["status"], proxy["error"], proxy["request_bytes"]) == (200, None, len(payload))


def test_a_content_length_body_reaches_the_upstream_byte_for_byte_with_its_length(wire):
    payload = bytes(range(256)) * 1000
    answer, upstream, _ = exchange(wire, answers(b"ok"), body=payload)
    sent = upstream.requests[0]
    assert answer.status == 200 and sent.body == payload
    assert sent.raw.endswith(b"\r\nContent-Length: 256000\r\n\r\n" + payload)
    assert b"Transfer-Encoding" not in sent.raw


def test_a_chunked_body_reaches_the_upstream_chunked(wire):
    blocks = [b"first block;", b"x" * 70000, b"last"]
    answer, upstream, _ = exchange(wire, answers(b"ok"), headers=CHUNKED, body=blocks)
    sent = upstream.requests[0]
    assert answer.status == 200 and sent.body == b"".join(blocks)
    assert sent.header("transfer-encoding") == "chunked" and sent.header("content-length") is None
    assert sent.raw.endswith(b"\r\n0\r\n\r\n")
    assert wire.log.part(answer.request_id, "request").endswith(b"\r\n\r\n" + b"".join(blocks))


def test_expect_100_continue_is_answered_by_the_proxy_not_forwarded(wire):
    upstream = wire.upstream(answers(b"done"))
    client = wire.client(wire.proxy(upstream.url))
    interim = []
    client.request("POST", "/up/x", [("Expect", "100-continue"), ("Content-Length", "4")],
                   [lambda: interim.append(client.event()), b"data"])  # the body after the 100
    answer = client.response()
    assert interim[0].status_code == 100 and (answer.status, answer.body) == (200, b"done")
    assert upstream.requests[0].header("expect") is None and upstream.requests[0].body == b"data"


def test_an_upstream_100_continue_is_skipped(wire):
    def script(peer):
        peer.request()
        peer.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        peer.response(b"final", "201 Created")
    answer, _, _ = exchange(wire, script, body=b"x")
    assert (answer.status, answer.body, answer.interim) == (201, b"final", [])


# -- streaming -----------------------------------------------------------------------------

@pytest.mark.parametrize("framing", [[("Content-Length", "4")], CHUNKED])
def test_the_head_reaches_the_client_before_a_held_back_body(wire, framing):
    release = Event()

    def script(peer):
        peer.request()
        peer.send(response_head("200 OK", framing))
        peer.hold(release)
        peer.send(b"body" if framing != CHUNKED else chunk(b"body") + b"0\r\n\r\n")
    upstream = wire.upstream(script)
    client = wire.client(wire.proxy(upstream.url))
    client.request("GET", "/up/held")
    answer = client.head(timeout=5)  # the body is held until this returns
    assert answer.status == 200 and answer.request_id
    release.set()
    answer = client.body(answer)
    assert answer.complete and answer.body == b"body"


def test_dribbled_sse_events_reach_the_client_one_by_one(wire):
    events = [b"data: {\"delta\": \"%d\"}\n\n" % i for i in range(4)]
    sent = [Event() for _ in events]

    def script(peer):
        peer.request()
        peer.send(response_head("200 OK", SSE))
        for event, got in zip(events, sent):
            peer.send(chunk(event))
            peer.hold(got)  # the next event only once the client has this one
        peer.send(b"0\r\n\r\n")
    upstream = wire.upstream(script)
    client = wire.client(wire.proxy(upstream.url))
    client.request("POST", "/up/v1/chat", body=b'{"stream": true}')
    answer = client.head()
    assert answer.header("content-type") == "text/event-stream"
    for event, got in zip(events, sent):
        received = b""
        while len(received) < len(event):
            received += client.data(timeout=5)
        assert received == event
        got.set()
    answer = client.body(answer)
    assert answer.complete and answer.body == b""
    logged = wire.log.part(answer.request_id, "response")
    assert logged.endswith(b"\r\n\r\n" + b"".join(events))
    assert wire.log.metadata(answer.request_id)["proxy"]["streamed"] is True


def test_a_close_delimited_stream_ends_cleanly_for_the_client(wire):
    def script(peer):
        peer.request()
        peer.send(response_head("200 OK", [("Content-Type", "text/event-stream")]), b"data: 1\n\n")
        gevent.sleep(0.05)
        peer.send(b"data: 2\n\n")
    answer, _, _ = exchange(wire, script, method="GET")
    assert answer.complete and answer.body == b"data: 1\n\ndata: 2\n\n"
    assert wire.log.metadata(answer.request_id)["proxy"]["error"] is None


@pytest.mark.parametrize("framing, first, then", [
    (CHUNKED, chunk(b"hello"), b"zz\r\nnot a chunk size\r\n"),  # broken chunking
    (CHUNKED, chunk(b"hello"), b""),                             # closed before the last chunk
    ([("Content-Length", "100")], b"hello", b""),                # closed mid-body
])
def test_a_broken_upstream_body_leaves_the_client_an_incomplete_response(wire, framing, first, then):
    release = Event()

    def script(peer):
        peer.request()
        peer.send(response_head("200 OK", framing), first)
        peer.hold(release)  # the head and "hello" reach the client first
        peer.send(then)
    upstream = wire.upstream(script)
    client = wire.client(wire.proxy(upstream.url))
    client.request("GET", "/up/broken")
    answer = client.head()
    assert answer.status == 200 and client.data() == b"hello"
    release.set()
    answer = client.body(answer)
    assert not answer.complete and answer.body == b"", answer
    assert wire.log.metadata(answer.request_id)["proxy"]["error"] == "upstream_broken"
    assert wire.log.part(answer.request_id, "response").endswith(b"\r\n\r\nhello")


def test_an_upstream_silent_mid_body_is_cut_as_a_timeout(wire):
    def script(peer):
        peer.request()
        peer.send(response_head("200 OK", CHUNKED), chunk(b"partial"))
        peer.hold(Event())
    answer, _, _ = exchange(wire, script, method="GET", read_timeout=0.3)
    assert not answer.complete and answer.body == b"partial"
    assert wire.log.metadata(answer.request_id)["proxy"]["error"] == "upstream_timeout"


def test_a_client_gone_mid_stream_closes_the_upstream_connection(wire):
    gone = []

    def script(peer):
        peer.request()
        peer.send(response_head("200 OK", SSE), chunk(b"data: 1\n\n"))
        gone.append(peer.closed_by_proxy(timeout=5))  # the upstream stays silent meanwhile
    upstream = wire.upstream(script)
    client = wire.client(wire.proxy(upstream.url))
    client.request("GET", "/up/stream")
    answer = client.head()
    client.close()
    with gevent.Timeout(5):
        while not gone:
            gevent.sleep(0.01)
    assert gone == [True]
    assert wire.log.metadata(answer.request_id)["proxy"]["error"] == "client_disconnected"


# -- connections ---------------------------------------------------------------------------

def test_head_and_204_answers_end_at_their_head_and_keep_the_connections(wire):
    def script(peer):
        peer.request()
        peer.send(response_head("200 OK", [("Content-Length", "100")]))  # a HEAD: no body
        peer.request()
        peer.send(response_head("204 No Content"))
        peer.request()
        peer.response(b"third")
    upstream = wire.upstream(script)
    client = wire.client(wire.proxy(upstream.url))
    client.request("HEAD", "/up/a")
    head_answer = client.response()
    client.next_cycle()
    client.request("DELETE", "/up/b")
    no_content = client.response()
    client.next_cycle()
    client.request("GET", "/up/c")
    assert client.response().body == b"third"
    assert head_answer.complete and head_answer.header("content-length") == "100" and not head_answer.body
    assert no_content.status == 204 and no_content.complete
    assert upstream.connections == 1
    for answer in (head_answer, no_content):  # no body came, so none was streamed
        assert wire.log.metadata(answer.request_id)["proxy"]["streamed"] is False


def one_answer_then_a_stale_connection(wire, closed_while_idle=False):
    """An upstream whose first connection answers once and then closes (idle, or with the
    next request unanswered, as a keep-alive timeout would); its second answers "two".
    Returns it and a client that has had the first answer."""
    def first(peer):
        peer.request()
        peer.response(b"one")
        if not closed_while_idle:
            peer.request()
    upstream = wire.upstream(first, answers(b"two"))
    client = wire.client(wire.proxy(upstream.url))
    client.request("GET", "/up/x")
    assert client.response().body == b"one"
    client.next_cycle()
    return upstream, client


@pytest.mark.parametrize("when", ["while idle", "as the next request arrives"])
def test_a_stale_pooled_connection_is_retried_for_a_replayable_request(wire, when):
    upstream, client = one_answer_then_a_stale_connection(wire, closed_while_idle=when == "while idle")
    if when == "while idle":
        with gevent.Timeout(5):
            while upstream.peers[0].sock.fileno() != -1:  # the first script has ended
                gevent.sleep(0.01)
        gevent.sleep(0.05)  # and its close has reached the proxy
    client.request("GET", "/up/x")
    assert client.response().body == b"two"
    assert upstream.connections == 2
    assert [r.target for r in upstream.requests] == ["/up/x"] * (2 if when == "while idle" else 3)


def test_a_request_whose_body_went_into_a_stale_connection_is_sent_again_whole(wire):
    upstream, client = one_answer_then_a_stale_connection(wire)
    body = b"streamed to the upstream, and kept to send again"
    client.request("POST", "/up/x", body=body)
    answer = client.response()
    assert answer.status == 200 and answer.body == b"two"
    assert upstream.connections == 2
    assert [(r.method, r.body) for r in upstream.requests[1:]] == [("POST", body), ("POST", body)]


# -- errors before the head ----------------------------------------------------------------

def test_an_unreachable_upstream_is_a_json_502_and_logged(wire):
    client = wire.client(wire.proxy("http://127.0.0.1:%d" % closed_port()))
    client.request("POST", "/up/v1/chat", body=b'{"model": "m"}')
    answer = client.response()
    error = json.loads(answer.body)["error"]
    assert answer.status == 502 and answer.header("content-type") == "application/json"
    assert (error["code"], error["type"], error["request_id"]) == (
        "upstream_unreachable", "proxy_error", answer.request_id)
    assert wire.log.part(answer.request_id, "request").startswith(b"POST /up/v1/chat HTTP/1.1\r\n")
    proxy = wire.log.metadata(answer.request_id)["proxy"]
    assert (proxy["status"], proxy["error"]) == (502, "upstream_unreachable")


def test_a_silent_upstream_is_a_json_504_after_the_read_timeout(wire):
    def script(peer):
        peer.request()
        peer.hold(Event())
    started = time.monotonic()
    answer, upstream, _ = exchange(wire, script, body=b"x", read_timeout=0.3)
    elapsed = time.monotonic() - started
    assert answer.status == 504 and json.loads(answer.body)["error"]["code"] == "upstream_timeout"
    assert 0.3 <= elapsed < 5 and upstream.requests[0].body == b"x"
    assert wire.log.metadata(answer.request_id)["proxy"]["error"] == "upstream_timeout"
