"""What a decoded body is: JSON, a stream of events (SSE, NDJSON), text or binary.

Decided from the Content-Type first and the bytes second (a proxy sees servers that
mislabel). A stream of LLM events is also assembled into the answer it stands for
(assemble.py), so everything downstream reads one shape per API.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orproxy.logserver.llm import assemble
from orproxy.logserver.llm.httpfile import Message
from orproxy.logserver.llm.sse import Stream, parse_ndjson, parse_sse, strict_json
from orproxy.logserver.llm.sse import skim as skim_sse

MAX_EVENTS = 50_000


@dataclass
class ParsedBody:
    kind: str                           # "empty", "json", "sse", "ndjson", "text", "binary"
    text: str | None = None             # the decoded text (None for binary)
    json: Any = None                    # the parsed value when kind == "json"
    stream: Stream | None = None        # events when kind is "sse" or "ndjson"
    assembled: dict[str, Any] | None = None  # a streamed LLM answer, put together

    @property
    def answer(self) -> Any:
        """The LLM answer object: the JSON body, or the assembled stream."""
        return self.assembled if self.stream is not None else self.json


def _kind(content_type: str, data: bytes) -> str:
    ct = content_type.lower()
    if not data:
        return "empty"
    if "text/event-stream" in ct:
        return "sse"
    if "ndjson" in ct or "stream+json" in ct or "jsonl" in ct:
        return "ndjson"
    if "json" in ct:
        return "json"
    start = data[:64].lstrip()
    if start[:1] in (b"{", b"["):
        return "json"
    if start.startswith((b"data:", b"event:", b":")):
        return "sse"
    if b"\x00" in data[:4096] or ct.startswith(("image/", "audio/", "video/", "application/octet-stream")):
        return "binary"
    return "text"


SKIM_OVER = 8 * 1024   # a longer stream is skimmed for the derived fields (sse.skim)
SKIM_HEAD, SKIM_TAIL = 64, 16


def _skim_markers(head: str) -> tuple[str, ...]:
    """Which events in the middle of a long stream the derived fields need, by API."""
    if '"choices"' in head:
        return ('"tool_calls"', '"error"')              # OpenAI-style chunks
    if "message_start" in head:
        return ("content_block_start", '"error"')      # Anthropic: tool_use blocks
    return ('"error"', '"function_call"', "response.completed", "response.incomplete",
            "response.failed", "content_block_start", '"tool_calls"')


def parse_body(message: Message | None, max_events: int = MAX_EVENTS, skim: bool = False) -> ParsedBody:
    """Classify and parse a message's decoded body; never raises on bad data.

    `skim`: for the derived fields only, a long SSE stream is parsed in part (sse.skim): its
    assembled answer then has the first words of the text, not all of it.
    """
    if message is None:
        return ParsedBody("empty")
    content_type = (message.head.header("content-type") if message.head else None) or ""
    data = message.body.data
    kind = _kind(content_type, data)
    if kind in ("empty", "binary"):
        return ParsedBody(kind)
    text = data.decode("utf-8", "replace")
    if kind == "json":
        try:
            return ParsedBody("json", text, strict_json(text))
        except ValueError:
            return ParsedBody("text", text)  # cut short, or not JSON after all
    if kind == "sse":
        if skim and len(text) > SKIM_OVER:
            text = skim_sse(text, SKIM_HEAD, SKIM_TAIL, _skim_markers)
        stream = parse_sse(text, max_events)
        return ParsedBody("sse", text, stream=stream, assembled=_assemble(stream))
    if kind == "ndjson":
        stream = parse_ndjson(text, max_events)
        return ParsedBody("ndjson", text, stream=stream, assembled=_assemble(stream))
    return ParsedBody("text", text)


def _assemble(stream: Stream) -> dict[str, Any] | None:
    """The answer a stream stands for, by the first event shape that says which API."""
    for event in stream.events:
        data = event.json
        if not isinstance(data, dict):
            continue
        if "choices" in data or data.get("object") == "chat.completion.chunk":
            return assemble.openai_chunks(stream.events)
        kind = data.get("type") or event.event or ""
        if kind == "message_start":
            return assemble.anthropic_events(stream.events)
        if kind.startswith("response."):
            return _last_response(stream)
    return None


def _last_response(stream: Stream) -> dict[str, Any] | None:
    """OpenAI Responses API streams end with the whole response in `response.completed`."""
    found = None
    for event in stream.events:
        data = event.json
        if isinstance(data, dict) and isinstance(data.get("response"), dict):
            found = data["response"]
    return found
