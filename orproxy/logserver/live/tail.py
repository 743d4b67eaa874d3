"""`GET /api/requests/{id}/tail`: the response of an exchange as it arrives, as SSE.

The logging server writes a response file while the answer streams (ingest.py), so the UI
can show the answer growing: this follows that file (store/follow.py, waiting for it if
the response has not started yet), decodes the body (Content-Encoding, UTF-8) as it grows
and, for an SSE answer, parses each complete event and sends what it adds to the answer
(llm/apis).
It ends, with an `end` event, once the response upload has ended; so an exchange that is
already over is sent whole and ended at once. Events (data is JSON):

  head     {"start_line", "status", "headers": [[name, value], ...]}
  body     {"text"}      the next piece of the body as text (up to MAX_BODY_TEXT in all)
  deltas   [{"text"|"reasoning"|"tool"|"error"|"finish": ...}, ...]  (SSE answers)
  notice   {"message"}   e.g. the body is too large to show whole, or cannot be decoded
  end      {"reason": "complete"|"incomplete"|"no response"|"deleted"|"timeout"|"server stopping"}

The client must close its EventSource on `end`, or EventSource reconnects by itself.
"""
from __future__ import annotations

import codecs
import time
from collections.abc import Callable, Iterator
from typing import Any

from gevent.event import Event

from orproxy.logserver.live import eventstream
from orproxy.logserver.llm.apis import delta
from orproxy.logserver.llm.httpfile import MAX_HEAD, Decoder, Head, decoders, parse_head
from orproxy.logserver.llm.sse import parse_sse
from orproxy.logserver.store.follow import PartFollower
from orproxy.logserver.store.stores import BodyStore
from orproxy.logserver.web.replies import error_response

MAX_BODY_TEXT = 1024 * 1024        # body text sent; the rest is in the raw download
MAX_DELTA_TEXT = 4 * 1024 * 1024   # answer text sent as deltas
MAX_DECODED = 2 * (MAX_BODY_TEXT + MAX_DELTA_TEXT)  # bytes decoded at most: a gzip bomb stops here
MAX_PENDING_EVENT = 1024 * 1024    # an SSE event that never ends stops the parsing
TOO_LARGE = "the body is too large to follow here; download it raw"


