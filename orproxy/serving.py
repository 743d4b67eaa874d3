"""Serving a WSGI app on gevent: TCP_NODELAY, the raw request for the proxy, graceful stop.

Both commands use `serve()`. gunicorn users get the same apps from orproxy.wsgi.
"""
from __future__ import annotations

import ctypes
import gc
import resource
import signal
import sys
from collections.abc import Callable
from typing import Any

import gevent
from gevent.event import Event
from gevent import socket
from gevent.pool import Pool
from gevent.pywsgi import WSGIHandler, WSGIServer

from orproxy.transport import send_all


LOG_DRAIN_TIMEOUT = 3.0  # seconds a stopping proxy waits for its queued log data to go out
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
    """pywsgi's handler, plus what a byte-exact proxy needs, and cheaper.

    - TCP_NODELAY, and the head sent with the first body block in one write: pywsgi writes
      them separately, and with Nagle on a reused connection waits ~40 ms for a delayed
      ACK (FACTS.md).
    - The raw request target and header pairs (`orproxy.raw_uri`, `orproxy.headers`),
      which PATH_INFO and the HTTP_* keys lose, and the socket (`orproxy.socket`).
    - A header parser and a sendall without the email package and gevent's per-call
      SO_SNDBUF query, which cost more than the proxying itself.
    These override pywsgi methods (`MessageClass`, `_write_with_headers`, `_sendall`) that
    gevent 24-26 define; tests/test_proxy_* fail loudly if a release changes them.
    """

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
    """Stops by letting requests in flight finish, while idle keep-alive connections close.

    Also the server of gunicorn's workers in orproxy.worker, which passes its own
    listening socket and pool, and stops it with `close()` and a wait for the pool.
    """

    def __init__(self, listener: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("spawn", Pool())
        if not isinstance(listener, socket.socket):
            # gevent's default listen backlog is 128: thousands of clients connecting at
            # once overflowed it (bench streams10k); the kernel caps this at somaxconn.
            kwargs.setdefault("backlog", 4096)
        super().__init__(listener, *args, **kwargs)
        self.idle_handlers: set[RawRequestHandler] = set()
        self.stopping = False

    def close(self) -> None:
        """No new connections, and idle keep-alive ones end: their handlers wait for a
        request line that will not come."""
        self.stopping = True
        super().close()
        for handler in list(self.idle_handlers):
            try:
                handler.socket.shutdown(socket.SHUT_RD)
            except OSError:
                pass

    def stop_gracefully(self, timeout: float) -> None:
        self.close()
        self.pool.join(timeout=timeout)
        self.pool.kill(block=True, timeout=1)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3   # glibc's mallopt parameters
HEAP_KEPT = 64 * 1024 * 1024                   # free heap kept rather than handed back
MMAP_ABOVE = 32 * 1024 * 1024                  # allocations this large get their own mapping


def prepare_process() -> None:
    """Process-wide settings for a server, made before its app is built."""
    raise_open_files_limit()
    keep_freed_memory()


def keep_freed_memory() -> None:
    """Let glibc's malloc keep the memory that bulk traffic frees, for the next burst.

    Each block a tunnel or a log stream holds is a fresh bytes object of up to 256 KiB. By
    default glibc gives such blocks their own mapping, or hands the top of the heap back
    once they are freed, so the next burst faults every page in again (kernel time on the
    proxy's core): 1,200-2,500 page faults per logged 16 MiB WebSocket message. Keeping up
    to HEAP_KEPT of freed heap brings that to about 150; peak memory is unchanged, the
    resident set just no longer shrinks after a burst. A no-op where mallopt is missing.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, MMAP_ABOVE)
    mallopt(M_TRIM_THRESHOLD, HEAP_KEPT)


def raise_open_files_limit() -> None:
    """Soft open-files limit up to the hard one (as Go's runtime does): each held stream
    takes two or three descriptors, and shells often start with a soft limit of 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # e.g. an unlimited hard limit the kernel caps lower
            pass


def serve(app: Callable, host: str, port: int, name: str, shutdown_timeout: float = 10.0) -> None:
    """Serve until SIGINT/SIGTERM, then let in-flight requests finish for `shutdown_timeout`.
    Connections get the handler the app names (`handler_class`), RawRequestHandler by default."""
    server = GracefulWSGIServer((host, port), app, log=None, error_log=sys.stderr,
                                handler_class=getattr(app, "handler_class", RawRequestHandler))
    server.init_socket()
    bound_host, bound_port = server.socket.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    print(f"{name} listening on http://{shown}:{bound_port}", flush=True)

    stopping = Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(signum, stopping.set)
    server.start()
    # Everything made so far (modules, config, routes) lives as long as the process: out
    # of the collector's sight, a full collection no longer walks ~30,000 objects (~10 ms,
    # a latency spike for whichever requests are in flight).
    gc.freeze()
    stopping.wait()
    begin_shutdown = getattr(app, "begin_shutdown", None)
    if begin_shutdown is not None:  # e.g. the logging server ends its UI's endless streams
        begin_shutdown()
    server.stop_gracefully(shutdown_timeout)
    drain_logs = getattr(app, "drain_logs", None)
    if drain_logs is not None:  # the proxy: what its last exchanges logged is still queued
        drain_logs(LOG_DRAIN_TIMEOUT)
