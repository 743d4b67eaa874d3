"""orproxy/http1.py on its own, with no socket: the head writer, the response parser fed
whole and byte by byte, the message framing against a socket double that records every
write, and the URL split."""
import pytest

from orproxy import http1
from orproxy.http1 import MalformedResponse, ResponseParser, head, send_message, split_url


class RecordingSocket(object):
    """What http1 calls on a socket, recorded: `writes` holds one entry per send/sendmsg
    call, ("send", bytes) or ("sendmsg", [buffers as given]). `limit` caps the bytes one
    call takes, as a full kernel buffer would."""

    def __init__(self, limit=None):
        self.writes = []
        self.limit = limit

    def _taken(self, size):
        return size if self.limit is None else min(size, self.limit)

    def send(self, data):
        taken = self._taken(len(data))
        self.writes.append(("send", bytes(data[:taken])))
        return taken

    def sendmsg(self, buffers):
        self.writes.append(("sendmsg", list(buffers)))
        return self._taken(sum(map(len, buffers)))

    @property
    def wire(self):
        """The bytes the peer would have received, in order."""
        out = bytearray()
        for call, data in self.writes:
            if call == "send":
                out += data
            else:  # what sendmsg took: its buffers up to the count it returned
                taken = self._taken(sum(map(len, data)))
                out += b"".join(bytes(b) for b in data)[:taken]
        return bytes(out)


def parsed(data, **options):
    parser = ResponseParser(**options)
    parser.feed(data)
    return parser


def body(parser):
    return b"".join(parser.chunks)


# -- head() --------------------------------------------------------------------------------

def test_head_keeps_order_case_and_repeats_with_crlf_and_a_blank_line():
    headers = [("set-cookie", "a=1"), ("X-UPPER", "v"), ("Set-Cookie", "b=2"), ("content-TYPE", "t")]
    assert head("HTTP/1.1 200 OK", headers) == (
        b"HTTP/1.1 200 OK\r\nset-cookie: a=1\r\nX-UPPER: v\r\nSet-Cookie: b=2\r\ncontent-TYPE: t\r\n\r\n")


def test_head_without_headers_is_the_start_line_and_the_blank_line():
    assert head("GET / HTTP/1.1", []) == b"GET / HTTP/1.1\r\n\r\n"


def test_head_writes_header_text_as_latin_1():
    assert head("GET /\xe9 HTTP/1.1", [("X-\xdc", "caf\xe9")]) == b"GET /\xe9 HTTP/1.1\r\nX-\xdc: caf\xe9\r\n\r\n"
    assert head("GET / HTTP/1.1", [("X", "\u20ac")]) == b"GET / HTTP/1.1\r\nX: ?\r\n\r\n"  # not latin-1


# -- ResponseParser ------------------------------------------------------------------------

LENGTH_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Repeat: 1\r\nx-repeat: 2\r\nContent-Length: 11\r\n\r\nhello world"


def test_a_content_length_response_fed_whole():
    parser = parsed(LENGTH_RESPONSE)
    assert (parser.status, parser.reason, parser.version) == (200, "OK", "1.1")
    assert parser.headers == [("Content-Type", "text/plain"), ("X-Repeat", "1"), ("x-repeat", "2"),
                              ("Content-Length", "11")]
    assert body(parser) == b"hello world"
    assert parser.head_done and parser.complete and parser.keep_alive
    assert not parser.close_delimited and not parser.extra
    assert parser.completed == [200]


def test_a_content_length_response_fed_byte_by_byte():
    parser = ResponseParser()
    head_end = LENGTH_RESPONSE.index(b"\r\n\r\n") + 4
    for i in range(len(LENGTH_RESPONSE)):
        assert parser.head_done == (i >= head_end)
        assert not parser.complete
        parser.feed(LENGTH_RESPONSE[i:i + 1])
    assert parser.complete and body(parser) == b"hello world"
    assert parser.headers[-1] == ("Content-Length", "11") and parser.reason == "OK"


def test_a_chunked_response_is_de_chunked():
    data = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n")
    parser = parsed(data[:60])
    assert parser.head_done and not parser.complete and not parser.close_delimited
    parser.feed(data[60:])
    assert body(parser) == b"hello world" and parser.complete and parser.keep_alive


