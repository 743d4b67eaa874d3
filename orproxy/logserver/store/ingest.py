"""Ingest: the proxy's streamed PUTs written to files as the bytes arrive, and each
exchange's metadata document kept current, the one writer of it.

The file grows while the exchange is in flight, so a reader (the UI's live tail) can
follow it. Memory stays constant: one block at a time.

Every rewrite of a metadata document is told to the subscribers (the index) as the record
written and the events it carries: a part started, its head known, a part ended, the
proxy's metadata stored, the derived fields amended. A batch of pipelined PUTs makes one
rewrite with several events. Deriving the LLM fields is part of keeping the document
(deriving.py computes them): a small exchange gets them within the update that ends its
last part, a large one afterwards in a rewrite of its own; the index only ever reads.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import GeneratorType
from typing import Any

import gevent
from gevent.pywsgi import Input

from orproxy.logserver.llm.httpfile import HeadSniffer
from orproxy.logserver.llm.sse import strict_json
from orproxy.logserver.store.deriving import Deriver
from orproxy.logserver.store.record import ExchangeRecord
from orproxy.logserver.store.stores import BodyStore

BLOCK = 65536
MAX_METADATA = 1024 * 1024
ANNOUNCE_AFTER = 0.02  # seconds
KEEP_BYTES = 64 * 1024  # parts up to this stay in memory a while: deriving reads them from there
RECHECK_AFTER = 2.0  # seconds: another worker process may be deriving an exchange


@dataclass(frozen=True, slots=True)
class PartStarted:
    """A part still arriving ANNOUNCE_AFTER after its first block (a stream) is listed."""
    kind: str


@dataclass(frozen=True, slots=True)
class HeadKnown:
    """The head of an announced part arrived in pieces and is now complete."""
    kind: str


@dataclass(frozen=True, slots=True)
class PartEnded:
    """A part's upload ended, whole or broken off."""
    kind: str


@dataclass(frozen=True, slots=True)
class ProxyMetadataStored:
    """The proxy's metadata came: the exchange is over."""


@dataclass(frozen=True, slots=True)
class DerivedAmended:
    """The derived fields were stored in a rewrite of their own (a large exchange's)."""


Event = PartStarted | HeadKnown | PartEnded | ProxyMetadataStored | DerivedAmended
Change = Callable[[dict[str, Any]], None]
Subscriber = Callable[[ExchangeRecord, tuple[Event, ...]], None]


class BadInput(ValueError):
    """The uploaded data cannot be accepted (e.g. metadata that is not a JSON object)."""


def arriving_blocks(environ: dict[str, Any]) -> Iterator[bytes]:
    """The body in blocks as they arrive, not as `read(n)` would hand them over.

    Both servers' `read(n)` wait for n bytes (FACTS.md; gunicorn's readline too, for
    1 KiB), which would hold a slow SSE stream back for minutes and stall a live tail.
    The proxy sends each block as one chunk, so reading chunk by chunk is prompt: under
    pywsgi to the end of the current chunk; under gunicorn from its chunk parser, a
    generator that yields each piece as it is received. Any other server: lines.
    """
    body = environ["wsgi.input"]
    if isinstance(body, Input) and body.chunked_input:
        while True:
            left = body.chunk_length - body.position
            block = body.read(left if left > 0 else 1)  # 1: parse the next chunk's size line
            if not block:
                return
            yield block
        return
    pieces = _gunicorn_chunk_pieces(body)
    if pieces is not None:
        yield from (piece for piece in pieces if piece)
        return
    while block := body.readline(BLOCK):
        yield block


def _gunicorn_chunk_pieces(body: Any) -> Iterator[bytes] | None:
    """gunicorn's chunked-body generator, if the body is untouched and gunicorn's layout is
    the one this was written against (gunicorn 23-27); None otherwise."""
    reader = getattr(body, "reader", None)
    parser = getattr(reader, "parser", None)
    buffers = (getattr(body, "buf", None), getattr(reader, "buf", None))
    if type(reader).__name__ != "ChunkedReader" or not isinstance(parser, GeneratorType):
        return None
    if not all(hasattr(b, "tell") and b.tell() == 0 for b in buffers):
        return None
    reader.parser = None  # from now on gunicorn's own reads see the body as consumed
    return parser


