"""The `derived` entry of a metadata document: the LLM fields (llm/derive.py) of the
exchange's parts, read back from the log dir (ingest.py decides when, and stores them).

When: once the response part has ended and no part is still arriving, or when the proxy
reported the end of an exchange that has no response part. A part that ends later (rare:
a request still uploading) makes the fields be derived again. With several worker
processes, the one that wrote the last part's end derives. Before that, when the request
part ends while the response is still to come (a stream, a slow upstream), the request's
fields (model, stream, prompt preview, api) are derived alone, so that an exchange in
flight is listed, and filtered, by its model; the final derivation then takes them from
there instead of parsing the request again.

Bounded: a body is decoded up to DERIVE_LIMIT and a long stream is skimmed (bodies.py).
Bodies up to INLINE_BYTES are parsed on the gevent loop (well under a millisecond), larger
ones on a thread of their own: a large body must not stall the loop.
"""
from __future__ import annotations

import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gevent.threadpool import ThreadPool

from orproxy.logserver.llm import apis, derive, searchtext
from orproxy.logserver.llm.bodies import ParsedBody, parse_body
from orproxy.logserver.llm.conversation import Conversation
from orproxy.logserver.llm.httpfile import Message
from orproxy.logserver.llm.session import session_id
from orproxy.logserver.store.linking import Clue, Linker, Turn, clue
from orproxy.logserver.store.stores import BodyStore
from orproxy.logserver.store.record import ExchangeRecord

DERIVE_LIMIT = 16 * 1024 * 1024   # decoded bytes per body looked at for the derived fields
INLINE_BYTES = 64 * 1024          # bodies up to this are parsed on the loop
TEXTS_KEPT = 1_000                # search texts waiting for the index (normally for a moment)


@dataclass
class Derivation:
    fields: dict[str, Any]   # the `derived` entry of the metadata document
    text: str = ""  # the search text ("" for the request alone: the index adds its short columns)
    unlinked: Clue | None = None  # a continuation whose previous turn is not known yet


def derive_request_document(log_dir: BodyStore, document: dict[str, Any], linker: Linker) -> Derivation:
    """The `derived` entry of an exchange whose request has ended and whose response has
    not: the fields the request gives (derive.request_fields) and its place in a
    conversation, so that an exchange in flight is listed with them. Its `parts` is ["request"]."""
    record = ExchangeRecord(document)
    request = log_dir.read_part(record, "request", DERIVE_LIMIT)
    parsed = parse_body(request) if request else None
    fields = derive.request_fields(parsed, record.request_path(request.head if request else None))
    _link(record, request, parsed, fields, linker)
    _remember(linker, record, fields, True)  # a next turn may come before this one's answer ends
    return Derivation({"version": derive.VERSION, "parts": ["request"], "at": time.time(), **fields}, "")


def derive_document(log_dir: BodyStore, document: dict[str, Any], linker: Linker) -> Derivation:
    """The `derived` entry of a metadata document, from the exchange's files, and its
    search text."""
    record = ExchangeRecord(document)
    request = log_dir.read_part(record, "request", DERIVE_LIMIT)
    path = record.request_path(request.head if request else None)
    parsed_request = parse_body(request) if request else None
    requested = derive.request_fields(parsed_request, path)
    conversation, new_from, unlinked = _link(record, request, parsed_request, requested, linker)
    response = log_dir.read_part(record, "response", DERIVE_LIMIT)
    fields = derive.answer_fields(requested, parse_body(response, skim=True) if response else None, path)
    for name in ("session_id", "turn_key", "conversation_id", "previous_id", "new_from"):
        fields[name] = requested.get(name)
    answered = not record.proxy.get("error") and not fields.get("error_message")
    _remember(linker, record, fields, answered)
    text = _search_text(conversation, new_from, parsed_request, response, fields.get("api"))
    return Derivation({"version": derive.VERSION, "parts": record.ended_parts, "at": time.time(), **fields},
                      text, unlinked)


def _link(record: ExchangeRecord, request: Message | None, parsed: ParsedBody | None,
          fields: dict[str, Any], linker: Linker) -> tuple[Conversation | None, int, Clue | None]:
    """Put the request's session and place in a conversation in `fields`; returns the
    conversation, where its new messages start, and its clue if the turn it continues may
    not be known yet."""
    fields["session_id"] = session_id(request.head if request else None, _json(parsed))
    conversation = apis.conversation(_json(parsed), fields.get("api"))
    if conversation is None or not conversation.messages:
        return conversation, 0, None
    fields["turn_key"] = conversation.turn_key
    found, unlinked = clue(conversation), None
    link = linker.follow(found, record.started_at or time.time(), fields["session_id"]) if found else None
    if link is None:
        fields.update(previous_id=None, conversation_id=record.id, new_from=0)
    else:
        fields.update(previous_id=link.previous.id, new_from=link.new_from,
                      conversation_id=linker.conversation_of(link.previous))
    if found is not None and (link is None or not link.sure):
        unlinked = found  # the turn it continues may be logged later (relinking.py)
    return conversation, fields["new_from"], unlinked


