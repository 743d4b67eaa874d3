"""App factories for `gunicorn -k gevent` (gunicorn's gevent worker patches the stdlib).

    ORPROXY_CONFIG=config.yaml gunicorn -k gevent 'orproxy.wsgi:proxy_app()'
    ORLOGSERVER_LOG_DIR=logs gunicorn -k gevent 'orproxy.wsgi:logserver_app()'
"""
from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from typing import Any

from orproxy.config import ConfigError, load_config


def _nodelay(app: Callable) -> Callable:
    """gunicorn writes the head and the first body block separately: without TCP_NODELAY
    a reused connection waits ~40 ms for a delayed ACK (FACTS.md)."""
    def wrapped(environ: dict[str, Any], start_response: Callable) -> Any:
        sock = environ.get("gunicorn.socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        return app(environ, start_response)
    return wrapped


def proxy_app() -> Callable:
    from orproxy.proxy import ProxyApp

    path = os.environ.get("ORPROXY_CONFIG", "config.yaml")
    try:
        return _nodelay(ProxyApp(load_config(path)))
    except ConfigError as e:
        print(f"orproxy: {e}", file=sys.stderr)
        sys.exit(2)


def logserver_app() -> Callable:
    from orproxy.logserver.app import LogServerApp

    return _nodelay(LogServerApp(os.environ.get("ORLOGSERVER_LOG_DIR", "logs")))
