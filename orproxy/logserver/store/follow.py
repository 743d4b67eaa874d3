"""Following a part file while its upload goes on: its bytes as they are written, until
the part has ended (ingest.py writes the file as the data arrives, CONTRACT.md).

One loop for both readers of a growing file: the raw download with `?follow=true`
(web/api.py) and the live tail (live/tail.py). It looks at the metadata document every
POLL seconds while the file is not growing, reads whatever was written, and stops once
the part's upload has ended and all of it was read, when the exchange is deleted or
over without that part, when the server stops, or after MAX_SECONDS.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from gevent.event import Event

from orproxy.logserver.store.stores import BodyStore
from orproxy.logserver.store.record import ExchangeRecord

BLOCK = 65536
POLL = 0.1           # seconds between looks at a file that is not growing
MAX_SECONDS = 900.0  # a follower follows one part at most this long


class PartFollower:
    """Iterating yields the file's bytes in blocks as they are written, and b"" after
    each look that found nothing new (a chance to send a heartbeat). Once it stops,
    `end` says why: "complete" or "incomplete" (the upload ended; `part` is its entry),
    "deleted", "no <kind>", "server stopping" or "timeout"."""

    def __init__(self, log_dir: BodyStore, exchange_id: str, kind: str, stopping: Event | None = None) -> None:
        self.log_dir = log_dir
        self.exchange_id = exchange_id
        self.kind = kind
        self.stopping = stopping if stopping is not None else Event()
        self.end: str | None = None
        self.part: dict[str, Any] = {}
        self.skipping = False

    def skip_rest(self) -> None:
        """Read no more of the file (the reader would show nothing more): only the end is
        still waited for."""
        self.skipping = True

    def blocks(self) -> Iterator[bytes]:
        """The file's bytes only, without the quiet looks."""
        return (block for block in self if block)

    def __iter__(self) -> Iterator[bytes]:
        deadline = time.monotonic() + MAX_SECONDS
        f = None
        try:
            while True:
                document = self.log_dir.read_metadata(self.exchange_id)
                if document is None:
                    self.end = "deleted"
                    return
                record = ExchangeRecord(document)
                if f is None:  # the part may not have started yet
                    f = self.log_dir.open_part(record, self.kind)
                    if f is None and record.over_without(self.kind):
                        self.end = f"no {self.kind}"
                        return
                ended = record.ended(self.kind)
                while f is not None:  # everything written so far (all of it once ended)
                    if self.skipping:
                        f.seek(0, 2)
                        break
                    block = f.read(BLOCK)
                    if not block:
                        break
                    yield block
                if ended:
                    self.part = record.part(self.kind)
                    self.end = "complete" if self.part.get("complete") else "incomplete"
                    return
                if self.stopping.is_set() or time.monotonic() > deadline:
                    self.end = "server stopping" if self.stopping.is_set() else "timeout"
                    return
                yield b""
                self.stopping.wait(POLL)
        finally:
            if f is not None:
                f.close()