def test_a_body_without_length_or_chunking_is_close_delimited():
    parser = parsed(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: 1\n\n")
    assert parser.close_delimited and not parser.complete
    assert body(parser) == b"data: 1\n\n"


def test_an_http_1_0_response_is_not_kept_alive():
    parser = parsed(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert parser.version == "1.0" and parser.complete and not parser.keep_alive


def test_connection_close_is_not_kept_alive():
    assert not parsed(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").keep_alive


@pytest.mark.parametrize("split", [None, 25])
def test_an_interim_100_continue_is_skipped(split):
    data = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
    parser = ResponseParser()
    if split:
        parser.feed(data[:split])  # the 100 whole: the real head is still to come
        assert not parser.head_done and parser.status == 0
        data = data[split:]
    parser.feed(data)
    assert (parser.status, parser.reason) == (201, "Created")
    assert parser.headers == [("Content-Length", "2")] and body(parser) == b"ok"
    assert parser.completed == [201]


def test_a_101_completes_at_its_head_and_leaves_the_rest_to_the_tunnel():
    parser = parsed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\n\r\n\x81\x02hi")
    assert parser.status == 101 and parser.head_done and parser.complete
    assert not parser.keep_alive and not parser.chunks


def test_a_head_request_completes_at_the_head():
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"
    assert parsed(data, no_body=True).complete and parsed(data, no_body=True).keep_alive
    assert not parsed(data).complete  # the same head for a GET: 100 bytes to come


@pytest.mark.parametrize("status", [b"204 No Content", b"304 Not Modified"])
@pytest.mark.parametrize("length", [b"", b"Content-Length: 10\r\n"])
def test_204_and_304_have_no_body_and_are_not_close_delimited(status, length):
    parser = parsed(b"HTTP/1.1 " + status + b"\r\n" + length + b"\r\n")
    assert parser.complete and not parser.chunks and not parser.close_delimited and parser.keep_alive


def test_pipelined_responses_are_counted_with_their_statuses():
    data = (b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n"
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 1\r\n\r\nz")
    parser = ResponseParser(pipelined=True)
    parser.feed(data[:50])
    assert parser.completed == [201]
    parser.feed(data[50:])
    assert parser.completed == [201, 200, 500] and parser.status == 500
    assert not parser.extra


def test_bytes_after_the_end_are_extra():
    parser = parsed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    parser.feed(b"HTTP/1.1 200 OK\r\n")
    assert parser.extra and parser.status == 200 and body(parser) == b"ok"


def test_bytes_after_the_end_in_the_same_buffer_are_extra():
    parser = parsed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                    b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nbad")
    assert parser.extra and parser.status == 200 and body(parser) == b"ok"


@pytest.mark.parametrize("data", [
    b"garbage\r\n\r\n",
    b"HTTP/1.1 2x0 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
])
def test_malformed_input_raises(data):
    with pytest.raises(MalformedResponse):
        ResponseParser().feed(data)


# -- send_message --------------------------------------------------------------------------

HEAD = b"POST / HTTP/1.1\r\nHost: h\r\n\r\n"


def test_a_content_length_body_goes_as_is_with_the_head_in_the_first_write():
    sock = RecordingSocket()
    send_message(sock, HEAD, iter([b"abc", b"de"]), chunked=False)
    assert sock.writes == [("send", HEAD + b"abc"), ("send", b"de")]


def test_a_chunked_body_is_framed_and_terminated():
    sock = RecordingSocket()
    send_message(sock, HEAD, iter([b"abc", b"0123456789abcdef!"]), chunked=True)
    assert sock.writes == [("send", HEAD + b"3\r\nabc\r\n"), ("send", b"11\r\n0123456789abcdef!\r\n"),
                           ("send", b"0\r\n\r\n")]


def test_without_a_body_the_head_goes_alone_or_with_the_last_chunk():
    plain, chunked = RecordingSocket(), RecordingSocket()
    send_message(plain, HEAD, (), chunked=False)
    send_message(chunked, HEAD, (), chunked=True)
    assert plain.writes == [("send", HEAD)]
    assert chunked.writes == [("send", HEAD + b"0\r\n\r\n")]


def test_a_list_block_is_one_chunk_in_one_write():
    sock = RecordingSocket()
    send_message(sock, HEAD, iter([[b"ab", b"cd", memoryview(b"ef")]]), chunked=True)
    assert sock.writes == [("send", HEAD + b"6\r\nabcdef\r\n"), ("send", b"0\r\n\r\n")]


def test_empty_blocks_are_skipped_never_sent_as_a_last_chunk():
    sock = RecordingSocket()
    send_message(sock, HEAD, iter([b"", [], [b""], b"x", b""]), chunked=True)
    assert sock.wire == HEAD + b"1\r\nx\r\n0\r\n\r\n"
    assert sock.writes[0] == ("send", HEAD + b"1\r\nx\r\n")


def test_a_large_block_goes_by_sendmsg_uncopied():
    block = bytes(range(256)) * (http1.JOIN_BELOW // 256 + 1)
    sock = RecordingSocket()
    send_message(sock, HEAD, iter([block]), chunked=True)
    call, buffers = sock.writes[0]
    assert call == "sendmsg" and buffers[0] == HEAD and buffers[2] is block
    assert sock.wire == HEAD + b"%x\r\n" % len(block) + block + b"\r\n0\r\n\r\n"


def test_partial_writes_are_completed():
    block = b"z" * (http1.JOIN_BELOW + 1)
    sock = RecordingSocket(limit=1000)
    send_message(sock, HEAD, iter([block, b"tail"]), chunked=True)
    assert sock.writes[0][0] == "sendmsg" and len(sock.writes) > 3  # the kernel took 1000 bytes a call
    assert sock.wire == HEAD + b"%x\r\n" % len(block) + block + b"\r\n4\r\ntail\r\n0\r\n\r\n"


# -- split_url -----------------------------------------------------------------------------

@pytest.mark.parametrize("url, key, netloc, target", [
    ("http://h", ("http", "h", 80), "h", "/"),
    ("http://h/p?q=%2f", ("http", "h", 80), "h", "/p?q=%2f"),
    ("https://h", ("https", "h", 443), "h", "/"),
    ("http://h:8080", ("http", "h", 8080), "h:8080", "/"),
    ("https://h:443/a/b%2Fc?x=%41&y", ("https", "h", 443), "h:443", "/a/b%2Fc?x=%41&y"),
    ("http://[::1]/x", ("http", "::1", 80), "[::1]", "/x"),
    ("https://[2001:db8::1]:8443", ("https", "2001:db8::1", 8443), "[2001:db8::1]:8443", "/"),
    ("http://10.0.0.1:9/", ("http", "10.0.0.1", 9), "10.0.0.1:9", "/"),
    ("http://h//double", ("http", "h", 80), "h", "//double"),
])
def test_split_url(url, key, netloc, target):
    assert split_url(url) == (key, netloc, target)
