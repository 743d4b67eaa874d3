"""One proxied exchange: its id, route, timings, byte counts and outcome.

It ends in exactly one outcome: a status from the upstream, or a proxy error code (the
mitmproxy invariant). Its `metadata()` is what the logging server receives at the end.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from orproxy.headers import masked_target
from orproxy.routes import Route


@dataclass
class Exchange:
    method: str
    target: str
    client_addr: str
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    route: Route | None = None
    upstream_url: str | None = None
    status: int | None = None
    error: str | None = None
    streamed: bool = False
    started_at: float = field(default_factory=time.time)
    upstream_headers_at: float | None = None
    first_byte_at: float | None = None
    ended_at: float | None = None
    request_bytes: int = 0
    response_bytes: int = 0
    log_dropped_bytes: int = 0

    @property
    def short_id(self) -> str:
        return self.id[:8]

    def count_request(self, size: int) -> None:
        self.request_bytes += size

    def count_response(self, size: int) -> None:
        if self.first_byte_at is None:
            self.first_byte_at = time.time()
        self.response_bytes += size

    def fail(self, code: str) -> None:
        """Record the first error only: later ones are consequences of it."""
        if self.error is None:
            self.error = code

    def metadata(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "route": self.route.name if self.route else None,
            "method": self.method,
            "path": masked_target(self.target),  # logged, so keys in the query are masked
            "upstream_url": masked_target(self.upstream_url) if self.upstream_url else None,
            "client_addr": self.client_addr,
            "status": self.status,
            "error": self.error,
            "streamed": self.streamed,
            "started_at": self.started_at,
            "upstream_headers_at": self.upstream_headers_at,
            "first_byte_at": self.first_byte_at,
            "ended_at": self.ended_at,
            "request_bytes": self.request_bytes,
            "response_bytes": self.response_bytes,
            "log_dropped_bytes": self.log_dropped_bytes,
        }
