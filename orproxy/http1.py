"""The proxy's HTTP/1.1 layer: the only code that writes message heads and parses responses.

Three clients of the proxy speak HTTP/1.1 to other servers: the transport (to upstreams),
the log lane (pipelined PUTs to the logging server) and the WebSocket handshake. They
share this module: `head()` writes a start line and headers exactly as given,
`ResponseParser` reads responses with httptools (llhttp), one or several pipelined on one
connection, `read_head()` receives until a head is whole, and `receive`, `send_all` and
`send_parts` are the socket calls, cheaper than gevent's own (no per-call buffer or
SO_SNDBUF query).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import httptools
from gevent import socket, ssl

from orproxy.headers import Headers, header_value

BLOCK = 65536
MAX_HEAD = 65536                     # bytes of a response head we accept
JOIN_BELOW = 8192                    # bytes of data up to which a write's parts are joined
_MAX_PARTS = 1024                    # buffers per sendmsg (IOV_MAX)
Block = bytes | memoryview           # a body block; a chunk may also be a list of them

_RECEIVED = bytearray(BLOCK)


class MalformedResponse(Exception):
    """The peer's answer is not HTTP/1.1 we can read (or it broke off inside its head)."""


class _AfterTheEnd(Exception):
    """Raised inside httptools to stop it at bytes that follow a complete response."""


class NoResponse(Exception):
    """The peer closed the connection without sending a byte (a stale pooled connection)."""


# --- sockets ---------------------------------------------------------------------------

def receive(sock: socket.socket) -> memoryview:
    """Up to BLOCK bytes as they arrive, in one shared buffer (no 64 KiB allocation per call).

    Safe because every caller parses the view at once, before any greenlet switch: the
    parser copies what it keeps.
    """
    return memoryview(_RECEIVED)[:sock.recv_into(_RECEIVED)]


def send_all(sock: socket.socket, data: bytes | memoryview) -> None:
    """sendall without gevent's per-call SO_SNDBUF query and memoryview set-up."""
    sent = sock.send(data)
    if sent < len(data):
        view = memoryview(data)
        while sent < len(data):
            sent += sock.send(view[sent:])


def send_parts(sock: socket.socket, parts: list[Block], size: int) -> None:
    """Several buffers in one write: joined when their data (`size` bytes, framing aside)
    is small (cheaper than sendmsg), else by sendmsg, not copied (a large block costs no
    copy for its chunk framing). TLS sockets have no sendmsg."""
    if len(parts) == 1:
        send_all(sock, parts[0])
        return
    if size <= JOIN_BELOW or isinstance(sock, ssl.SSLSocket):
        send_all(sock, b"".join(parts))
        return
    sent = sock.sendmsg(parts[:_MAX_PARTS])
    for part in parts:
        if sent >= len(part):
            sent -= len(part)
            continue
        send_all(sock, memoryview(part)[sent:] if sent else part)  # the rest: one by one
        sent = 0


# --- writing ---------------------------------------------------------------------------

def head(first_line: str, headers: Headers) -> bytes:
    """A raw HTTP head: the start line, the headers as given (order, case, repeats), CRLF
    line ends and the blank line that ends it. Header text is latin-1, as it was read."""
    lines = [first_line, *(f"{n}: {v}" for n, v in headers), "", ""]
    return "\r\n".join(lines).encode("latin-1", "replace")


def send_message(sock: socket.socket, message_head: bytes, blocks: Iterable[Block], chunked: bool) -> None:
    """Send a head together with the first body block (one write, no Nagle wait), then each
    block as it comes, chunk-framed when `chunked`. A block may be a list of buffers: they
    go out as one chunk, in one write, without being joined."""
    pending = [message_head]
    for block in blocks:
        parts = block if isinstance(block, list) else [block]
        size = sum(map(len, parts))
        if not size:
            continue
        if chunked:
            send_parts(sock, [*pending, b"%x\r\n" % size, *parts, b"\r\n"], size)
        else:
            send_parts(sock, [*pending, *parts], size)
        pending = []
    if chunked:
        pending.append(b"0\r\n\r\n")
    if pending:
        send_parts(sock, pending, 0)


