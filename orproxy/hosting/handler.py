"""orproxy's pywsgi request handler, for both apps: what a byte-exact proxy needs, cheaper.

pywsgi's own handler loses the raw request target and header pairs, parses headers with
the email package (about a third of its CPU per request), writes a response's head and
first block separately (with Nagle, ~40 ms on a reused connection, FACTS.md) and asks
SO_SNDBUF on every sendall. This one keeps the wire form for the app (`orproxy.raw_uri`,
`orproxy.headers`, `orproxy.socket` in the environ, read by incoming.py), sets
TCP_NODELAY, writes the head with the first block, and lets the app word the 400 for a
request too malformed to reach it (HostedApp.malformed_request).

It overrides pywsgi methods (`MessageClass`, `_write_with_headers`, `_sendall`,
`_handle_client_error`) that gevent 24-26 define; tests/test_proxy_* fail loudly if a
release changes them.
"""
from __future__ import annotations

from typing import Any

from gevent import socket
from gevent.pywsgi import WSGIHandler

from orproxy.http1 import send_all

MAX_HEADER_LINE = 65536
MAX_HEADERS = 100


class WireHeaders:
    """Request headers as pywsgi needs them, parsed without the email package.

    pywsgi parses headers with `http.client.parse_headers` (the email package): about a
    third of its CPU per request. This keeps the wire form: `pairs` is the list of
    (name as sent, value) in wire order, and offers what pywsgi uses of a message.
    """

    __slots__ = ("pairs", "status", "_index")

    def __init__(self, pairs: list[tuple[str, str]], status: str = "") -> None:
        self.pairs = pairs
        self.status = status  # non-empty: pywsgi answers 400 with it
        self._index: dict[str, str] | None = None

    def get(self, name: str, default: str | None = None) -> str | None:
        if self._index is None:
            self._index = {}
            for key, value in self.pairs:
                self._index.setdefault(key.lower(), value)
        return self._index.get(name.lower(), default)

    getheader = get

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None

    def __delitem__(self, name: str) -> None:
        # Rebinds the list (as email.message does), so a reference to the wire form stays whole.
        name = name.lower()
        self.pairs = [(k, v) for k, v in self.pairs if k.lower() != name]
        self._index = None

    @property
    def typeheader(self) -> str | None:
        return self.get("content-type")

    @property
    def headers(self) -> list[str]:
        return [f"{key}: {value}\r\n" for key, value in self.pairs]


def parse_headers(rfile: Any) -> WireHeaders:
    pairs: list[tuple[str, str]] = []
    while True:
        line = rfile.readline(MAX_HEADER_LINE + 1)
        if len(line) > MAX_HEADER_LINE:
            return WireHeaders(pairs, "Header line too long")
        if line in (b"\r\n", b"\n", b""):
            return WireHeaders(pairs)
        if len(pairs) >= MAX_HEADERS:
            return WireHeaders(pairs, "Too many headers")
        text = line.decode("latin-1")
        if text[0] in " \t":  # obsolete line folding (RFC 9112 5.2): joined to the previous value
            if not pairs:
                return WireHeaders(pairs, "Continuation line without a header")
            key, value = pairs[-1]
            pairs[-1] = (key, f"{value} {text.strip()}")
            continue
        name, sep, value = text.partition(":")
        if not sep or not name or name != name.strip():
            return WireHeaders(pairs, f"malformed header line {text.rstrip()[:100]!r}")
        pairs.append((name, value.strip(" \t\r\n")))


class RawRequestHandler(WSGIHandler):
    """pywsgi's handler with the wire form kept and fewer, cheaper writes (module docstring).
    Its server is a server.GracefulWSGIServer, whose idle connections it tracks."""

    def __init__(self, sock: socket.socket, address: Any, server: Any, rfile: Any = None) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not TCP (a Unix socket)
        super().__init__(sock, address, server, rfile)

    def MessageClass(self, fp: Any, *args: Any) -> WireHeaders:  # noqa: N802 (pywsgi's name)
        return parse_headers(fp)

    def get_environ(self) -> dict[str, Any]:
        pairs = self.headers.pairs  # before get_environ may delete Content-Length
        env = super().get_environ()
        env["orproxy.raw_uri"] = self.path
        env["orproxy.socket"] = self.socket
        env["orproxy.headers"] = pairs
        return env

    def _write_with_headers(self, data: bytes) -> None:
        self.headers_sent = True
        self.finalize_headers()
        head = bytearray(b"HTTP/1.1 ")
        head += self.status
        head += b"\r\n"
        for name, value in self.response_headers:
            head += name + b": " + value + b"\r\n"
        head += b"\r\n"
        if data:
            if self.response_use_chunked:
                head += b"%x\r\n%b\r\n" % (len(data), data)
            else:
                head += data
        self._sendall(head)

    def _sendall(self, data: bytes) -> None:
        try:
            send_all(self.socket, data)
        except OSError as ex:
            self.status = f"socket error: {ex}"
            if self.code > 0:
                self.code = -self.code
            raise
        self.response_length += len(data)

    def log_request(self) -> None:
        """The proxy prints its own console line; pywsgi's access log would double it."""

    def _handle_client_error(self, ex: Exception) -> tuple[str, bytes]:
        """A request too malformed to reach the app: the app words the 400 if it can
        (pywsgi's documented hook for this; its default is an empty 400)."""
        super()._handle_client_error(ex)  # pywsgi's bookkeeping (closes the connection)
        message = getattr(ex, "formatted_message", None) or str(ex) or type(ex).__name__
        return "400", self.server.application.malformed_request(f"malformed request: {message}")

    def handle(self) -> None:
        self.server.idle_handlers.add(self)
        try:
            super().handle()
        finally:
            self.server.idle_handlers.discard(self)

    def handle_one_response(self) -> None:
        self.server.idle_handlers.discard(self)
        try:
            super().handle_one_response()
        finally:
            if self.server.stopping:
                self.close_connection = True  # finish this response, take no new request
            else:
                self.server.idle_handlers.add(self)
