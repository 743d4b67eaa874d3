"""What the hosting edge asks of an app it serves: the declared protocol of both apps.

serve() (server.py) and orproxy's gunicorn worker (gunicorn.py) serve the proxy and the
logging server alike through these hooks, so neither needs to probe an app for them.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from orproxy.hosting.framing import HeadLimits


class HostedApp(Protocol):
    handler_class: type
    """The pywsgi handler for its connections (handler.RawRequestHandler or a subclass)."""

    limits: HeadLimits
    """How large a request's head may be, and how long it and an idle connection may take."""

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Any:
        """The WSGI app itself."""

    def malformed_request(self, message: str, status: str = "400 Bad Request") -> bytes:
        """The whole response (head and body) to a request refused before it reached the app
        (hosting/framing.py): `status` is 400, 408, 431 or 501."""

    def begin_shutdown(self) -> None:
        """The server stops taking requests: end what would never end by itself (live feeds)."""

    def drain(self, timeout: float) -> None:
        """The server has stopped: finish background work (queued log data) within `timeout` s."""
