"""Writing `text/event-stream` responses (the live feed's SSE fallback and the live tail).

One framing function and one response head, so both endpoints behave the same for a
browser's EventSource: the head goes out with a first comment at once (pywsgi sends no
head before the first non-empty write, FACTS.md), `retry` tells EventSource how soon to
reconnect, and a comment every `HEARTBEAT` seconds both keeps idle intermediaries from
closing the connection and finds clients that went away (a write to them fails).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

HEARTBEAT = 15.0
RETRY_MS = 1000

HEADERS = [
    ("Content-Type", "text/event-stream; charset=utf-8"),
    ("Cache-Control", "no-store"),
    ("X-Accel-Buffering", "no"),  # nginx in front: do not buffer the stream
    ("X-Content-Type-Options", "nosniff"),
]


def event(data: Any, name: str | None = None, event_id: int | str | None = None) -> bytes:
    """One SSE event; `data` is sent as compact JSON (one line: JSON escapes newlines)."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False,
                                                         separators=(",", ":"), allow_nan=False)
    out = ""
    if event_id is not None:
        out += f"id: {event_id}\n"
    if name:
        out += f"event: {name}\n"
    for line in text.split("\n"):
        out += f"data: {line}\n"
    return (out + "\n").encode()


def comment(text: str = "") -> bytes:
    return f": {text}\n\n".encode()


def opening() -> bytes:
    """The first bytes of every stream: the reconnect delay and a comment."""
    return f"retry: {RETRY_MS}\n: stream open\n\n".encode()


def start(start_response: Callable) -> None:
    start_response("200 OK", list(HEADERS))
