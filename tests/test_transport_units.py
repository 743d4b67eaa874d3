"""orproxy/transport.py's ResponseBody on its own, with no socket: a connection double hands
out scripted arrivals, and a pool double records what is given back. Then the error
mapping (errors.py) and the header pairs (headers.py) that the requests seam relies on."""
import pytest
import requests
import urllib3
from gevent import GreenletExit

from orproxy.errors import ClientBodyError, before_head, in_body
from orproxy.headers import HeaderPairs, masked
from orproxy.http1 import ResponseParser
from orproxy.transport import ResponseBody, UpstreamBroken


class ScriptedSocket(object):
    """recv_into hands out the next scripted arrival: bytes (b'' is the peer's close) or an
    exception to raise. Asking for more than the script holds fails the test: a read that
    waits for more than has arrived would block on a real socket."""

    def __init__(self, arrivals):
        self.arrivals = list(arrivals)
        self.calls = 0

    def recv_into(self, buffer):
        self.calls += 1
        assert self.arrivals, "read past what the upstream sent (it would wait here)"
        arrival = self.arrivals.pop(0)
        if isinstance(arrival, BaseException):
            raise arrival
        buffer[:len(arrival)] = arrival
        return len(arrival)


class FakeConnection(object):
    def __init__(self, arrivals):
        self.sock = ScriptedSocket(arrivals)
        self.closed = False

    def close(self):
        self.closed = True


class FakePool(object):
    def __init__(self):
        self.given_back = []

    def put(self, conn):
        self.given_back.append(conn)


def body_after(response_head, *arrivals):
    """A ResponseBody whose head (with any bytes that came with it) is parsed, and whose
    connection then receives `arrivals`."""
    parser = ResponseParser()
    parser.feed(response_head)
    conn, pool = FakeConnection(arrivals), FakePool()
    return ResponseBody(conn, pool, parser, read_timeout=7.0), conn, pool


LENGTH_10 = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
UNDELIMITED = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"


def test_read1_returns_each_arrival_at_once_without_waiting_for_a_block():
    raw, conn, pool = body_after(LENGTH_10, b"hel", b"lo wo", b"rl")
    assert raw.read1(65536) == b"hel" and conn.sock.calls == 1
    assert raw.read1(65536) == b"lo wo" and conn.sock.calls == 2
    assert raw.read1(65536) == b"rl"
    assert raw.read1(65536) == b"" and conn.sock.calls == 3  # the end needs no read


def test_bytes_that_came_with_the_head_are_read_without_a_receive():
    raw, conn, _ = body_after(LENGTH_10 + b"0123", b"456789")
    assert raw.has_buffered
    assert raw.read1() == b"0123" and conn.sock.calls == 0
    assert not raw.has_buffered
    assert raw.read1() == b"456789"


def test_read1_honours_amt_and_keeps_the_rest():
    raw, _, _ = body_after(LENGTH_10, b"0123456789")
    assert [raw.read1(4), raw.read1(4), raw.read1(4), raw.read1(4)] == [b"0123", b"4567", b"89", b""]


def test_a_chunked_body_is_de_chunked_as_it_arrives():
    raw, conn, pool = body_after(CHUNKED, b"5\r\nhello\r\n", b"6\r\n world\r\n", b"0\r\n\r\n")
    assert raw.read1() == b"hello" and conn.sock.calls == 1
    assert raw.read1() == b" world"
    assert raw.read1() == b""
    assert pool.given_back == [conn] and not conn.closed


def test_a_complete_keep_alive_response_goes_back_to_the_pool():
    raw, conn, pool = body_after(LENGTH_10, b"0123456789")
    assert raw.read() == b"0123456789"
    assert pool.given_back == [conn] and not conn.closed
    raw.close()
    assert pool.given_back == [conn]  # once


