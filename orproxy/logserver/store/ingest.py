"""Ingest: the proxy's streamed PUTs written to files as the bytes arrive.

The file grows while the exchange is in flight, so a reader (the UI's live tail) can
follow it. Memory stays constant: one block at a time.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from types import GeneratorType
from typing import Any

import gevent
from gevent.pywsgi import Input

from orproxy.logserver.llm.httpfile import HeadSniffer
from orproxy.logserver.llm.sse import strict_json
from orproxy.logserver.store.logdir import LogDir

BLOCK = 65536
MAX_METADATA = 1024 * 1024
ANNOUNCE_AFTER = 0.02  # seconds
KEEP_BYTES = 64 * 1024  # parts up to this stay in memory a while: the indexer derives from them

Observer = Callable[[str, dict[str, Any]], None]


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
    def __init__(self, log_dir: LogDir, observers: list[Observer] | None = None) -> None:
        self.log_dir = log_dir
        self.observers = observers or []
        self.changing = ""  # during observer calls: "part_end", "proxy", "amend" or "" (a part began)
        # Called with the document inside the update that ends a part, under its lock: a
        # chance to add to it without one more rewrite of the file (indexer.py derives here).
        self.on_part_end: Callable[[dict[str, Any]], None] | None = None

    def _update(self, exchange_id: str, now: float, change: Callable[[dict[str, Any]], None],
                what: str = "", batch: Any = None) -> None:
        """Change the metadata file and tell the observers: at once, or, given the
        connection's batch (store/batching.py), when the connection next waits, in one rewrite
        for all the changes its pipelined requests made to the exchange. The proxy's lane
        sends an exchange's request, response and metadata in one write: one rewrite instead
        of three, and no answer reaches it before the file is written."""
        if batch is None:
            self._apply(exchange_id, [(now, change, what)])
        else:
            batch.defer(exchange_id.lower(), (now, change, what), self._apply)

    def _apply(self, exchange_id: str, changes: list[tuple[float, Callable[[dict[str, Any]], None], str]]) -> None:
        with self.log_dir.metadata(exchange_id, changes[0][0]) as document:
            for _, change, _ in changes:
                change(document)
        whats = [what for _, _, what in changes]
        # observers may look: no greenlet switch until they return
        self.changing = "part_end" if "part_end" in whats else whats[-1]
        try:
            for observer in self.observers:
                observer(exchange_id, document)
        finally:
            self.changing = ""

    def amend(self, exchange_id: str, change: Callable[[dict[str, Any]], None]) -> bool:
        """Change the metadata of an exchange that exists (e.g. add derived fields), and tell
        the observers; False if it is gone (deleted meanwhile)."""
        if not self.log_dir.exists(exchange_id):
            return False
        self._update(exchange_id, time.time(), change, "amend")
        return True

    def store_part(self, exchange_id: str, kind: str, environ: dict[str, Any]) -> str:
        """Stream one request/response part into its .bin file; returns the file name.

        A part still arriving ANNOUNCE_AFTER seconds after its first block (a stream) is
        announced in the metadata file with its head's summary (method, path, status), so
        an exchange in flight is listed with what it is. A part that arrives whole at once
        (most) is recorded by one update at its end: each update rewrites the file.
        """
        now = time.time()
        path = self.log_dir.new_part_path(exchange_id, kind, now)
        name = os.path.basename(path)
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
                self._update(exchange_id, now, lambda d: d["parts"].update({kind: part}))

        size, error, timer = 0, None, None
        whole = int(environ.get("CONTENT_LENGTH") or 0)  # 0: chunked, its end unknown
        kept: list[bytes] | None = []  # a small part's bytes, for deriving without a re-read
        with open(path, "wb", buffering=0) as f:
            try:
                for block in arriving_blocks(environ):
                    f.write(block)
                    size += len(block)
                    if kept is not None and size <= KEEP_BYTES:
                        kept.append(block)
                    else:
                        kept = None
                    if not sniffer.done:
                        sniffer.feed(block)
                        if sniffer.head is not None and state["announced"]:  # a head in pieces
                            head = sniffer.head.summary()
                            self._update(exchange_id, now, lambda d: d["parts"][kind].update(head=head))
                    if timer is None and size != whole:  # not whole yet: maybe a stream
                        timer = gevent.spawn_later(ANNOUNCE_AFTER, announce)
            except (OSError, ValueError) as e:  # the proxy went away mid-stream
                error = str(e) or type(e).__name__
        state["ended"] = True
        if timer is not None:
            timer.kill()
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
            if self.on_part_end is not None:
                self.on_part_end(d)

        self._update(exchange_id, now, finished, "part_end", environ.get("orproxy.batch"))
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
        self._update(exchange_id, time.time(), lambda d: d.update(proxy=proxy_metadata), "proxy",
                     environ.get("orproxy.batch"))
