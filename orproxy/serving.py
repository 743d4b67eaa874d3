"""Serving a WSGI app on gevent: TCP_NODELAY, the raw request for the proxy, graceful stop.

Both commands use `serve()`. gunicorn users get the same apps from orproxy.wsgi.
"""
from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import Any

import gevent
from gevent.event import Event
from gevent import socket
from gevent.pool import Pool
from gevent.pywsgi import WSGIHandler, WSGIServer


class RawRequestHandler(WSGIHandler):
    """pywsgi's handler, plus what a byte-exact proxy needs and without its two traps.

    - TCP_NODELAY: pywsgi writes the head and the first body block separately; with Nagle on,
      a reused connection waits ~40 ms for a delayed ACK (FACTS.md).
    - The raw request target and header lines, which PATH_INFO and HTTP_* keys lose.
    """

    def __init__(self, sock: socket.socket, address: Any, server: Any, rfile: Any = None) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not TCP (a Unix socket)
        super().__init__(sock, address, server, rfile)

    def get_environ(self) -> dict[str, Any]:
        env = super().get_environ()
        env["orproxy.raw_uri"] = self.path
        env["orproxy.socket"] = self.socket
        headers: list[tuple[str, str]] = []
        for line in self.headers.headers:
            if line[:1] in " \t" and headers:  # obsolete line folding (RFC 9112 5.2)
                name, value = headers[-1]
                headers[-1] = (name, f"{value} {line.strip()}")
            else:
                name, _, value = line.partition(":")
                headers.append((name.strip(), value.strip()))
        env["orproxy.headers"] = headers
        return env

    def log_request(self) -> None:
        """The proxy prints its own console line; pywsgi's access log would double it."""

    def _handle_client_error(self, ex: Exception) -> tuple[str, bytes]:
        """A request too malformed to reach the app: the app words the 400 if it can
        (pywsgi's documented hook for this; its default is an empty 400)."""
        default = super()._handle_client_error(ex)
        malformed_request = getattr(self.server.application, "malformed_request", None)
        if malformed_request is None:
            return default
        message = getattr(ex, "formatted_message", None) or str(ex) or type(ex).__name__
        return "400", malformed_request(f"malformed request: {message}")

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


class GracefulWSGIServer(WSGIServer):
    """Stops by letting requests in flight finish, while idle keep-alive connections close."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, spawn=Pool(), **kwargs)
        self.idle_handlers: set[RawRequestHandler] = set()
        self.stopping = False

    def stop_gracefully(self, timeout: float) -> None:
        self.stopping = True
        self.close()  # no new connections
        for handler in list(self.idle_handlers):
            try:
                handler.socket.shutdown(socket.SHUT_RD)  # its wait for a request line ends
            except OSError:
                pass
        self.pool.join(timeout=timeout)
        self.pool.kill(block=True, timeout=1)


def serve(app: Callable, host: str, port: int, name: str, shutdown_timeout: float = 10.0) -> None:
    """Serve until SIGINT/SIGTERM, then let in-flight requests finish for `shutdown_timeout`."""
    server = GracefulWSGIServer((host, port), app, handler_class=RawRequestHandler, log=None,
                                error_log=sys.stderr)
    server.init_socket()
    bound_host, bound_port = server.socket.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    print(f"{name} listening on http://{shown}:{bound_port}", flush=True)

    stopping = Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(signum, stopping.set)
    server.start()
    stopping.wait()
    server.stop_gracefully(shutdown_timeout)
