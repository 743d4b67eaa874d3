"""What the client sent, as the wire had it, read from the WSGI environ of either server.

gevent's pywsgi (through our handler in serving.py) gives the raw request target, the raw
header lines and the socket; gunicorn gives `RAW_URI` and `gunicorn.socket`, and headers
only as `HTTP_*` keys (their case is lost there, and repeats arrive comma-joined).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from orproxy.headers import Headers

BLOCK = 65536


class ClientBodyError(Exception):
    """The client's request body ended early or was malformed (not an upstream failure)."""


def raw_target(environ: dict[str, Any]) -> str:
    """The request target exactly as sent: path and query, nothing decoded."""
    raw = environ.get("orproxy.raw_uri") or environ.get("RAW_URI")
    if raw is None:  # another server: rebuild it, as close as WSGI allows
        query = environ.get("QUERY_STRING")
        raw = environ.get("PATH_INFO", "/") + (f"?{query}" if query else "")
    return raw


def request_headers(environ: dict[str, Any]) -> Headers:
    headers = environ.get("orproxy.headers")
    if headers is not None:
        return headers
    found = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            found.append((key[5:].replace("_", "-").title(), value))
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            found.append((key.replace("_", "-").title(), value))
    return found


def client_socket(environ: dict[str, Any]) -> Any:
    return environ.get("orproxy.socket") or environ.get("gunicorn.socket")


def body_blocks(environ: dict[str, Any], length: int | None) -> Iterator[bytes]:
    """The request body in blocks as it arrives; raises ClientBodyError if it ends early.

    Both servers de-chunk chunked uploads before `wsgi.input` (FACTS.md), so `length` is
    None for those and the stream ends at EOF.
    """
    read = environ["wsgi.input"].read
    remaining = length
    while remaining is None or remaining > 0:
        try:
            block = read(BLOCK if remaining is None else min(BLOCK, remaining))
        except (OSError, ValueError) as e:
            raise ClientBodyError(f"the request body could not be read: {e}") from e
        if not block:
            if remaining:
                raise ClientBodyError(f"the request body ended {remaining} bytes early")
            return
        if remaining is not None:
            remaining -= len(block)
        yield block
