"""One exchange's metadata document, and every question about its state answered once.

The document (`<ts>_<uuid8>_metadata.json`, CONTRACT.md) is written by ingest.py. Its
`parts` has an entry per uploaded part: `file`, `received_at`, `bytes`, `complete`, the
`head`'s summary, `completed_at` once the upload has ended and `error` if it broke off;
`proxy` is the proxy's metadata, sent when the exchange is over; `derived` holds the LLM
fields. Whether an exchange is in flight or over, whether it is ready to derive, which of
its parts have ended: the deriving, the index row, the API, the tail and retention ask an
`ExchangeRecord` instead of each reading the dict its own way. Only ingest.py and
logdir.py, which write the document, touch `parts` themselves.
"""
from __future__ import annotations

from typing import Any

from orproxy.logserver.llm import derive
from orproxy.logserver.llm.httpfile import Head

STATES = ("in_flight", "complete", "incomplete")


class ExchangeRecord:
    """A view of one metadata document (the dict itself, never copied: it may be the one
    an update is changing; its `parts` dict is changed in place, never replaced)."""

    __slots__ = ("document", "_parts")

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        parts = document.get("parts")
        # Looked up once: the questions below are asked several times per rewrite.
        self._parts: dict[str, Any] = parts if isinstance(parts, dict) else {}

    # -- what the document holds ---------------------------------------------------------

    @property
    def id(self) -> str:
        return str(self.document.get("id", "")).lower()

    @property
    def prefix(self) -> str:
        """`<timestamp>_<uuid8>`, the start of the exchange's file names."""
        return f"{self.document.get('timestamp')}_{str(self.document.get('id'))[:8]}"

    @property
    def parts(self) -> dict[str, dict[str, Any]]:
        """The part entries by kind (request, response)."""
        return {kind: p for kind, p in self._parts.items() if isinstance(p, dict)}

    def part(self, kind: str) -> dict[str, Any]:
        """The entry of one part; {} if it has not arrived."""
        part = self._parts.get(kind)
        return part if isinstance(part, dict) else {}

    def head(self, kind: str) -> dict[str, Any]:
        """The summary of a part's head (method, path, status, content type), as ingest saw it."""
        head = self.part(kind).get("head")
        return head if isinstance(head, dict) else {}

    @property
    def proxy(self) -> dict[str, Any]:
        """The proxy's metadata (route, status, timings, bytes, error); {} until it came."""
        proxy = self.document.get("proxy")
        return proxy if isinstance(proxy, dict) else {}

    @property
    def derived(self) -> dict[str, Any]:
        derived = self.document.get("derived")
        return derived if isinstance(derived, dict) else {}

    @property
    def file_names(self) -> list[str]:
        """The names of the part files, as the document gives them (not checked here)."""
        return [str(p.get("file", "")) for p in self._parts.values() if isinstance(p, dict)]

    @property
    def started_at(self) -> float | None:
        """When the exchange began: the proxy's time, else when its first part arrived."""
        started = self.proxy.get("started_at")
        return started if isinstance(started, (int, float)) else self.received_at

    @property
    def received_at(self) -> float | None:
        """When the first part reached the logging server."""
        times = [p["received_at"] for p in self._parts.values()
                 if isinstance(p, dict) and isinstance(p.get("received_at"), (int, float))]
        return min(times) if times else None

    @property
    def stored_bytes(self) -> int:
        """The bytes of the part files."""
        return sum(p.get("bytes") or 0 for p in self._parts.values() if isinstance(p, dict))

    def request_path(self, request_head: Head | None = None) -> str | None:
        """The path and query the client called: the proxy's word for it, else the request
        head's (`request_head` if the request was read back, else ingest's summary)."""
        path = self.proxy.get("path")
        if path:
            return path
        if request_head is not None:
            return request_head.summary().get("path")
        return self.head("request").get("path")

    # -- where the exchange is -----------------------------------------------------------

    def ended(self, kind: str) -> bool:
        """The upload of this part has ended (complete, or broken off)."""
        return "completed_at" in self.part(kind)

    @property
    def ended_parts(self) -> list[str]:
        return sorted(k for k, p in self._parts.items() if isinstance(p, dict) and "completed_at" in p)

    @property
    def arriving(self) -> bool:
        """Some part is still being uploaded."""
        return any(isinstance(p, dict) and "completed_at" not in p for p in self._parts.values())

    @property
    def over(self) -> bool:
        """The proxy has reported the end of the exchange."""
        return isinstance(self.document.get("proxy"), dict)

    @property
    def broken(self) -> bool:
        """A part broke off (the proxy went away mid-upload)."""
        return any(isinstance(p, dict) and p.get("error") for p in self._parts.values())

    @property
    def swept(self) -> dict[str, Any]:
        """The sweeper's word (sweeper.py) that nothing arrived for long: `at`, `reason`."""
        swept = self.document.get("swept")
        return swept if isinstance(swept, dict) else {}

    @property
    def whole(self) -> bool:
        """Both parts arrived, and whole."""
        return all(self.part(kind).get("complete") for kind in ("request", "response"))

    @property
    def state(self) -> str:
        """One of STATES: complete once the proxy reported the end (or, from a proxy that
        reports none, both parts arrived whole and nothing came after them for long);
        incomplete when a part broke off, or the parts stopped arriving, and the proxy
        never reported the end; in flight until then."""
        if self.over or (self.swept and self.whole):
            return "complete"
        return "incomplete" if self.broken or self.swept else "in_flight"

    @property
    def incomplete_reason(self) -> str | None:
        if self.state != "incomplete":
            return None
        errors = [f"{kind}: {p['error']}" for kind, p in self.parts.items() if p.get("error")]
        return "; ".join(errors) or self.swept.get("reason")

    def over_without(self, kind: str) -> bool:
        """The exchange is over (or broke off, or stopped) and this part never came: no
        response will."""
        return kind not in self._parts and (self.over or self.broken or bool(self.swept))

    # -- the derived fields --------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Ready to derive: no part is still arriving, and the response has ended or the
        proxy reported the end of an exchange that has no response part."""
        if self.arriving:
            return False
        return "response" in self._parts or (self.over and bool(self._parts))

    @property
    def needs_derive(self) -> bool:
        """The derived fields are missing, made by older rules, or older than the ended parts."""
        derived = self.document.get("derived")
        if not isinstance(derived, dict) or derived.get("version") != derive.VERSION:
            return bool(self.ended_parts)
        return set(self.ended_parts) - set(derived.get("parts") or []) != set()

    @property
    def request_only(self) -> bool:
        """The request has ended, the rest is still to come, and nothing is derived yet:
        its fields alone can be derived now (an exchange in flight listed by its model)."""
        return self.ended("request") and not self.ready and self.needs_derive

    def unparsed_bytes(self, request_only: bool = False) -> int:
        """The bytes deriving would parse: the request's alone, or every part's."""
        kinds = {"request"} if request_only else set(self._parts)
        return sum(self.part(kind).get("bytes") or 0 for kind in kinds)
