"""App factories for `gunicorn -k gevent` (gunicorn's gevent worker patches the stdlib).

    ORPROXY_CONFIG=config.yaml gunicorn -k gevent 'orproxy.wsgi:proxy_app()'
    ORPROXY_CONFIG=config.yaml gunicorn -k orproxy.worker.GeventWorker 'orproxy.wsgi:proxy_app()'
    ORLOGSERVER_LOG_DIR=logs gunicorn -k orproxy.worker.GeventWorker 'orproxy.wsgi:logserver_app()'
    ORLOGSERVER_LOG_DIR=logs gunicorn -k gevent 'orproxy.wsgi:logserver_app()'
"""
from __future__ import annotations

import gc
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from orproxy.config import ConfigError, load_config


def _for_gunicorn(app: Callable) -> Callable:
    """The app as gunicorn's workers serve it.

    `-k gevent` writes the head and the first body block separately: without TCP_NODELAY
    a reused connection waits ~40 ms for a delayed ACK (FACTS.md). orproxy.worker serves
    connections with the handler the app names, which asks the app to word a malformed
    request's 400: both stay visible through the wrapper. As `serve` does, what was built
    so far is frozen out of the collector's sight.
    """
    def wrapped(environ: dict[str, Any], start_response: Callable) -> Any:
        sock = environ.get("gunicorn.socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        return app(environ, start_response)
    for name in ("handler_class", "malformed_request"):
        if hasattr(app, name):
            setattr(wrapped, name, getattr(app, name))
    gc.freeze()
    return wrapped


def proxy_app() -> Callable:
    from orproxy.proxy import ProxyApp
    from orproxy.serving import prepare_process

    prepare_process()  # before the app: its log sink sizes itself by the files limit
    path = os.environ.get("ORPROXY_CONFIG", "config.yaml")
    try:
        return _for_gunicorn(ProxyApp(load_config(path)))
    except ConfigError as e:
        print(f"orproxy: {e}", file=sys.stderr)
        sys.exit(2)


def logserver_app() -> Callable:
    """The logging server; ORLOGSERVER_LOG_DIR (default logs), and retention from
    ORLOGSERVER_MAX_AGE (e.g. 7d) and ORLOGSERVER_MAX_BYTES (e.g. 10G), as --max-age and
    --max-bytes. Create it in each worker (no --preload): it starts threads."""
    log_dir = os.environ.get("ORLOGSERVER_LOG_DIR", "logs")
    os.makedirs(os.path.join(log_dir, ".ids"), exist_ok=True)  # at once: the imports take a while
    from orproxy.logserver.app import LogServerApp
    from orproxy.logserver.web.units import parse_duration, parse_size
    from orproxy.serving import prepare_process

    prepare_process()

    limits = {}
    for key, name, parse in (("max_age", "ORLOGSERVER_MAX_AGE", parse_duration),
                             ("max_bytes", "ORLOGSERVER_MAX_BYTES", parse_size)):
        text = os.environ.get(name)
        try:
            limits[key] = parse(text) if text else None
            if text and limits[key] <= 0:
                raise ValueError(f"{text!r} must be more than 0")
        except ValueError as e:
            print(f"orlogserver: {name}: {e}", file=sys.stderr)
            sys.exit(4)  # gunicorn's APP_LOAD_ERROR: the master stops instead of rebooting workers
    app = LogServerApp(log_dir, **limits)
    _on_sigterm(app.begin_shutdown)
    return _for_gunicorn(app)


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