class TailEvents:
    """Turns the bytes of a growing response file into tail events (pure: no I/O)."""

    def __init__(self) -> None:
        self.head: Head | None = None
        self._head_buffer = b""
        self._decoders: list[Decoder] = []
        self._text = codecs.getincrementaldecoder("utf-8")("replace")
        self._sse = False
        self._pending = ""
        self.body_text_sent = 0
        self.delta_text_sent = 0
        self._noticed: set[str] = set()
        self.broken = False   # the body cannot be decoded: only the end is still sent
        self.decoded = 0

    @property
    def saturated(self) -> bool:
        """Nothing more will be sent but the end: the rest of the file need not be read."""
        if self.head is None and self._head_buffer is not None:
            return False
        if self.broken:
            return True
        return TOO_LARGE in self._noticed and (not self._sse or self.delta_text_sent >= MAX_DELTA_TEXT)

    def feed(self, block: bytes) -> list[bytes]:
        if self.head is None and self._head_buffer is not None:
            self._head_buffer += block
            head = parse_head(self._head_buffer)
            if head is None and len(self._head_buffer) < MAX_HEAD:
                return []
            data, self._head_buffer = self._head_buffer, None
            if head is None:
                return self._body(data)
            self.head = head
            return [self._head_event(head), *self._body(data[head.size:])]
        return self._body(block)

    def finish(self) -> list[bytes]:
        """What is left once the file has ended (a last event without its blank line)."""
        out = []
        if self._head_buffer:  # a head never completed: show it as text
            out += self._body(self._head_buffer)
            self._head_buffer = None
        if not self.broken:
            out += self._text_events(self._text.decode(b"", final=True), final=True)
        return out

    def _head_event(self, head: Head) -> bytes:
        parts = head.start_line.split(" ", 2)
        status = int(parts[1]) if head.is_response and len(parts) > 1 and parts[1].isdigit() else None
        self._sse = "text/event-stream" in (head.header("content-type") or "").lower()
        out = eventstream.event({"start_line": head.start_line, "status": status,
                                 "headers": [[n, v] for n, v in head.headers]}, "head")
        try:
            self._decoders = decoders(head.header("content-encoding"))
        except ValueError as e:
            self.broken = True
            out += self._notice(f"the body cannot be decoded ({e}); download it raw")
        return out

    def _notice(self, message: str) -> bytes:
        if message in self._noticed:
            return b""
        self._noticed.add(message)
        return eventstream.event({"message": message}, "notice")

    def _body(self, data: bytes) -> list[bytes]:
        if self.broken or not data:
            return []
        try:
            for decoder in self._decoders:  # each within what could still be shown
                data = decoder.feed(data, MAX_DECODED - self.decoded + 1)
        except Exception as e:  # zlib.error, brotli.error: corrupt data
            self.broken = True
            return [self._notice(f"the body cannot be decoded ({e}); download it raw")]
        room = MAX_DECODED - self.decoded
        self.decoded += len(data)
        if len(data) > room:  # it inflates past anything shown: stop decoding it
            self.broken = True
            return [*self._text_events(self._text.decode(data[:room]), final=False), self._notice(TOO_LARGE)]
        return self._text_events(self._text.decode(data), final=False)

    def _text_events(self, text: str, final: bool) -> list[bytes]:
        out = []
        piece = text[:max(0, MAX_BODY_TEXT - self.body_text_sent)]
        if piece:
            self.body_text_sent += len(piece)
            out.append(eventstream.event({"text": piece}, "body"))
        if len(piece) < len(text) and TOO_LARGE not in self._noticed:
            out.append(self._notice(TOO_LARGE))
        if self._sse:
            deltas = self._deltas(text, final)
            if deltas:
                out.append(eventstream.event(deltas, "deltas"))
        return out

    def _deltas(self, text: str, final: bool) -> list[dict[str, Any]]:
        """The increments of the SSE events completed by `text` (all of them if final)."""
        buffer = (self._pending + text).replace("\r\n", "\n")
        hold = ""
        if buffer.endswith("\r") and not final:  # maybe the first half of a CRLF
            buffer, hold = buffer[:-1], "\r"
        buffer = buffer.replace("\r", "\n")
        cut = len(buffer) if final else buffer.rfind("\n\n") + 2
        if cut < 2:
            self._pending = buffer + hold
            if len(self._pending) > MAX_PENDING_EVENT:
                self._sse, self._pending = False, ""
            return []
        complete, self._pending = buffer[:cut], buffer[cut:] + hold
        out = []
        for item in parse_sse(complete).events:
            if item.data == "[DONE]":
                continue
            d = delta(item.json, item.event)
            if not d or self.delta_text_sent >= MAX_DELTA_TEXT:
                continue
            self.delta_text_sent += len(d.get("text", "")) + len(d.get("reasoning", ""))
            out.append(d)
        return out


class Tail:
    def __init__(self, log_dir: BodyStore, stopping: Event) -> None:
        self.log_dir = log_dir
        self.stopping = stopping

    def __call__(self, environ: dict[str, Any], start_response: Callable, exchange_id: str) -> Any:
        if environ.get("QUERY_STRING"):
            return error_response(start_response, "400 Bad Request", "the tail takes no parameters",
                                  parameter=environ["QUERY_STRING"].split("=", 1)[0][:100])
        exchange_id = exchange_id.lower()
        if self.log_dir.read_metadata(exchange_id) is None:
            return error_response(start_response, "404 Not Found", f"no exchange {exchange_id}")
        eventstream.start(start_response)
        return self._stream(exchange_id)

    def _stream(self, exchange_id: str) -> Iterator[bytes]:
        yield eventstream.opening()
        events = TailEvents()
        follower = PartFollower(self.log_dir, exchange_id, "response", self.stopping)
        quiet_since = time.monotonic()
        for block in follower:
            if block:
                out = events.feed(block)
                if out:
                    yield b"".join(out)
                    quiet_since = time.monotonic()
                if events.saturated:
                    follower.skip_rest()  # a huge download: skip what would not be shown anyway
            elif time.monotonic() - quiet_since >= eventstream.HEARTBEAT:
                yield eventstream.comment("ping")
                quiet_since = time.monotonic()
        if follower.end in ("complete", "incomplete"):
            rest = events.finish()
            if rest:
                yield b"".join(rest)
            yield eventstream.event({"reason": follower.end, "bytes": follower.part.get("bytes")}, "end")
        else:
            yield eventstream.event({"reason": follower.end}, "end")
