"""The transport: a requests adapter that speaks HTTP/1.1 itself on pooled gevent sockets.

Why not requests' own HTTPAdapter: urllib3 re-encodes the path (`%2f` becomes `%2F`), adds
headers of its own, and its reads hold SSE events back (FACTS.md); its CPU cost per request
is most of a proxy's budget. This adapter writes the request head exactly as given, streams
the body with the framing the caller chose, parses the response with httptools, and hands
back a `requests.Response` whose `raw` returns body bytes as soon as they arrive.

Callers use it through `session.get_adapter(url).send(...)`, not `Session.send`, which
would store cookies across users, resolve proxies from the environment and read redirect
bodies: none of which a proxy may do.
"""
from __future__ import annotations

import datetime
import functools
import ipaddress
from collections import deque
from collections.abc import Iterable
from typing import Any

import httptools
import requests
from gevent import monkey, socket, ssl
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from orproxy.headers import Headers, header_value

BLOCK = 65536
# The real poll: with a zero timeout it never blocks, so the event loop is safe.
_poll = monkey.get_original("select", "poll")
_POLLIN = 0x001 | 0x008 | 0x010  # POLLIN | POLLERR | POLLHUP


_MAX_PARTS = 1024  # buffers per sendmsg (IOV_MAX)
JOIN_BELOW = 8192  # bytes of data up to which a write's parts are joined, not sendmsg'd
Block = bytes | memoryview  # a body block; a chunk may also be a list of them

_RECEIVED = bytearray(BLOCK)


def receive(sock: socket.socket) -> memoryview:
    """Up to BLOCK bytes as they arrive, in one shared buffer (no 64 KiB allocation per call).

    Safe because every caller parses the view at once, before any greenlet switch: the
    parser copies what it keeps.
    """
    return memoryview(_RECEIVED)[:sock.recv_into(_RECEIVED)]


def send_all(sock: socket.socket, data: bytes) -> None:
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


class UpstreamBroken(requests.exceptions.ChunkedEncodingError):
    """The upstream closed the connection before the end of the response body."""


class Connection:
    """One keep-alive socket to one origin."""

    __slots__ = ("sock", "key")

    def __init__(self, sock: socket.socket, key: tuple[str, str, int]) -> None:
        self.sock = sock
        self.key = key

    def is_reusable(self) -> bool:
        """An idle connection is usable only if the peer has neither closed it nor sent bytes.

        A zero-timeout poll is one cheap syscall and works for TLS sockets too.
        """
        poller = _poll()
        poller.register(self.sock.fileno(), _POLLIN)
        return not poller.poll(0)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class ConnectionPool:
    """Idle connections per origin; never blocks: with none idle, a new one is opened.

    A pool smaller than peak concurrency makes streams wait for each other or reconnect for
    every request (FACTS.md, "Connection pools"), so the pool is as large as concurrency
    requires, and keeps at most `max_idle` idle connections per origin.
    """

    def __init__(self, max_idle: int = 256) -> None:
        self.max_idle = max_idle
        self.idle: dict[tuple[str, str, int], deque[Connection]] = {}
        self.tls = ssl.create_default_context(cafile=requests.certs.where())

    def get(self, key: tuple[str, str, int], connect_timeout: float) -> tuple[Connection, bool]:
        """A connection to `key` and whether it was reused from the pool."""
        idle = self.idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.is_reusable():
                return conn, True
            conn.close()
        return self._connect(key, connect_timeout), False

    def _connect(self, key: tuple[str, str, int], timeout: float) -> Connection:
        return Connection(open_connection(*key, timeout, self.tls), key)

    def put(self, conn: Connection) -> None:
        idle = self.idle.setdefault(conn.key, deque())
        if len(idle) < self.max_idle:
            idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        for idle in self.idle.values():
            while idle:
                idle.pop().close()


def open_connection(scheme: str, host: str, port: int, timeout: float,
                    tls_context: ssl.SSLContext) -> socket.socket:
    """A new TCP connection (TCP_NODELAY), wrapped in TLS for https with `tls_context`;
    failures raised as requests' ConnectTimeout, ConnectionError or SSLError. Used by the
    pool and by the WebSocket tunnel (websocket.py)."""
    try:
        if _is_ip_literal(host):  # skip the resolver's thread pool round trip
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect((host, port))
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError as e:
        raise requests.exceptions.ConnectTimeout(f"connect to {host}:{port} timed out") from e
    except OSError as e:
        raise requests.exceptions.ConnectionError(f"cannot connect to {host}:{port}: {e}") from e
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if scheme == "https":
        try:
            sock = tls_context.wrap_socket(sock, server_hostname=host)
        except (OSError, ssl.SSLError) as e:
            sock.close()
            raise requests.exceptions.SSLError(f"TLS with {host}:{port} failed: {e}") from e
    return sock