def split_url(url: str) -> tuple[tuple[str, str, int], str, str]:
    """`https://h:8443/p?q` -> ((scheme, host, port), netloc, target), target kept byte for byte."""
    scheme, _, rest = url.partition("://")
    slash = rest.find("/")
    netloc, target = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])
    host, port = netloc, 443 if scheme == "https" else 80
    if netloc.startswith("["):
        end = netloc.index("]")
        host = netloc[1:end]
        if netloc[end + 1:end + 2] == ":":
            port = int(netloc[end + 2:])
    elif ":" in netloc:
        host, _, port_text = netloc.rpartition(":")
        port = int(port_text)
    return (scheme, host, port), netloc, target


# --- reading ---------------------------------------------------------------------------

class ResponseParser:
    """One response (or, `pipelined`, a series of them) parsed by httptools as bytes arrive.

    The head of the current response (`status`, `reason`, `version`, `headers`), its body
    chunks de-chunked but never decoded, and the end: `complete`. A 101's head completes
    it (what follows belongs to the tunnel); so does a head for a request that has no body
    to read (`no_body`, e.g. HEAD). Interim 1xx responses are skipped (RFC 9110 15.2).
    `completed` lists the status of every response that ended (the lane counts its
    pipelined replies by it).
    """

    __slots__ = ("parser", "no_body", "pipelined", "headers", "chunks", "head_done", "complete",
                 "keep_alive", "close_delimited", "extra", "status", "reason", "version",
                 "completed", "_reason_parts")

    def __init__(self, no_body: bool = False, pipelined: bool = False) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.no_body = no_body
        self.pipelined = pipelined
        self.headers: Headers = []
        self.chunks: deque[bytes] = deque()
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.close_delimited = False
        self.extra = False         # bytes came after the end: the connection is not reusable
        self.status = 0
        self.reason = ""
        self.version = "1.1"
        self.completed: list[int] = []
        self._reason_parts: list[bytes] = []

    def feed(self, data: bytes | memoryview) -> None:
        """Parse what arrived; MalformedResponse if it is not a response we can read."""
        if self.complete and not self.pipelined:
            self.extra = True
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.complete = True  # a 101: the head is complete, the rest belongs to the tunnel
        except httptools.HttpParserCallbackError:
            if not self.extra:
                raise
        except httptools.HttpParserError as e:
            raise MalformedResponse(f"malformed response: {e}") from e

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self.complete and not self.pipelined:
            # Bytes after the end, in the same buffer: not a next response to relay, a reason
            # not to reuse the connection. Raising stops llhttp here.
            self.extra = True
            raise _AfterTheEnd()
        self.headers, self._reason_parts, self.head_done = [], [], False

    def on_status(self, status: bytes) -> None:
        self._reason_parts.append(status)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            return  # interim: the real head follows
        self.status = status
        self.reason = b"".join(self._reason_parts).decode("latin-1")
        self.version = self.parser.get_http_version()
        self.keep_alive = self.parser.should_keep_alive() and status != 101
        self.head_done = True
        if status in (101, 204, 304) or (self.no_body and not self.pipelined):
            self.complete = True  # HEAD: llhttp would wait for a body that never comes
            return
        te = header_value(self.headers, "transfer-encoding")
        self.close_delimited = header_value(self.headers, "content-length") is None and not (
            te and "chunked" in te.lower())

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.head_done:
            self.completed.append(self.status)
            self.complete = True


def read_head(sock: socket.socket, parser: ResponseParser, raw: bytearray | None = None) -> None:
    """Receive until `parser` holds a whole head (and, into `raw` if given, keep every byte
    received). NoResponse when the peer closes before its first byte; MalformedResponse
    when it closes inside the head, or the head exceeds MAX_HEAD."""
    received = 0
    while not parser.head_done:
        try:
            data = receive(sock)
        except ConnectionResetError:
            if received:
                raise
            raise NoResponse() from None  # reset before any byte: the same, for a pooled connection
        if not data:
            if not received:
                raise NoResponse()
            raise MalformedResponse("the connection closed inside the response head")
        received += len(data)
        if raw is not None:
            raw += data
        parser.feed(data)
        if not parser.head_done and received > MAX_HEAD:
            raise MalformedResponse(f"the response head is larger than {MAX_HEAD} bytes")
