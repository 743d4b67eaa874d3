"""The sink: each log stream is a gevent Queue that a greenlet feeds into a streaming PUT.

A stream is started once the proxy next waits (a loop callback): if by then it is already
complete, as most short exchanges are, its body goes to the lane (lane.py) instead, as one
of a batch of pipelined PUTs on one connection.

Logging must never slow, fail or alter a proxied request (CONTRACT.md). So `write` never
blocks: it enqueues within two memory budgets (per stream and for the whole process) and,
past either, stops logging that stream, counts what it dropped, and ends the logged body
with a truncation marker. A logging server that is down, or that stalls, is given a rest
(`RETRY_AFTER`) during which new streams are dropped at once instead of piling up
connections; logging resumes by itself when it answers again.
"""
from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Iterator
from typing import Any

import gevent
import requests
from gevent.queue import SimpleQueue

from orproxy.lane import Lane
from orproxy.transport import StreamingAdapter, split_url

STREAM_BUDGET = 8 * 1024 * 1024      # bytes queued for one stream before it is truncated
TOTAL_BUDGET = 64 * 1024 * 1024      # bytes queued for all streams together
# A logging server that does not accept or answer within these is treated as stalled. It
# runs at idle CPU priority, so on a saturated machine it may not run at all until the load
# ends, and its listen queue overflows (a connect then waits for SYN retries, 1 s, 3 s,
# 7 s, ...). With 2 s and 10 s, 0-1,470 of 6,600 held streams were logged in full (bench
# streams10k); with 2 s and 60 s, 4,125-4,616; with these, all. Memory stays bounded by the
# budgets above, connections by max_log_streams.
CONNECT_TIMEOUT = 30.0
IO_TIMEOUT = 60.0
COALESCE_LIMIT = 256 * 1024          # queued blocks sent in one write up to this size ...
COALESCE_PARTS = 512                 # ... and this many
BUSY_STREAMS = 32                    # open log streams past which each gathers ...
BUSY_GATHER = 0.1                    # ... for this long (s): fewer, larger writes both sides
RETRY_AFTER = 1.0                    # seconds to leave a failed logging server alone

_END = None


