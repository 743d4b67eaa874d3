"""The UI's files (orproxy/logserver/static/), served at `/` and `/static/<name>`.

Only the files that ship in the package are served, looked up by exact name from a list
made at start, so no path from a request ever reaches the file system. Every answer
carries a Content-Security-Policy that allows only this server's own scripts and styles:
the UI shows logged bodies, which are attacker-controlled text, and even a mistake in the
UI's code must not let them run a script (the UI also only ever inserts them as text).
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

from orproxy.logserver.web.replies import error_response

# The UI ships beside the packages, in orproxy/logserver/static/ (setup.py's package_data).
STATIC_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "static")

TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
}

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")

SECURITY_HEADERS = [
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
]


class StaticFiles:
    def __init__(self, directory: str = STATIC_DIR) -> None:
        self.files: dict[str, tuple[bytes, str, str]] = {}
        if os.path.isdir(directory):
            for name in sorted(os.listdir(directory)):
                kind = TYPES.get(os.path.splitext(name)[1])
                path = os.path.join(directory, name)
                if kind and os.path.isfile(path) and not name.startswith("."):
                    with open(path, "rb") as f:
                        body = f.read()
                    etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
                    self.files[name] = (body, kind, etag)

    def __call__(self, environ: dict[str, Any], start_response: Callable, name: str) -> list[bytes]:
        """GET or HEAD (routes.py) of one file."""
        entry = self.files.get(name)
        if entry is None:
            return error_response(start_response, "404 Not Found", f"no file {name[:200]}")
        body, kind, etag = entry
        # no-cache: revalidate every time (an upgraded package shows its new UI at once)
        headers = [("Content-Type", kind), ("Cache-Control", "no-cache"), ("ETag", etag),
                   *SECURITY_HEADERS]
        if etag in environ.get("HTTP_IF_NONE_MATCH", ""):
            start_response("304 Not Modified", headers)
            return []
        start_response("200 OK", [*headers, ("Content-Length", str(len(body)))])
        return [] if environ["REQUEST_METHOD"] == "HEAD" else [body]