@functools.lru_cache(maxsize=256)
def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


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


class ResponseBody:
    """The `raw` of a Response: body bytes as they arrive, de-chunked, never decoded."""

    def __init__(self, conn: Connection, pool: ConnectionPool, parser_state: "_ParserState",
                 read_timeout: float) -> None:
        self.conn = conn
        self.pool = pool
        self.state = parser_state
        self.read_timeout = read_timeout
        self.headers_list: Headers = parser_state.headers
        self.version = parser_state.version
        self.closed = False
        self.aborted = False

    @property
    def complete(self) -> bool:
        return self.state.complete

    @property
    def has_buffered(self) -> bool:
        """True when a read1 would return at once (body bytes already here, or the end)."""
        return bool(self.state.chunks) or self.state.complete

    def read1(self, amt: int = BLOCK, decode_content: bool = False) -> bytes:
        """Whatever body bytes have arrived (waiting for some); b'' at the end of the body.

        Raises UpstreamBroken if the upstream closes before the body is complete.
        """
        state = self.state
        while not state.chunks:
            if state.complete or self.closed:
                self._release()
                return b""
            try:
                data = receive(self.conn.sock)
            except TimeoutError as e:
                self._discard()
                raise requests.exceptions.ReadTimeout(f"no data for {self.read_timeout} s") from e
            except OSError as e:
                self._discard()
                raise UpstreamBroken(f"upstream connection failed: {e}") from e
            if not data:
                if state.close_delimited and not self.aborted:
                    state.complete = True
                    self._discard()
                    return b""
                self._discard()
                raise UpstreamBroken("upstream closed the connection before the end of the body")
            state.feed(data)
        chunk = state.chunks.popleft()
        if len(chunk) > amt:
            state.chunks.appendleft(chunk[amt:])
            chunk = chunk[:amt]
        return chunk

    def read(self, amt: int | None = None, decode_content: bool = False) -> bytes:
        """requests' `Response.content` reads through here; the proxy itself uses read1."""
        if amt is not None:
            return self.read1(amt)
        return b"".join(iter(lambda: self.read1(BLOCK), b""))

    def abort(self) -> None:
        """Close the upstream connection now, from any greenlet (e.g. the client went away)."""
        self.aborted = True
        if not self.closed:
            try:
                self.conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        if not self.closed:
            if self.state.complete and self.state.keep_alive:
                self._release()
            else:
                self._discard()

    def _release(self) -> None:
        if not self.closed:
            self.closed = True
            if self.state.keep_alive and not self.aborted and not self.state.extra:
                self.pool.put(self.conn)
            else:
                self.conn.close()

    def _discard(self) -> None:
        if not self.closed:
            self.closed = True
            self.conn.close()


class _ParserState:
    """httptools callbacks collect the head and queue body chunks here."""

    def __init__(self, no_body: bool) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.no_body = no_body
        self.headers: Headers = []
        self.chunks: deque[bytes] = deque()
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.close_delimited = False
        self.extra = False
        self.status = 0
        self.reason = ""
        self.version = "1.1"
        self._reason_parts: list[bytes] = []

    def feed(self, data: bytes) -> None:
        if self.complete:
            self.extra = True  # bytes after the end of the message: don't reuse
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # a 101: the head is complete, the rest belongs to the tunnel
        except httptools.HttpParserError as e:
            raise UpstreamBroken(f"malformed response from upstream: {e}") from e

    # httptools callbacks
    def on_status(self, status: bytes) -> None:
        self._reason_parts.append(status)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> bool | None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.headers, self._reason_parts = [], []  # interim (RFC 9110 15.2): skip it
            return None
        self.status = status
        self.reason = b"".join(self._reason_parts).decode("latin-1")
        self.version = self.parser.get_http_version()
        self.keep_alive = self.parser.should_keep_alive()
        self.head_done = True
        if self.no_body or status in (101, 204, 304):
            self.complete = True
            self.keep_alive = self.keep_alive and status != 101
            return None  # HEAD: llhttp would wait for a body; `complete` ends reading here
        te = header_value(self.headers, "transfer-encoding")
        self.close_delimited = header_value(self.headers, "content-length") is None and not (
            te and "chunked" in te.lower())
        return None

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.head_done:
            self.complete = True


