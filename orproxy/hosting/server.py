"""Serving an app on gevent: listen, signals, graceful stop, and the process's settings.

Both commands serve their app with `serve()`; orproxy's gunicorn worker (gunicorn.py) uses
the same GracefulWSGIServer. Apps are HostedApps (app.py).
"""
from __future__ import annotations

import ctypes
import gc
import resource
import signal
import sys
from typing import Any

import gevent
from gevent import socket
from gevent.event import Event
from gevent.pool import Pool
from gevent.pywsgi import WSGIServer

from orproxy.hosting.app import HostedApp
from orproxy.hosting.handler import RawRequestHandler

LOG_DRAIN_TIMEOUT = 3.0  # seconds a stopping app gets for its background work (queued logs)


class GracefulWSGIServer(WSGIServer):
    """Stops by letting requests in flight finish, while idle keep-alive connections close.

    Also the server of orproxy's gunicorn workers (gunicorn.py), which pass their own
    listening socket and pool, and stop it with `close()` and a wait for the pool.
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


def serve(app: HostedApp, host: str, port: int, name: str, shutdown_timeout: float = 10.0) -> None:
    """Serve until SIGINT/SIGTERM, then let in-flight requests finish for `shutdown_timeout`.

    The signal handlers go in before the port listens: a supervisor that takes an open port
    for "ready" may stop the server at once, and that stop must be the graceful one (exit
    0), not the signal's default action.
    """
    stopping = Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(signum, stopping.set)
    server = GracefulWSGIServer((host, port), app, log=None, error_log=sys.stderr,
                                handler_class=app.handler_class)
    server.init_socket()
    bound_host, bound_port = server.socket.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    print(f"{name} listening on http://{shown}:{bound_port}", flush=True)
    server.start()
    # Everything made so far (modules, config, routes) lives as long as the process: out
    # of the collector's sight, a full collection no longer walks ~30,000 objects (~10 ms,
    # a latency spike for whichever requests are in flight).
    gc.freeze()
    stopping.wait()
    app.begin_shutdown()  # e.g. the logging server ends its UI's endless streams
    server.stop_gracefully(shutdown_timeout)
    app.drain(LOG_DRAIN_TIMEOUT)  # e.g. the proxy: its last exchanges' log data is still queued