class Ingest:
    """Writes parts and metadata documents; `deriver` None: no derived fields (a bench)."""

    def __init__(self, log_dir: BodyStore, deriver: Deriver | None = None) -> None:
        self.log_dir = log_dir
        self.deriver = deriver
        self.subscribers: list[Subscriber] = []
        self.markers: list[Subscriber] = []
        self._deriving: set[str] = set()          # exchanges derived in the background now
        self._deriving_request: set[str] = set()  # ... their request's fields alone

    def subscribe(self, subscriber: Subscriber) -> None:
        """Call `subscriber(record, events)` after every rewrite of a metadata document,
        before any greenlet switch (the record is the document as written)."""
        self.subscribers.append(subscriber)

    def mark_in_rewrite(self, marker: Subscriber) -> None:
        """Call `marker(record, events)` inside every rewrite, after its changes and derived
        fields, before the document is written, under the lock that serialises rewrites
        across processes: what it sets is written with them (the metrics mark an exchange
        counted once, whichever process rewrites it: logserver/metrics/counting.py)."""
        self.markers.append(marker)

    @property
    def deriving(self) -> int:
        """Exchanges whose fields are being derived in the background."""
        return len(self._deriving) + len(self._deriving_request)

    def _update(self, exchange_id: str, now: float, change: Change, event: Event, batch: Any = None) -> None:
        """Change the metadata file and tell the subscribers: at once, or, given the
        connection's batch (batching.py), when the connection next waits, in one rewrite
        for all the changes its pipelined requests made to the exchange. The proxy's lane
        sends an exchange's request, response and metadata in one write: one rewrite instead
        of three, and no answer reaches it before the file is written."""
        if batch is None:
            self.apply(exchange_id, [(now, change, event)])
        else:
            batch.defer(exchange_id.lower(), (now, change, event), self.apply)

    def apply(self, exchange_id: str, changes: list[tuple[float, Change, Event]]) -> None:
        """Make `changes` (their times, changes and events) in one rewrite of the exchange's
        metadata document, then tell the subscribers."""
        events = tuple(event for _, _, event in changes)
        with self.log_dir.metadata(exchange_id, changes[0][0]) as document:
            record = ExchangeRecord(document)
            for _, change, _ in changes:
                change(document)
            # Once for all the changes: an exchange whose parts all ended together (most)
            # is parsed once, not its request first and then both.
            if self.deriver is not None and any(isinstance(event, PartEnded) for event in events):
                derived = self.deriver.inline(record)  # small: in this same rewrite
                if derived is not None:
                    document["derived"] = derived
            for marker in self.markers:
                marker(record, events)
        for subscriber in self.subscribers:
            subscriber(record, events)
        if self.deriver is not None:
            # Only the proxy's metadata, yet underived parts that had all ended: another
            # worker process (the one that wrote the last end) is most likely deriving.
            recheck = isinstance(events[-1], ProxyMetadataStored) and \
                not any(isinstance(event, PartEnded) for event in events)
            self._derive_later(record, recheck)

    # -- derived fields that did not fit in the update that ended a part ---------------------

    def _derive_later(self, record: ExchangeRecord, recheck: bool) -> None:
        """Derive in the background what the last rewrite left underived: the whole exchange
        once ready, else the request's fields once the request has ended. `recheck`: look
        again in RECHECK_AFTER seconds whether it still needs it (if it has a response)."""
        exchange_id = record.id
        if record.ready and record.needs_derive:
            if exchange_id not in self._deriving:
                self._deriving.add(exchange_id)
                later = recheck and record.ended("response")
                gevent.spawn(self._derive, exchange_id, None if later else record)
        elif record.request_only and exchange_id not in self._deriving_request:
            self._deriving_request.add(exchange_id)  # a large request: its fields on the thread
            gevent.spawn(self._derive_request, record)

    def _derive(self, exchange_id: str, record: ExchangeRecord | None) -> None:
        assert self.deriver is not None
        try:
            if record is None:
                gevent.sleep(RECHECK_AFTER)
                document = self.log_dir.read_metadata(exchange_id)
                record = ExchangeRecord(document) if document is not None else None
                if record is None or not record.needs_derive:
                    return
            derived = self.deriver.compute(record)
        finally:
            self._deriving.discard(exchange_id)
        self.amend(exchange_id, lambda d: d.update(derived=derived))

    def _derive_request(self, record: ExchangeRecord) -> None:
        assert self.deriver is not None
        try:
            derived = self.deriver.compute(record, request_only=True)
        finally:
            self._deriving_request.discard(record.id)

        def change(current: dict[str, Any]) -> None:
            if "derived" not in current:  # not if the whole exchange was derived meanwhile
                current["derived"] = derived
        self.amend(record.id, change)

    def amend(self, exchange_id: str, change: Change) -> None:
        """Store derived fields, unless the exchange is gone (deleted meanwhile)."""
        if self.log_dir.exists(exchange_id):
            self._update(exchange_id, time.time(), change, DerivedAmended())

    def store_part(self, exchange_id: str, kind: str, environ: dict[str, Any]) -> str:
        """Stream one request/response part into the store; returns its name (the file's).

        A part still arriving ANNOUNCE_AFTER seconds after its first block (a stream) is
        announced in the metadata file with its head's summary (method, path, status), so
        an exchange in flight is listed with what it is. A part that arrives whole at once
        (most) is recorded by one update at its end: each update rewrites the file.
        """
        now = time.time()
        sniffer = HeadSniffer()
        state = {"announced": False, "ended": False}

        def entry() -> dict[str, Any]:
            part: dict[str, Any] = {"file": name, "received_at": now, "complete": False, "bytes": 0}
            if sniffer.head is not None:
                part["head"] = sniffer.head.summary()
            return part

        def announce() -> None:
            if not state["ended"]:
                state["announced"] = True
                part = entry()
                self._update(exchange_id, now, lambda d: d["parts"].update({kind: part}), PartStarted(kind))

        size, error, timer = 0, None, None
        whole = int(environ.get("CONTENT_LENGTH") or 0)  # 0: chunked, its end unknown
        kept: list[bytes] | None = []  # a small part's bytes, for deriving without a re-read
        since = self.log_dir.sync_point()
        with self.log_dir.open_writer(exchange_id, kind, now, fresh=True) as writer:
            name = writer.name
            try:
                for block in arriving_blocks(environ):
                    writer.write(block)
                    size += len(block)
                    if kept is not None and size <= KEEP_BYTES:
                        kept.append(block)
                    else:
                        kept = None
                    if not sniffer.done:
                        sniffer.feed(block)
                        if sniffer.head is not None and state["announced"]:  # a head in pieces
                            head = sniffer.head.summary()
                            self._update(exchange_id, now, lambda d: d["parts"][kind].update(head=head),
                                         HeadKnown(kind))
                    if timer is None and size != whole:  # not whole yet: maybe a stream
                        timer = gevent.spawn_later(ANNOUNCE_AFTER, announce)
            except (OSError, ValueError) as e:  # the proxy went away mid-stream
                error = str(e) or type(e).__name__
        state["ended"] = True
        if timer is not None:
            timer.kill()
        if error is None:
            self.log_dir.sync(since)  # durable before the answer (StoreUnavailable: the proxy resends)
        if kept and error is None:
            self.log_dir.keep_recent(name, b"".join(kept))
        final = entry()

        def finished(d: dict[str, Any]) -> None:
            part = d["parts"].setdefault(kind, final)
            part.update(complete=error is None, bytes=size, completed_at=time.time())
            if "head" in final:
                part["head"] = final["head"]
            if error:
                part["error"] = error

        self._update(exchange_id, now, finished, PartEnded(kind), environ.get("orproxy.batch"))
        return name

    def store_metadata(self, exchange_id: str, environ: dict[str, Any]) -> None:
        data = environ["wsgi.input"].read(MAX_METADATA + 1)
        if len(data) > MAX_METADATA:
            raise BadInput(f"metadata larger than {MAX_METADATA} bytes")
        try:
            proxy_metadata = strict_json(data.decode("utf-8", "replace"))
        except ValueError as e:
            raise BadInput(f"metadata is not JSON: {e}") from None
        if not isinstance(proxy_metadata, dict):
            raise BadInput("metadata must be a JSON object")
        self._update(exchange_id, time.time(), lambda d: d.update(proxy=proxy_metadata), ProxyMetadataStored(),
                     environ.get("orproxy.batch"))
