"""The transport: a requests adapter that speaks HTTP/1.1 itself on pooled gevent sockets.

Why not requests' own HTTPAdapter: urllib3 re-encodes the path (`%2f` becomes `%2F`), adds
headers of its own, and its reads hold SSE events back (FACTS.md); its CPU cost per request
is most of a proxy's budget. This adapter writes the request head exactly as given, streams
the body with the framing the caller chose, parses the response with httptools (http1.py),
and hands back a `requests.Response` whose `raw` returns body bytes as soon as they arrive.

It keeps requests' contract, so the proxy works with HTTPAdapter mounted in its place (only
slower and less exact): request headers are a `HeaderPairs`, `raw.headers.items()` gives
the response's pairs, `raw.version` is 11 or 10, `raw.read1(n, decode_content=False)` reads,
and failures are requests' exceptions (errors.py maps them to the contract's codes).

Callers use it through `session.get_adapter(url).send(...)`, not `Session.send`, which
would store cookies across users, resolve proxies from the environment and read redirect
bodies: none of which a proxy may do.
"""
from __future__ import annotations

import datetime
from collections.abc import Iterable, Iterator
from typing import Any

import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from orproxy.connections import Connection, ConnectionPool
from orproxy.headers import HeaderPairs, Headers, header_value
from orproxy.http1 import (BLOCK, MalformedResponse, NoResponse, ResponseParser, head, read_head, receive,
                           send_message, split_url)


REPLAY_LIMIT = 1024 * 1024  # bytes of a request body kept, to send it again on a stale connection


class UpstreamBroken(requests.exceptions.ChunkedEncodingError):
    """The upstream closed the connection before the end of the response body."""


class ResponseBody:
    """The `raw` of a Response: body bytes as they arrive, de-chunked, never decoded."""

    def __init__(self, conn: Connection, pool: ConnectionPool, parser: ResponseParser,
                 read_timeout: float) -> None:
        self.conn = conn
        self.pool = pool
        self.parser = parser
        self.read_timeout = read_timeout
        self.headers = HeaderPairs(parser.headers)
        self.version = 10 if parser.version == "1.0" else 11
        self.closed = False

    @property
    def has_buffered(self) -> bool:
        """True when a read1 would return at once (body bytes already here, or the end)."""
        return bool(self.parser.chunks) or self.parser.complete

    def read1(self, amt: int = BLOCK, decode_content: bool = False) -> bytes:
        """Whatever body bytes have arrived (waiting for some); b'' at the end of the body.

        Raises UpstreamBroken if the upstream closes before the body is complete.
        """
        parser = self.parser
        while not parser.chunks:
            if parser.complete or self.closed:
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
                self._discard()
                if parser.close_delimited:
                    parser.complete = True
                    return b""
                raise UpstreamBroken("upstream closed the connection before the end of the body")
            try:
                parser.feed(data)
            except MalformedResponse as e:
                self._discard()
                raise UpstreamBroken(str(e)) from e
        chunk = parser.chunks.popleft()
        if len(chunk) > amt:
            parser.chunks.appendleft(chunk[amt:])
            chunk = chunk[:amt]
        return chunk

    def read(self, amt: int | None = None, decode_content: bool = False) -> bytes:
        """requests' `Response.content` reads through here; the proxy itself uses read1."""
        if amt is not None:
            return self.read1(amt)
        return b"".join(iter(lambda: self.read1(BLOCK), b""))

    def close(self) -> None:
        if not self.closed:
            if self.parser.complete and self.parser.keep_alive:
                self._release()
            else:
                self._discard()

    def _release(self) -> None:
        if not self.closed:
            self.closed = True
            if self.parser.keep_alive and not self.parser.extra:
                self.pool.put(self.conn)
            else:
                self.conn.close()

    def _discard(self) -> None:
        if not self.closed:
            self.closed = True
            self.conn.close()


class _Replay:
    """A request body sent so that it can be sent again: the blocks that went out are kept,
    up to REPLAY_LIMIT bytes (past that, `possible` is False), and `blocks()` on a second
    try sends them again, then goes on with the rest of the body."""

    __slots__ = ("source", "sent", "size")

    def __init__(self, blocks: Iterable[bytes]) -> None:
        self.source = iter(blocks)
        self.sent: list[bytes] | None = []
        self.size = 0

    @property
    def possible(self) -> bool:
        return self.sent is not None

    def blocks(self) -> Iterator[bytes]:
        yield from self.sent or ()
        for block in self.source:
            if self.sent is not None:
                self.size += len(block)
                if self.size <= REPLAY_LIMIT:
                    self.sent.append(block)
                else:
                    self.sent = None
            yield block


class LeanResponse(requests.Response):
    """A requests.Response whose header dict and cookie jar are built only if asked for:
    the proxy reads the raw header pairs, and building both cost more than parsing the head."""

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

    `request.headers` (a HeaderPairs, or any mapping) is sent pair by pair exactly as
    given; `Host` is added when absent. A `Content-Length` among them means the body is
    sent as is; otherwise an iterable body goes chunked (`Transfer-Encoding` added if absent).
    """

    def __init__(self, max_idle: int = 256) -> None:
        super().__init__()
        self.pool = ConnectionPool(max_idle)

    def send(self, request: requests.PreparedRequest, stream: bool = True,
             timeout: Any = None, verify: Any = True, cert: Any = None,
             proxies: Any = None) -> requests.Response:
        connect_timeout, read_timeout = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        key, netloc, target = split_url(request.url)
        headers: Headers = list(request.headers.items())
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
        message_head = head(f"{request.method} {target} HTTP/1.1", headers)
        replay = _Replay(blocks)

        for attempt in (1, 2):
            conn, reused = self.pool.get(key, connect_timeout or 10.0, fresh=attempt == 2)
            conn.sock.settimeout(read_timeout)
            parser = ResponseParser(no_body=request.method == "HEAD")
            try:
                # Only a pooled connection can turn out stale: only then is the body kept.
                send_message(conn.sock, message_head, replay.blocks() if reused or attempt == 2 else replay.source,
                             chunked)
                read_head(conn.sock, parser)
                break
            except (NoResponse, BrokenPipeError, ConnectionResetError) as e:
                # A pooled connection the upstream closed while it was idle: nothing was
                # answered, so the request goes again, once, on a new connection, if what
                # was sent of its body can be sent again.
                conn.close()
                if attempt == 2 or not reused or not replay.possible:
                    raise requests.exceptions.ConnectionError(
                        f"upstream closed the connection without answering{f' ({e})' if str(e) else ''}") from None
            except TimeoutError as e:
                conn.close()
                raise requests.exceptions.ReadTimeout(f"no response within {read_timeout} s") from e
            except (OSError, MalformedResponse) as e:
                conn.close()
                raise requests.exceptions.ConnectionError(f"upstream failed: {e}") from e
            except BaseException:  # the body's own error, or the greenlet killed: not reusable
                conn.close()
                raise

        response = LeanResponse(parser.status, parser.reason, parser.headers)
        response.raw = ResponseBody(conn, self.pool, parser, read_timeout or 0)
        response.url = request.url
        response.request = request
        response.connection = self
        return response

    def close(self) -> None:
        self.pool.close()
