"""The sink: opens log streams to one logging server, starts them, and keeps the policy.

A stream is started once the proxy next waits (a loop callback): if by then it is already
complete, as most short exchanges are, its body goes to the lane (lane.py) as one of a
batch of pipelined PUTs on one connection; one still open gets its own streaming PUT.

Logging must never slow, fail or alter a proxied request (CONTRACT.md), so a logging server
that is down, or that stalls, is given a rest (`RETRY_AFTER`) during which new streams are
dropped at once instead of piling up connections; logging resumes by itself when it
answers again.
"""
from __future__ import annotations

import json
import resource
import sys
import time
from typing import Any

import gevent

from orproxy.http1 import split_url
from orproxy.logclient.budget import Budget
from orproxy.logclient.lane import Lane
from orproxy.logclient.stream import LogStream
from orproxy.transport import StreamingAdapter

# A logging server that does not accept or answer within these is treated as stalled. It
# runs at idle CPU priority, so on a saturated machine it may not run at all until the load
# ends, and its listen queue overflows (a connect then waits for SYN retries, 1 s, 3 s,
# 7 s, ...). With 2 s and 10 s, 0-1,470 of 6,600 held streams were logged in full (bench
# streams10k); with 2 s and 60 s, 4,125-4,616; with these, all. Memory stays bounded by the
# budgets, connections by max_log_streams.
CONNECT_TIMEOUT = 30.0
IO_TIMEOUT = 60.0
RETRY_AFTER = 1.0                    # seconds to leave a failed logging server alone


def max_log_streams(limit: int | None = None) -> int:
    """Streaming PUTs open at once: a third of the open-files limit (this process's unless
    given). An exchange held open also needs its client's and its upstream's socket, so
    past this the traffic itself would run out of descriptors; the exchanges beyond it are
    not logged."""
    if limit is None:
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 65536 if limit == resource.RLIM_INFINITY else max(64, limit // 3)


class LogSink:
    """Log streams to one logging server, the shared budget and the counters."""

    def __init__(self, server_url: str, adapter: StreamingAdapter | None = None,
                 budget: Budget | None = None) -> None:
        self.server_url = server_url.rstrip("/")
        self.adapter = adapter or StreamingAdapter()
        self.budget = budget or Budget()
        self.timeouts = (CONNECT_TIMEOUT, IO_TIMEOUT)
        self.active_streams = 0
        self.max_streams = max_log_streams()
        self.retry_at = 0.0
        self.dropped_bytes = 0
        self.failed_streams = 0
        self._reported_down = False
        self._starting: list[LogStream] = []
        key, self.netloc, base = split_url(self.server_url)
        self.base_path = base.rstrip("/")
        self.origin = self.server_url[:len(self.server_url) - len(self.base_path)]
        self.lane = Lane(self.adapter.pool, key, self.netloc, self.timeouts,
                         self.budget.release, self.stream_failed, self.stream_succeeded)

    def open(self, exchange_id: str, kind: str) -> LogStream:
        """A stream for `PUT {server}/{id}/{kind}`; a dead one while the server rests."""
        if time.monotonic() < self.retry_at or self.active_streams >= self.max_streams:
            return LogStream(self, None)
        stream = LogStream(self, f"{self.base_path}/{exchange_id}/{kind}")
        if not self._starting:
            gevent.get_hub().loop.run_callback(self._start_streams)
        self._starting.append(stream)
        return stream

    def send_json(self, exchange_id: str, kind: str, document: dict[str, Any]) -> None:
        """One small JSON document (the exchange's metadata), sent in the background."""
        stream = self.open(exchange_id, kind)
        stream.write(json.dumps(document, separators=(",", ":")).encode())
        stream.close()

    def drain(self, timeout: float) -> None:
        """Wait, at most `timeout` seconds, until every queued log byte is sent or given up."""
        deadline = time.monotonic() + timeout
        while (self.budget.used > 0 or self.active_streams or self._starting) and (
                time.monotonic() < deadline):
            gevent.sleep(0.01)

    def _start_streams(self) -> None:
        """Runs in the event loop once the proxy waits: complete streams go to the lane."""
        starting, self._starting = self._starting, []
        for stream in starting:
            if stream.dead:
                continue
            if stream.closed:
                self.lane.put(stream.path, stream.whole_body())
            else:
                self.active_streams += 1
                stream.start()

    def stream_failed(self, error: Exception) -> None:
        self.failed_streams += 1
        self.retry_at = time.monotonic() + RETRY_AFTER
        if not self._reported_down:
            self._reported_down = True
            print(f"orproxy: logging server {self.server_url} unreachable ({error}); "
                  "proxying continues, logging resumes when it answers", file=sys.stderr, flush=True)

    def stream_succeeded(self) -> None:
        if self._reported_down:
            self._reported_down = False
            print(f"orproxy: logging server {self.server_url} answers again", file=sys.stderr, flush=True)