def _remember(linker: Linker, record: ExchangeRecord, fields: dict[str, Any], answered: bool) -> None:
    if fields.get("turn_key") or fields.get("response_id"):
        turn = Turn(record.id, fields.get("conversation_id"), fields.get("session_id"),
                    record.started_at or time.time(), answered, fields.get("answer_key"))
        linker.remember(turn, fields.get("turn_key"), fields.get("response_id"))


def remember_document(linker: Linker, document: dict[str, Any]) -> None:
    """A derived exchange read back (reindex.py): later turns may continue it."""
    record = ExchangeRecord(document)
    fields = record.derived
    _remember(linker, record, fields, not record.proxy.get("error") and not fields.get("error_message"))


def search_text(log_dir: BodyStore, document: dict[str, Any]) -> str:
    """The search text of an exchange, made again from its files (reindex.py): empty while
    it is in flight or underived (the index still adds its short columns)."""
    record = ExchangeRecord(document)
    fields = record.derived
    if record.state == "in_flight" or not fields:
        return ""
    request = log_dir.read_part(record, "request", DERIVE_LIMIT)
    parsed = parse_body(request) if request else None
    return _search_text(apis.conversation(_json(parsed), fields.get("api")), fields.get("new_from") or 0,
                        parsed, log_dir.read_part(record, "response", DERIVE_LIMIT), fields.get("api"))


def _search_text(conversation: Conversation | None, new_from: int, request: ParsedBody | None,
                 response: Message | None, api: str | None) -> str:
    response_text = response.body.data.decode("utf-8", "replace") if response else None
    return searchtext.exchange_text(conversation, new_from, request, response_text, llm=api is not None)


def _json(parsed: ParsedBody | None) -> Any:
    return parsed.json if parsed is not None and parsed.kind == "json" else None


class Deriver:
    """Derives on the loop what is small, on its thread what is large; a failure is stored
    as the entry's `error` (and counted), so that a bug cannot make it try for ever."""

    def __init__(self, log_dir: BodyStore, linker: Linker | None = None) -> None:
        self.log_dir = log_dir
        self.linker = linker if linker is not None else Linker()
        # Told of a turn derived before the turn it continues (relinking.py), if set
        # (id, started_at, session_id, clue, the previous_id found, or None)
        self.on_unlinked: Callable[[str, float, str | None, Clue, str | None, str | None], None] | None = None
        self.pool = ThreadPool(1)  # also rebuilds the index (app.py): files are read there
        self.errors = 0
        self._texts: OrderedDict[str, str] = OrderedDict()

    def inline(self, record: ExchangeRecord) -> dict[str, Any] | None:
        """At the end of a part, the entry to store in the same rewrite, if it is cheap:
        the whole exchange's once it is ready, else the request's fields; None otherwise."""
        if record.ready:
            if record.needs_derive and record.unparsed_bytes() <= INLINE_BYTES:
                return self.compute(record)
        elif record.request_only and record.unparsed_bytes(request_only=True) <= INLINE_BYTES:
            return self.compute(record, request_only=True)
        return None

    def compute(self, record: ExchangeRecord, request_only: bool = False) -> dict[str, Any]:
        how = derive_request_document if request_only else derive_document
        try:
            if record.unparsed_bytes(request_only) <= INLINE_BYTES:  # small: no thread hop
                derivation = how(self.log_dir, record.document, self.linker)
            else:  # the loop keeps serving
                derivation = self.pool.apply(how, (self.log_dir, record.document, self.linker))
        except Exception as e:  # a bug must not loop: store the failure instead
            self.errors += 1
            print(f"orlogserver: deriving fields of {record.id} failed: {e!r}", file=sys.stderr)
            parts = ["request"] if request_only else sorted(record.parts)
            return {"version": derive.VERSION, "parts": parts, "error": repr(e)}
        if derivation.unlinked is not None and self.on_unlinked is not None:
            fields = derivation.fields
            self.on_unlinked(record.id, record.started_at or time.time(), fields.get("session_id"),
                             derivation.unlinked, fields.get("previous_id"), fields.get("conversation_id"))
        self._keep_text(record.id, derivation.text)
        return derivation.fields

    def retext(self, document: dict[str, Any]) -> None:
        """Make the search text again for the rewrite's index write: a relinked turn's new
        messages start elsewhere (relinking.py), and the history is not indexed again."""
        self._keep_text(str(document["id"]), search_text(self.log_dir, document))

    def _keep_text(self, exchange_id: str, text: str) -> None:
        self._texts[exchange_id] = text
        if len(self._texts) > TEXTS_KEPT:  # an exchange deleted before its rewrite
            self._texts.popitem(last=False)

    def take_text(self, exchange_id: str) -> str | None:
        """The search text derived for an exchange, once (the index writes it with the row)."""
        return self._texts.pop(exchange_id, None) if self._texts else None
