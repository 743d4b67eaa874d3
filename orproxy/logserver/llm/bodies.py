"""What a decoded body is: JSON, a stream of events (SSE, NDJSON), text or binary.

Decided from the Content-Type first and the bytes second (a proxy sees servers that
mislabel). A stream of LLM events is also assembled into the answer it stands for (by
its API's module, apis/), so everything downstream reads one shape per API.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orproxy.logserver.llm import apis
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
    skimmed: bool = False               # a long stream parsed in part: the answer is not whole

    @property
    def whole_answer(self) -> bool:
        """Whether `answer` is the whole answer (not skimmed, not cut at the event limit)."""
        return not self.skimmed and not (self.stream is not None and self.stream.truncated)

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
        skimmed = skim and len(text) > SKIM_OVER
        if skimmed:
            text = skim_sse(text, SKIM_HEAD, SKIM_TAIL, apis.skim_markers)
        stream = parse_sse(text, max_events)
        return ParsedBody("sse", text, stream=stream, assembled=apis.assemble(stream.events), skimmed=skimmed)
    if kind == "ndjson":
        stream = parse_ndjson(text, max_events)
        return ParsedBody("ndjson", text, stream=stream, assembled=apis.assemble(stream.events))
    return ParsedBody("text", text)
