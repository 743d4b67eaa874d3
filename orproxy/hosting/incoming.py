"""What the client sent, as the wire had it: the proxy's only reader of the WSGI environ.

gevent's pywsgi, through orproxy's handler (handler.py), gives the raw request target, the
raw header pairs and the socket; gunicorn's `-k gevent` gives `RAW_URI` and
`gunicorn.socket`, and headers only as `HTTP_*` keys (their case is lost there, and
repeats arrive comma-joined); any other server, what WSGI allows. `Incoming` turns each
into one typed request, and does for the proxy what needs the server's internals: reading
the body as it arrives, cutting the connection, and taking it over for a WebSocket tunnel.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from gevent import socket

from orproxy.errors import ClientBodyError
from orproxy.headers import Headers, header_value

BLOCK = 65536
TAKE_BLOCK = 256 * 1024  # bytes the server may hold past an upgrade's head


class Incoming:
    """One request: method, raw target, raw header pairs, the client's address and socket."""

    __slots__ = ("method", "target", "headers", "client_addr", "socket", "_environ")

    def __init__(self, environ: dict[str, Any]) -> None:
        self._environ = environ
        self.method: str = environ["REQUEST_METHOD"]
        self.client_addr: str = environ.get("REMOTE_ADDR", "")
        raw = environ.get("orproxy.raw_uri") or environ.get("RAW_URI")
        if raw is None:  # another server: rebuild it, as close as WSGI allows
            query = environ.get("QUERY_STRING")
            raw = environ.get("PATH_INFO", "/") + (f"?{query}" if query else "")
        self.target: str = raw
        headers = environ.get("orproxy.headers")
        self.headers: Headers = headers if headers is not None else _from_cgi_keys(environ)
        self.socket: socket.socket | None = environ.get("orproxy.socket") or environ.get("gunicorn.socket")

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def host(self) -> str:
        """The Host the client called (for the logged X-Proxy-Path)."""
        return header_value(self.headers, "host") or ""

    def body(self, length: int | None) -> Iterator[bytes]:
        """The request body in blocks as it arrives; ClientBodyError if it ends early.

        Both servers de-chunk chunked uploads before `wsgi.input` (FACTS.md), so `length` is
        None for those and the stream ends at EOF.
        """
        read = self._environ["wsgi.input"].read
        remaining = length
        while remaining is None or remaining > 0:
            try:
                block = read(BLOCK if remaining is None else min(BLOCK, remaining))
            except (OSError, ValueError) as e:
                raise ClientBodyError(f"the request body could not be read: {e}") from e
            if not block:
                if remaining:
                    raise ClientBodyError(f"the request body ended {remaining} bytes early")
                return
            if remaining is not None:
                remaining -= len(block)
            yield block

    def cut(self) -> None:
        """Shut the client's connection: after a head was sent, the client must see an
        incomplete response, never a clean end."""
        if self.socket is not None:
            try:
                self.socket.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def take_connection(self) -> tuple[socket.socket, bytes]:
        """The client's socket for a tunnel, and the bytes its server had already read past
        the upgrade's head.

        A client may send its first frames in the same packet as the handshake (FACTS.md):
        pywsgi holds them in its rfile (for an upgrade, `wsgi.input` is that rfile), gunicorn
        in its parser's unreader. Both are taken without waiting for more.
        """
        environ = self._environ
        sock = environ.get("orproxy.socket")
        if sock is not None:  # pywsgi, through handler.RawRequestHandler
            rfile = getattr(environ["wsgi.input"], "rfile", environ["wsgi.input"])
            timeout = sock.gettimeout()
            sock.settimeout(0.0)  # read1 returns the buffered bytes, or b'' rather than wait
            try:
                buffered = rfile.read1(TAKE_BLOCK)
            except OSError:
                buffered = b""
            finally:
                sock.settimeout(timeout)
            rfile.close()  # so pywsgi ends the connection instead of reading another request
            return sock, buffered
        reader = getattr(environ.get("wsgi.input"), "reader", None)
        take = getattr(getattr(reader, "unreader", None), "take_buffered", None)
        return environ["gunicorn.socket"], take() if take else b""

    def handed_over(self) -> Any:
        """What the app returns once it wrote the response itself on a taken connection:
        gunicorn's async workers know ALREADY_HANDLED; pywsgi, given no status and no body,
        writes nothing."""
        if "orproxy.socket" not in self._environ and "gunicorn.socket" in self._environ:
            from gunicorn.workers.base_async import ALREADY_HANDLED
            return ALREADY_HANDLED
        return []


def _from_cgi_keys(environ: dict[str, Any]) -> Headers:
    found = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            found.append((key[5:].replace("_", "-").title(), value))
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            found.append((key.replace("_", "-").title(), value))
    return found


def raw_path(environ: dict[str, Any]) -> str:
    """The path as the client sent it, nothing decoded (`%2F` stays three characters): an
    app that routes on it sees `/..%2F..%2Fetc/request` as one bad id, not as a path."""
    raw = environ.get("orproxy.raw_uri") or environ.get("RAW_URI")
    if raw is None:
        return environ.get("PATH_INFO", "/")
    return raw.partition("?")[0]


def local_address(environ: dict[str, Any]) -> tuple[str, int] | None:
    """The (host, port) the connection came in on: the listen address that served it. From
    the socket itself: gunicorn's SERVER_NAME and SERVER_PORT come from the Host header."""
    sock = environ.get("orproxy.socket") or environ.get("gunicorn.socket")
    try:
        return sock.getsockname()[:2] if sock is not None else None
    except OSError:
        return None
