"""orproxy's pywsgi request handler, for both apps: what a byte-exact proxy needs, cheaper.

pywsgi's own handler loses the raw request target and header pairs, parses headers with
the email package (about a third of its CPU per request), writes a response's head and
first block separately (with Nagle, ~40 ms on a reused connection, FACTS.md) and asks
SO_SNDBUF on every sendall. This one keeps the wire form for the app (`orproxy.raw_uri`,
`orproxy.headers`, `orproxy.socket` in the environ, read by incoming.py), sets
TCP_NODELAY, writes the head with the first block, and lets the app word the 400 for a
request too malformed to reach it (HostedApp.malformed_request).

It reads heads by framing.py's rules, within the app's HeadLimits: pywsgi's own reading
forwards what two parsers read differently. It overrides pywsgi methods
(`handle_one_request`, `read_request`, `_write_with_headers`, `_sendall`,
`_handle_client_error`) that gevent 24-26 define; tests/test_proxy_* and
tests/test_security.py fail loudly if a release changes them.
"""
from __future__ import annotations

from typing import Any

import gevent
from gevent import socket
from gevent.pywsgi import WSGIHandler

from orproxy.hosting.framing import Refused, framing, read_fields, request_line
from orproxy.http1 import send_all



class WireHeaders:
    """Request headers as pywsgi needs them, parsed without the email package.

    pywsgi parses headers with `http.client.parse_headers` (the email package): about a
    third of its CPU per request. This keeps the wire form: `pairs` is the list of
    (name as sent, value) in wire order, and offers what pywsgi uses of a message.
    """

    __slots__ = ("pairs", "status", "_index")

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs
        self.status = ""  # pywsgi answers 400 when set: framing.py has refused such heads already
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


class _HeadTooSlow(Refused):
    """The head took longer than its limit to arrive (raised by its deadline)."""


class RawRequestHandler(WSGIHandler):
    """pywsgi's handler with the wire form kept and fewer, cheaper writes (module docstring).
    Its server is a server.GracefulWSGIServer, whose idle connections it tracks."""

    def __init__(self, sock: socket.socket, address: Any, server: Any, rfile: Any = None) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not TCP (a Unix socket)
        super().__init__(sock, address, server, rfile)

    # -- reading a head: framing.py's rules, within the limits and the time it may take --------

    def handle_one_request(self) -> Any:
        """Wait for the next request's first byte up to the idle timeout (a keep-alive
        connection that stays quiet is closed, silently); from there the head has
        `head_timeout` seconds to arrive whole (else 408: a slowloris ties up nothing)."""
        limits = self.server.application.limits
        if self.rfile.closed:
            return None
        self.before_waiting()
        self.socket.settimeout(limits.idle_timeout)
        try:
            if not self.rfile.peek(1):
                return None
        except OSError:  # the idle timeout, or the client gone
            return None
        finally:
            self.socket.settimeout(None)
        self._deadline = gevent.Timeout.start_new(limits.head_timeout, _HeadTooSlow(
            "408 Request Timeout", f"the request head did not arrive within {limits.head_timeout:g} s"))
        try:
            return super().handle_one_request()
        except _HeadTooSlow as slow:  # in the request line (pywsgi passes only socket errors on)
            return self._refusal(slow)
        finally:
            self._deadline.close()

    def before_waiting(self) -> None:
        """A hook: the connection is about to wait for its next request."""

    def read_request(self, raw_requestline: str) -> bool:
        """The request line and fields, by framing.py's rules (pywsgi's own reading would
        forward what two parsers read differently)."""
        limits = self.server.application.limits
        line = raw_requestline.encode("latin-1")
        self.requestline = raw_requestline.rstrip()
        self.command, self.path, self.request_version = request_line(line)
        self.headers = WireHeaders(read_fields(self.rfile, limits, len(line)))
        self._deadline.close()  # the head is here: the app's own time is not bounded here
        self.content_length = framing(self.headers.pairs)
        if self.content_length and self.command == "HEAD":
            raise Refused("400 Bad Request", "a HEAD request with a body")
        connection = (self.headers.get("connection") or "").lower()
        if self.request_version == "HTTP/1.1":
            self.close_connection = connection == "close"
        else:
            self.close_connection = connection != "keep-alive"
        return True

    def _refusal(self, refused: Refused) -> tuple[str, bytes]:
        """The app's own answer (HostedApp.malformed_request) to a head refused, and the
        end of the connection: nothing of it is forwarded."""
        self.close_connection = True
        return refused.status[:3], self.server.application.malformed_request(str(refused), refused.status)

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
        """A request too malformed to reach the app: the app words the answer (pywsgi's
        documented hook for this; its default is an empty 400)."""
        super()._handle_client_error(ex)  # pywsgi's bookkeeping (closes the connection)
        if not isinstance(ex, Refused):
            ex = Refused("400 Bad Request", getattr(ex, "formatted_message", None) or str(ex) or type(ex).__name__)
        return self._refusal(ex)

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
