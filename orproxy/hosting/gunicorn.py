"""orproxy's apps under gunicorn: its worker class, and the wrapper the factories apply.

    ORPROXY_CONFIG=config.yaml gunicorn -k orproxy.worker.GeventWorker -w 2 'orproxy.wsgi:proxy_app()'

gunicorn's own `-k gevent` worker parses each request and writes each response in its own
Python code. Pinned to one core with its logging server, it served 1,200-1,500 requests/s
where the `orproxy` command serves 2,300. `GeventWorker` keeps gunicorn's process
management (workers, restarts, graceful stop, TLS) and hands each connection to gevent's
pywsgi with the app's own request handler, as the commands do: 1,800-2,400 requests/s on
that core. The proxy then behaves as the `orproxy` command (header names as sent, a JSON
400 for a malformed request), the logging server as `orlogserver` (pipelined PUTs batched).

gunicorn imports the worker class in its master, before the worker monkey-patches the
stdlib: orproxy's own modules (which import requests, and with it ssl) load only in the
worker, so this module imports nothing of orproxy at its top.
"""
from __future__ import annotations

import gc
import signal
import socket
from collections.abc import Callable
from typing import Any

from gunicorn.workers.ggevent import GeventPyWSGIWorker


class GeventWorker(GeventPyWSGIWorker):

    @property
    def server_class(self) -> Any:
        from orproxy.hosting.server import GracefulWSGIServer
        return GracefulWSGIServer

    @property
    def wsgi_handler(self) -> Any:
        """The handler the app names (HostedApp.handler_class), read once the worker has
        loaded the app."""
        return self.wsgi.handler_class


def for_gunicorn(app: Any) -> Callable:
    """The app as gunicorn's workers serve it.

    `-k gevent` writes the head and the first body block separately: without TCP_NODELAY
    a reused connection waits ~40 ms for a delayed ACK (FACTS.md), so it is set on each
    request's socket. The app's HostedApp hooks stay visible through the wrapper, for
    GeventWorker. As serve() does, what was built so far is frozen out of the collector's
    sight.
    """
    def wrapped(environ: dict[str, Any], start_response: Callable) -> Any:
        sock = environ.get("gunicorn.socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        return app(environ, start_response)
    wrapped.handler_class = app.handler_class
    wrapped.malformed_request = app.malformed_request
    wrapped.limits = app.limits
    _on_sigterm(app.begin_shutdown)
    gc.freeze()
    return wrapped


def _on_sigterm(callback: Callable[[], None]) -> None:
    """Call `callback` (in a greenlet) when the worker is told to stop, then gunicorn's
    own handler. gunicorn's worker stops by waiting, up to --graceful-timeout, until no
    connection is open, and the UI's live feeds never close by themselves. gunicorn offers
    the app no hook for this; its handler is installed before the app is loaded."""
    import gevent

    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: Any) -> None:
        gevent.spawn(callback)  # no blocking work inside a signal handler
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, handler)
