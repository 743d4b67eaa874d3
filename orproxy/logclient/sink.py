"""The sink: where an exchange's log parts go, and the state they share.

It opens parts (part.py), keeps the memory budget and the spool they share, the set of
parts with data to send, and whether the logging server is down; its sender (sender.py)
delivers them. Logging never slows, fails or alters a proxied request (CONTRACT.md): a
part only ever queues, spills to the spool, or, past the spool's bound, truncates.
"""
from __future__ import annotations

import sys
import time
from typing import Any

import gevent
from gevent.event import Event

from orproxy import jsoncodec
from orproxy.http1 import split_url
from orproxy.logclient.budget import Budget
from orproxy.logclient.part import Part
from orproxy.logclient.sender import Sender
from orproxy.logclient.spool import Spool
from orproxy.transport import StreamingAdapter


class LogSink:
    def __init__(self, server_url: str, adapter: StreamingAdapter | None = None,
                 budget: Budget | None = None, spool: Spool | None = None, token: str | None = None) -> None:
        self.server_url = server_url.rstrip("/")
        self.budget = budget or Budget()
        self.spool = spool
        self.down = False               # the logging server did not take the last batch
        self.dropped_bytes = 0
        self.truncated_parts = 0
        self._said_full = False
        self._ready: dict[Part, None] = {}  # parts with data to send, in the order they got it
        self.wake = Event()
        key, netloc, base = split_url(self.server_url)
        self.sender = Sender(self, (adapter or StreamingAdapter()).pool, key, netloc, base.rstrip("/"), token)

    def open(self, exchange_id: str, kind: str, t0: float) -> Part:
        """The part `kind` (request, response, metadata) of exchange `exchange_id`, which
        started at `t0`."""
        return Part(self, exchange_id, kind, t0)

    def send_json(self, exchange_id: str, t0: float, document: dict[str, Any]) -> None:
        """The exchange's metadata, sent in the background."""
        part = self.open(exchange_id, "metadata", t0)
        part.write(jsoncodec.dumps(document))
        part.close()

    # -- what the parts tell it ------------------------------------------------------------

    def ready(self, part: Part) -> None:
        if part not in self._ready:
            self._ready[part] = None
            self.wake.set()

    def not_ready(self, part: Part) -> None:
        self._ready.pop(part, None)

    def ready_parts(self) -> list[Part]:
        return list(self._ready)

    def dropped(self, size: int) -> None:
        """A part could not keep `size` bytes: the spool is full (or there is none)."""
        self.dropped_bytes += size
        if not self._said_full:
            self._said_full = True
            where = f"the spool ({self.spool.directory}) is full" if self.spool else "there is no spool"
            print(f"orproxy: log data dropped: the logging server at {self.server_url} does not take it "
                  f"fast enough and {where}; logs are truncated with a marker and the bytes counted "
                  "in log_dropped_bytes", file=sys.stderr, flush=True)

    # -- the sender's news -----------------------------------------------------------------

    def went_down(self, error: Exception) -> None:
        """A batch did not arrive: keep what is in memory safe on disk, and whatever comes
        next goes there directly, until the logging server answers again."""
        if not self.down:
            self.down = True
            where = f"log data waits in the spool ({self.spool.directory})" if self.spool else \
                "log data waits in memory, within its budget"
            print(f"orproxy: logging server {self.server_url} unreachable ({error}); proxying "
                  f"continues, {where} until it answers", file=sys.stderr, flush=True)
        if self.spool is not None:
            for part in self.ready_parts():
                part.spill()

    def came_back(self) -> None:
        if self.down:
            self.down = False
            self._said_full = False
            print(f"orproxy: logging server {self.server_url} answers again", file=sys.stderr, flush=True)

    # -- stopping --------------------------------------------------------------------------

    def drain(self, timeout: float) -> None:
        """At the end: wait, at most `timeout` seconds, until every log byte in memory is
        delivered; what is not by then goes to the spool, for the next process to deliver."""
        deadline = time.monotonic() + timeout
        while (self._ready or self.sender.busy) and time.monotonic() < deadline:
            gevent.sleep(0.01)
        if self.spool is not None:
            for part in [*self.ready_parts(), *self.sender.inflight]:
                part.spill()
        self.close()

    def close(self) -> None:
        """Stop sending; the spool's undelivered segments stay for the next process."""
        self.sender.stop()
        if self.sender.spool is not None:
            self.sender.spool.close()
