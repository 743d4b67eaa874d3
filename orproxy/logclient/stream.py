"""One log stream: the data of one part (`PUT {server}/{id}/request|response|metadata`).

`write` and `close` are cheap and never block the caller. Blocks wait in a plain list until
the sink starts the stream (once the proxy next waits): a stream complete by then goes to
the lane whole (lane.py); one still open gets a queue and a greenlet that feeds it into a
streaming PUT as it grows.

Within two budgets: STREAM_BUDGET for the stream, the process's Budget for all of them.
Past either, the stream stops logging, counts what it dropped (`dropped`, the exchange's
`log_dropped_bytes`) and ends the logged body with a truncation marker: the proxied
traffic never waits for the log.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import gevent
import requests
from gevent.queue import SimpleQueue

from orproxy.headers import HeaderPairs

if TYPE_CHECKING:
    from orproxy.logclient.sink import LogSink

STREAM_BUDGET = 8 * 1024 * 1024      # bytes queued for one stream before it is truncated
COALESCE_LIMIT = 256 * 1024          # queued blocks sent in one write up to this size ...
COALESCE_PARTS = 512                 # ... and this many
BUSY_STREAMS = 32                    # open log streams past which each gathers ...
BUSY_GATHER = 0.1                    # ... for this long (s): fewer, larger writes both sides

_END = None
_PUT_HEADERS = HeaderPairs([("Content-Type", "application/octet-stream")])


def truncation_marker(dropped: int) -> bytes:
    return (f"\r\n[orproxy: log truncated here; {dropped} bytes were proxied but not logged "
            f"because the logging server was slow or unreachable]\r\n").encode()


class NullStream:
    """The stream of an exchange that is not logged (logging off, or `logging: false`)."""

    dropped = 0
    queued = 0
    dead = True

    def write(self, block: bytes | memoryview) -> None:
        pass

    def close(self) -> None:
        pass


NULL_STREAM = NullStream()


class LogStream:
    __slots__ = ("sink", "path", "pending", "queue", "queued", "dropped", "dead", "closed")

    def __init__(self, sink: "LogSink", path: str | None) -> None:
        self.sink = sink
        self.path = path
        self.queued = 0
        self.dropped = 0
        self.closed = False
        self.dead = path is None
        self.pending: list[bytes | memoryview] | None = []
        self.queue: SimpleQueue | None = None

    def write(self, block: bytes | memoryview) -> None:
        size = len(block)
        if (self.dead or self.dropped or self.queued + size > STREAM_BUDGET
                or not self.sink.budget.reserve(size)):
            self.dropped += size  # from the first drop on, the rest is dropped: no holes
            self.sink.dropped_bytes += size
            return
        self._enqueue(block, size)

    def _enqueue(self, block: bytes | memoryview, size: int) -> None:
        self.queued += size
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
            marker = truncation_marker(self.dropped)
            self.sink.budget.overdraw(len(marker))
            self._enqueue(marker, len(marker))
        if self.queue is not None:
            self.queue.put(_END)

    def whole_body(self) -> bytes:
        """Everything written, for a stream closed before it started; its budget stays
        reserved until the lane has sent it."""
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

    def _blocks(self) -> Iterator[list[bytes | memoryview]]:
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
            self.sink.budget.release(size)
            yield parts

    def _put(self) -> None:
        """The streaming PUT of a stream still open when it started, fed from the queue."""
        sink = self.sink
        request = requests.PreparedRequest()
        request.method, request.url, request.body = "PUT", sink.origin + self.path, self._blocks()
        request.headers = _PUT_HEADERS
        try:
            response = sink.adapter.send(request, timeout=sink.timeouts)
            response.raw.read()
            response.close()
            if response.status_code >= 300:
                raise requests.exceptions.HTTPError(f"HTTP {response.status_code}")
            sink.stream_succeeded()
        except Exception as error:  # noqa: BLE001 - any failure only ends this log stream
            self.dead = True
            sink.stream_failed(error)
            self._release_queue()
        finally:
            sink.active_streams -= 1

    def _release_queue(self) -> None:
        """Give back the budget of blocks that will never be sent."""
        while self.queue.qsize():
            block = self.queue.get()
            if block is not _END:
                self.queued -= len(block)
                self.sink.budget.release(len(block))
