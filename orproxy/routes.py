"""Routing: the longest matching `source` prefix wins, then one of two path rewrites.

Paths are matched and rewritten as the raw bytes the client sent (`%2f` stays `%2f`):
nothing is decoded or re-encoded on the way upstream.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Route:
    source: str
    destination: str
    name: str
    logging: bool = True
    connect_timeout: float = 10.0
    read_timeout: float = 600.0
    # Derived once: the prefix compared against paths, the upstream's origin, its `Host`
    # (netloc) and its base path.
    prefix: str = field(init=False)
    origin: str = field(init=False)
    netloc: str = field(init=False)
    base_path: str = field(init=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.destination)
        set_ = object.__setattr__
        set_(self, "prefix", self.source.rstrip("/"))
        set_(self, "origin", f"{parts.scheme}://{parts.netloc}")
        set_(self, "netloc", parts.netloc)
        set_(self, "base_path", parts.path if parts.path not in ("", "/") else "")

    def matches(self, path: str) -> bool:
        """`/api/v1/` matches `/api/v1` and `/api/v1/...`, never `/api/v1x`."""
        return path.startswith(self.prefix) and (len(path) == len(self.prefix) or path[len(self.prefix)] == "/")

    def upstream_target(self, path: str) -> str:
        """The upstream path for a raw client path: kept whole, or the prefix swapped."""
        if not self.base_path:
            return path or "/"
        rest = path[len(self.prefix):]
        return self.base_path.rstrip("/") + rest if rest else self.base_path


class RouteTable:
    """Routes ordered longest prefix first, so the first match is the longest."""

    def __init__(self, routes: list[Route]) -> None:
        self.routes = sorted(routes, key=lambda r: len(r.prefix), reverse=True)

    def __len__(self) -> int:
        return len(self.routes)

    def match(self, path: str) -> Route | None:
        for route in self.routes:
            if route.matches(path):
                return route
        return None