class LeanResponse(requests.Response):
    """A requests.Response whose header dict and cookie jar are built only if asked for:
    the proxy reads the raw header list, and building both cost more than parsing the head."""

    def __init__(self, status: int, reason: str, headers: Headers) -> None:  # noqa: D107
        self._content = False
        self._content_consumed = False
        self._next = None
        self.status_code, self.reason, self._headers_list = status, reason, headers
        self._headers: CaseInsensitiveDict | None = None
        self._cookies: Any = None
        self.encoding = None
        self.history: list[requests.Response] = []
        self.elapsed = datetime.timedelta(0)

    @property
    def headers(self) -> CaseInsensitiveDict:  # type: ignore[override]
        if self._headers is None:
            self._headers = CaseInsensitiveDict(self._headers_list)
        return self._headers

    @headers.setter
    def headers(self, value: CaseInsensitiveDict) -> None:
        self._headers = value

    @property
    def cookies(self) -> Any:  # type: ignore[override]
        if self._cookies is None:
            self._cookies = requests.cookies.cookiejar_from_dict({})
        return self._cookies

    @cookies.setter
    def cookies(self, value: Any) -> None:
        self._cookies = value


class StreamingAdapter(BaseAdapter):
    """Mounted on a requests.Session for http:// and https://; see the module docstring.

    `request.headers` is a list of (name, value) pairs sent exactly as given, after `Host`.
    `Host` is added when absent. A `Content-Length` among them means the body is sent as
    is; otherwise an iterable body goes chunked (and `Transfer-Encoding` is added if absent).
    """

    def __init__(self, max_idle: int = 256) -> None:
        super().__init__()
        self.pool = ConnectionPool(max_idle)

    def send(self, request: requests.PreparedRequest, stream: bool = True,
             timeout: Any = None, verify: Any = True, cert: Any = None,
             proxies: Any = None) -> requests.Response:
        connect_timeout, read_timeout = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        key, netloc, target = split_url(request.url)
        headers: Headers = list(request.headers)
        if header_value(headers, "host") is None:
            headers.insert(0, ("Host", netloc))
        body = request.body
        has_length = header_value(headers, "content-length") is not None
        if isinstance(body, (bytes, bytearray)):
            if not has_length:
                headers.append(("Content-Length", str(len(body))))
            blocks: Iterable[bytes] = (bytes(body),) if body else ()
        elif body is None:
            blocks = ()
        else:
            blocks = body
            if not has_length and header_value(headers, "transfer-encoding") is None:
                headers.append(("Transfer-Encoding", "chunked"))
        chunked = blocks is body and not has_length
        head = _request_head(request.method, target, headers)
        replayable = blocks is not body  # a streamed body cannot be sent twice

        for attempt in (1, 2):
            conn, reused = self.pool.get(key, connect_timeout or 10.0)
            conn.sock.settimeout(read_timeout)
            try:
                _send_request(conn.sock, head, blocks, chunked)
                state = _read_head(conn.sock, request.method == "HEAD")
                break
            except _StaleConnection:
                conn.close()
                if attempt == 2 or not (reused and replayable):
                    raise requests.exceptions.ConnectionError(
                        "upstream closed the connection without answering") from None
            except TimeoutError as e:
                conn.close()
                raise requests.exceptions.ReadTimeout(f"no response within {read_timeout} s") from e
            except (OSError, UpstreamBroken) as e:
                conn.close()
                raise requests.exceptions.ConnectionError(f"upstream failed: {e}") from e
            except BaseException:  # the body's own error, or the greenlet killed: not reusable
                conn.close()
                raise

        response = LeanResponse(state.status, state.reason, state.headers)
        response.raw = ResponseBody(conn, self.pool, state, read_timeout or 0)
        response.url = request.url
        response.request = request
        response.connection = self
        return response

    def close(self) -> None:
        self.pool.close()


class _StaleConnection(Exception):
    """A pooled connection the peer had closed: nothing was answered."""


def _request_head(method: str, target: str, headers: Headers) -> bytes:
    lines = [f"{method} {target} HTTP/1.1"]
    lines.extend(f"{n}: {v}" for n, v in headers)
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")


def _send_request(sock: socket.socket, head: bytes, blocks: Iterable[Block], chunked: bool) -> None:
    """Send the head together with the first body block (one write, no Nagle wait), then
    each block as it comes, chunk-framed when the body has no Content-Length. A block may
    be a list of buffers: they go out as one chunk, in one write, without being joined."""
    pending = [head]
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


def _read_head(sock: socket.socket, no_body: bool) -> _ParserState:
    state = _ParserState(no_body)
    while not state.head_done:
        data = receive(sock)
        if not data:
            if not state.headers and not state._reason_parts:
                raise _StaleConnection()
            raise UpstreamBroken("upstream closed the connection inside the response head")
        state.feed(data)
    return state