def test_a_complete_response_without_keep_alive_is_closed():
    raw, conn, pool = body_after(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n", b"ok")
    assert raw.read() == b"ok"
    assert conn.closed and not pool.given_back


def test_a_response_with_extra_bytes_is_not_pooled():
    raw, conn, pool = body_after(LENGTH_10 + b"0123456789")
    raw.parser.feed(b"HTTP/1.1 200 OK\r\n")  # the upstream said more than its response
    assert raw.read() == b"0123456789"
    assert conn.closed and not pool.given_back


def test_closing_an_incomplete_body_discards_the_connection():
    raw, conn, pool = body_after(LENGTH_10, b"01234")
    assert raw.read1() == b"01234"
    raw.close()
    assert conn.closed and not pool.given_back
    assert raw.read1() == b""  # closed: nothing more, and no receive


@pytest.mark.parametrize("response_head, arrivals", [
    (LENGTH_10, [b"01234", b""]),                    # closed mid-body
    (CHUNKED, [b"5\r\nhello\r\n", b""]),             # closed before the last chunk
    (CHUNKED, [b"5\r\nhello\r\n", b"zz\r\n"]),       # an invalid chunk size line
    (LENGTH_10, [b"01234", ConnectionResetError(104, "reset")]),
])
def test_a_broken_body_raises_upstream_broken_and_discards_the_connection(response_head, arrivals):
    raw, conn, pool = body_after(response_head, *arrivals)
    assert raw.read1() in (b"01234", b"hello")
    with pytest.raises(UpstreamBroken):
        raw.read1()
    assert conn.closed and not pool.given_back


def test_a_close_delimited_body_ends_cleanly_at_the_close():
    raw, conn, pool = body_after(UNDELIMITED, b"data: 1\n\n", b"data: 2\n\n", b"")
    assert [raw.read1(), raw.read1(), raw.read1()] == [b"data: 1\n\n", b"data: 2\n\n", b""]
    assert raw.parser.complete and conn.closed and not pool.given_back


def test_a_timeout_is_a_read_timeout():
    raw, conn, pool = body_after(LENGTH_10, b"01", TimeoutError("timed out"))
    assert raw.read1() == b"01"
    with pytest.raises(requests.exceptions.ReadTimeout, match="7.0 s"):
        raw.read1()
    assert conn.closed and not pool.given_back


def test_the_raw_offers_what_the_proxy_reads_of_requests_raw():
    raw, _, _ = body_after(b"HTTP/1.0 200 OK\r\nSet-Cookie: a\r\nset-cookie: b\r\nContent-Length: 0\r\n\r\n")
    assert raw.version == 10
    assert list(raw.headers.items()) == [("Set-Cookie", "a"), ("set-cookie", "b"), ("Content-Length", "0")]


# -- errors --------------------------------------------------------------------------------

READ_TIMEOUT_3 = urllib3.exceptions.ReadTimeoutError(None, "/", "read timed out")
PROTOCOL_3 = urllib3.exceptions.ProtocolError("Connection broken: IncompleteRead")


@pytest.mark.parametrize("error, code", [
    (ClientBodyError("ended early"), "bad_request"),
    (requests.exceptions.ConnectTimeout("connect"), "upstream_unreachable"),
    (requests.exceptions.ConnectionError("refused"), "upstream_unreachable"),
    (requests.exceptions.SSLError("bad certificate"), "upstream_unreachable"),
    (requests.exceptions.ReadTimeout("read"), "upstream_timeout"),
    (READ_TIMEOUT_3, "upstream_timeout"),
    (PROTOCOL_3, "upstream_unreachable"),
    (ConnectionRefusedError(111, "refused"), "upstream_unreachable"),
    (OSError("no route"), "upstream_unreachable"),
    (UpstreamBroken("closed"), "upstream_unreachable"),
])
def test_failures_before_the_head(error, code):
    found = before_head(error)
    assert found is not None and found[0] == code and str(error) in found[1]


@pytest.mark.parametrize("error, code", [
    (requests.exceptions.ReadTimeout("read"), "upstream_timeout"),
    (READ_TIMEOUT_3, "upstream_timeout"),
    (UpstreamBroken("closed"), "upstream_broken"),
    (requests.exceptions.ChunkedEncodingError("bad chunk"), "upstream_broken"),
    (PROTOCOL_3, "upstream_broken"),
    (urllib3.exceptions.IncompleteRead(5, 10), "upstream_broken"),
    (ConnectionResetError(104, "reset"), "upstream_broken"),
])
def test_failures_in_the_body(error, code):
    assert in_body(error) == code


@pytest.mark.parametrize("error", [ValueError("a bug"), KeyError("x"), GreenletExit(), KeyboardInterrupt()])
def test_anything_else_is_not_an_upstream_failure(error):
    assert before_head(error) is None
    assert in_body(error) is None


def test_a_client_body_error_in_the_body_is_not_an_upstream_failure():
    assert in_body(ClientBodyError("ended early")) is None


# -- headers -------------------------------------------------------------------------------

def test_header_pairs_answer_as_a_case_insensitive_mapping_and_keep_repeats():
    pairs = [("Content-Type", "a"), ("X-Repeat", "1"), ("x-repeat", "2")]
    headers = HeaderPairs(pairs)
    assert "content-type" in headers and "X-REPEAT" in headers
    assert "Missing" not in headers and 42 not in headers
    assert headers.get("CONTENT-TYPE") == "a" and headers.get("x-Repeat") == "1"
    assert headers.get("missing") is None and headers.get("missing", "d") == "d"
    assert list(headers) == ["Content-Type", "X-Repeat", "x-repeat"]
    assert list(headers.items()) == pairs and len(headers) == 3


def test_header_pairs_copy_and_update_as_urllib3_merges_its_proxy_headers():
    headers = HeaderPairs([("Host", "h"), ("X-Repeat", "1"), ("x-repeat", "2")])
    merged = headers.copy()
    merged.update({})  # urllib3's usual proxy headers: none
    assert merged.items() == headers.items() and merged.items() is not headers.items()
    merged.update({"X-REPEAT": "3", "Proxy-Authorization": "Basic x"})
    assert merged.items() == [("Host", "h"), ("X-REPEAT", "3"), ("Proxy-Authorization", "Basic x")]
    assert headers.items() == [("Host", "h"), ("X-Repeat", "1"), ("x-repeat", "2")]  # the original kept


def test_masked_masks_configured_names_and_cookies_and_keeps_the_rest():
    headers = [("Authorization", "Bearer sk-or-v1-0123456789abcdef"), ("X-Team-Token", "tok-0123456789wxyz"),
               ("Cookie", "session=0123456789abcdef"), ("Set-Cookie", "a=b"), ("Accept", "*/*")]
    assert masked(headers, frozenset({"authorization", "x-team-token", "cookie", "set-cookie"})) == [
        ("Authorization", "Bearer ****cdef"), ("X-Team-Token", "****wxyz"), ("Cookie", "****"),
        ("Set-Cookie", "****"), ("Accept", "*/*")]
    assert masked(headers, frozenset()) == headers


def test_masked_masks_an_api_key_sent_as_a_websocket_subprotocol():
    headers = [("Sec-WebSocket-Protocol", "realtime, openai-insecure-api-key.sk-proj-0123456789abcd, openai-beta.realtime-v1")]
    assert masked(headers, frozenset()) == [
        ("Sec-WebSocket-Protocol", "realtime, openai-insecure-api-key.****abcd, openai-beta.realtime-v1")]