def max_log_streams(limit: int | None = None) -> int:
    """Streaming PUTs open at once: a third of the open-files limit (this process's unless
    given). An exchange held open also needs its client's and its upstream's socket, so
    past this the traffic itself would run out of descriptors; the exchanges beyond it are
    not logged."""
    if limit is None:
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 65536 if limit == resource.RLIM_INFINITY else max(64, limit // 3)


def truncation_marker(dropped: int) -> bytes:
    return (f"\r\n[orproxy: log truncated here; {dropped} bytes were proxied but not logged "
            f"because the logging server was slow or unreachable]\r\n").encode()


class LogSink:
    """Opens log streams to one logging server and keeps the shared budget and counters."""

    def __init__(self, server_url: str, adapter: StreamingAdapter | None = None) -> None:
        self.server_url = server_url.rstrip("/")
        self.adapter = adapter or StreamingAdapter()
        self.queued_bytes = 0
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
        self.lane = Lane(self.adapter.pool, key, self.netloc, (CONNECT_TIMEOUT, IO_TIMEOUT),
                         self._sent, self.stream_failed, self.stream_succeeded)

    def open(self, exchange_id: str, kind: str) -> "LogStream":
        """A stream for `PUT {server}/{id}/{kind}`; a dead one while the server rests."""
        if time.monotonic() < self.retry_at or self.active_streams >= self.max_streams:
            return LogStream(self, None)
        stream = LogStream(self, f"{self.base_path}/{exchange_id}/{kind}")
        if not self._starting:
            gevent.get_hub().loop.run_callback(self._start_streams)
        self._starting.append(stream)
        return stream

    def drain(self, timeout: float) -> None:
        """Wait, at most `timeout` seconds, until every queued log byte is sent or given up."""
        deadline = time.monotonic() + timeout
        while (self.queued_bytes > 0 or self.active_streams or self._starting) and (
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

    def _sent(self, size: int) -> None:
        self.queued_bytes -= size

    def send_json(self, exchange_id: str, kind: str, document: dict[str, Any]) -> None:
        """One small JSON document (the exchange's metadata), sent in the background."""
        stream = self.open(exchange_id, kind)
        stream.write(json.dumps(document, separators=(",", ":")).encode())
        stream.close()

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


class NullStream:
    """The stream of an exchange that is not logged (logging off, or `logging: false`)."""

    dropped = 0

    def write(self, block: bytes) -> None:
        pass

    def close(self) -> None:
        pass


class LogStream:
    """One log stream. `write` and `close` are cheap and never block the caller.

    Blocks wait in a plain list until the stream starts (sink._start_streams); a stream
    that is complete by then never needs more. One still open gets a queue and a PUT.
    """

    __slots__ = ("sink", "path", "pending", "queue", "queued", "dropped", "dead", "closed")

    def __init__(self, sink: LogSink, path: str | None) -> None:
        self.sink = sink
        self.path = path
        self.queued = 0
        self.dropped = 0
        self.closed = False
        self.dead = path is None
        self.pending: list[bytes] | None = []
        self.queue: SimpleQueue | None = None

    def write(self, block: bytes) -> None:
        size = len(block)
        if (self.dead or self.dropped or self.queued + size > STREAM_BUDGET
                or self.sink.queued_bytes + size > TOTAL_BUDGET):
            self.dropped += size  # from the first drop on, the rest is dropped: no holes
            self.sink.dropped_bytes += size
            return
        self._enqueue(block)

    def _enqueue(self, block: bytes) -> None:
        self.queued += len(block)
        self.sink.queued_bytes += len(block)
        if self.queue is None:
            self.pending.append(block)
        else:
            self.queue.put(block)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.dead:
            return
        if self.dropped:
            self._enqueue(truncation_marker(self.dropped))
        if self.queue is not None:
            self.queue.put(_END)

    def whole_body(self) -> bytes:
        """Everything written, for a stream closed before it started; its budget stays
        counted until the lane has sent it."""
        body = b"".join(self.pending)
        self.pending = None
        return body

    def start(self) -> None:
        """The stream is still open: from now on a greenlet PUTs it as it comes."""
        self.queue = SimpleQueue()
        for block in self.pending:
            self.queue.put(block)
        self.pending = None
        gevent.spawn(self._put)

    def _blocks(self) -> Iterator[list[bytes]]:
        """Queued blocks as lists: all those already waiting go out together as one chunk
        (fewer writes under load), never joined (no copy of a large one)."""
        queue = self.queue
        last = 0.0
        while (block := queue.get()) is not _END:
            # Let the clients' writes that are ready go first, then gather. A dense stream
            # (its previous block within BUSY_GATHER) among many open ones gathers for
            # BUSY_GATHER: fewer, larger writes on both sides, where a sparse one would
            # only pay for the timer.
            now = time.monotonic()
            dense = now - last < BUSY_GATHER and self.sink.active_streams > BUSY_STREAMS
            gevent.sleep(BUSY_GATHER if dense else 0)
            last = now
            parts, size = [block], len(block)
            while (queue.qsize() and size < COALESCE_LIMIT and len(parts) < COALESCE_PARTS
                   and queue.peek() is not _END):
                part = queue.get()
                parts.append(part)
                size += len(part)
            self.queued -= size
            self.sink.queued_bytes -= size
            yield parts

    def _put(self) -> None:
        """The streaming PUT of a stream still open when it started, fed from the queue."""
        request = requests.PreparedRequest()
        request.method, request.url, request.body = "PUT", self.sink.origin + self.path, self._blocks()
        request.headers = [("Content-Type", "application/octet-stream")]
        try:
            response = self.sink.adapter.send(request, timeout=(CONNECT_TIMEOUT, IO_TIMEOUT))
            response.raw.read()
            response.close()
            if response.status_code >= 300:
                raise requests.exceptions.HTTPError(f"HTTP {response.status_code}")
            self.sink.stream_succeeded()
        except Exception as error:  # noqa: BLE001 - any failure only ends this log stream
            self.dead = True
            self.sink.stream_failed(error)
            self._release_queue()
        finally:
            self.sink.active_streams -= 1

    def _release_queue(self) -> None:
        """Give back the budget of blocks that will never be sent."""
        while self.queue.qsize():
            block = self.queue.get()
            if block is not _END:
                self.queued -= len(block)
                self.sink.queued_bytes -= len(block)
