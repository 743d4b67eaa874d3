"""Server-sent events parsed the way a browser's EventSource does (WHATWG HTML 9.2.6).

LLM APIs stream their answers as SSE: OpenAI-style `data:` lines ending in `data: [DONE]`,
Anthropic's named events, OpenRouter's `: OPENROUTER PROCESSING` comments. The log viewer
and the derived fields both need the events, so the parsing lives here once. NDJSON
(`application/x-ndjson`, `application/stream+json`) is read as one event per line.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from orproxy import jsoncodec

_NO_JSON = object()


def strict_json(text: str | bytes) -> object:
    """A JSON value, without NaN and Infinity, which JSON does not have (RFC 8259 6)."""
    return jsoncodec.loads(text)


@dataclass
class Event:
    """One dispatched event. `json` is the parsed data, or None when it is not JSON."""

    data: str
    event: str | None = None
    id: str | None = None
    complete: bool = True  # False for a last event the stream never finished

    @property
    def json(self) -> Any:
        cached = self.__dict__.get("_json", _NO_JSON)
        if cached is _NO_JSON:
            try:
                cached = strict_json(self.data) if self.data[:1] in "{[" and self.data else None
            except ValueError:
                cached = None
            self.__dict__["_json"] = cached
        return cached

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event": self.event, "data": self.data, "json": self.json}
        if self.id is not None:
            out["id"] = self.id
        if not self.complete:
            out["complete"] = False
        return out


@dataclass
class Stream:
    events: list[Event]
    comments: int = 0
    truncated: bool = False  # more events than the limit


def _lines(text: str) -> list[str]:
    """Split on CR LF, CR or LF only (str.splitlines would also split on U+2028, which
    JSON strings may contain raw); str methods are far faster than a regex split."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.split("\n")


def parse_sse(text: str, max_events: int = 100_000) -> Stream:
    """The events of an SSE body; a final event without its blank line is kept as incomplete."""
    events: list[Event] = []
    comments = 0
    data: list[str] = []
    name: str | None = None
    event_id: str | None = None
    pending = False
    lines = _lines(text)
    ended_cleanly = bool(lines) and lines[-1] == ""
    if ended_cleanly:
        lines.pop()
    for line in lines:
        if not line:
            if pending:
                if len(events) >= max_events:
                    return Stream(events, comments, truncated=True)
                events.append(Event("\n".join(data), name, event_id))
            data, name, pending = [], None, False
            continue
        if line.startswith(":"):
            comments += 1
            continue
        key, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if key == "data":
            data.append(value)
            pending = True
        elif key == "event":
            name = value
            pending = True
        elif key == "id":
            event_id = value
    if pending and len(events) < max_events:
        events.append(Event("\n".join(data), name, event_id, complete=False))
    return Stream(events, comments)


def skim(text: str, head: int, tail: int, markers: Callable[[str], tuple[str, ...]],
         separator: str = "\n\n") -> str:
    """The first `head` and last `tail` events of a long stream, and every event that
    contains one of `markers`, in stream order, as one text to parse.

    A streamed answer has an event per token or so: a 1,000-token answer is 1,000 JSON
    documents, 12 ms to parse whole. What the derived fields need is at its start (model,
    the first words), its end (finish reason, usage) and in a few marked events (tool
    calls, errors): `markers(head_text)` names them, by the shape the head shows. Only
    str.find runs over the rest, at C speed.
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    step = len(separator)
    starts: set[int] = set()
    pos = 0
    for _ in range(head):
        starts.add(pos)
        pos = text.find(separator, pos)
        if pos < 0:
            return text  # a short stream: all of it
        pos += step
    end = len(text.rstrip("\n"))
    for _ in range(tail):
        pos = text.rfind(separator, 0, end)
        starts.add(0 if pos < 0 else pos + step)
        if pos < 0:
            break
        end = pos
    for marker in markers(text[:pos]):
        pos = text.find(marker)
        while pos >= 0:
            start = text.rfind(separator, 0, pos)
            starts.add(0 if start < 0 else start + step)
            following = text.find(separator, pos)
            pos = -1 if following < 0 else text.find(marker, following)
    blocks = []
    for start in sorted(starts):
        stop = text.find(separator, start)
        blocks.append(text[start:] if stop < 0 else text[start:stop + step])
    return "".join(blocks)


def parse_ndjson(text: str, max_events: int = 100_000) -> Stream:
    events = []
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        if len(events) >= max_events:
            return Stream(events, truncated=True)
        events.append(Event(line.rstrip("\r"), complete=i < len(lines) - 1))
    return Stream(events)
