"""One part of an exchange's log (its request, its response, its metadata), from the tee to
the logging server: bytes appended at offsets, kept until the logging server has them.

`write` and `close` never block and never fail. A part keeps its data in memory within two
budgets (PART_BUDGET for itself, the process's Budget for all); what does not fit, and
everything while the logging server is down, goes to the spool on disk instead (the part
"spills": from then on all of its data goes there, in order). Only when the spool is full
too does a part stop logging: it counts what it dropped (`dropped`, the exchange's
`log_dropped_bytes`) and ends with a truncation marker.

The sender (sender.py) takes the unsent data in order (`take`), and then either hears how
much the logging server now holds (`acked`), which frees it, or that the batch failed
(`unsend`), after which the same data goes again.
"""
from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING

from orproxy.logwire import append_head, metadata_head

if TYPE_CHECKING:
    from orproxy.logclient.sink import LogSink

PART_BUDGET = 8 * 1024 * 1024        # bytes of one part held in memory before it spills

Block = bytes | memoryview


def truncation_marker(dropped: int) -> bytes:
    return (f"\r\n[orproxy: log truncated here; {dropped} bytes were proxied but not logged "
            f"because the logging server was slow or unreachable and the spool was full]\r\n").encode()


class NullPart:
    """The part of an exchange that is not logged (logging off, or `logging: false`)."""

    dropped = 0
    queued = 0
    spilled = False

    def write(self, block: Block) -> None:
        pass

    def close(self) -> None:
        pass


NULL_PART = NullPart()


class Part:
    __slots__ = ("sink", "exchange_id", "kind", "t0", "t", "size", "blocks", "start", "sent",
                 "queued", "spilled", "closed", "final_sent", "dropped")

    def __init__(self, sink: "LogSink", exchange_id: str, kind: str, t0: float) -> None:
        self.sink = sink
        self.exchange_id = exchange_id
        self.kind = kind                 # "request", "response" or "metadata"
        self.t0 = t0                     # when the exchange started: names its files
        self.t = t0 if kind == "request" else time.time()
        self.size = 0                    # bytes written: the next byte's offset
        self.blocks: deque[Block] = deque()  # in memory, from offset `start`, not yet acked
        self.start = 0
        self.sent = 0                    # offset up to which blocks are in the batch in flight
        self.queued = 0                  # bytes in `blocks`
        self.spilled = False
        self.closed = False
        self.final_sent = False          # the logging server has been sent the part's end
        self.dropped = 0

    # -- the writer's side -----------------------------------------------------------------

    def write(self, block: Block) -> None:
        size = len(block)
        if not size:
            return
        if self.dropped:
            self._drop(size)  # from the first drop on, the rest is dropped: no holes
            return
        sink = self.sink
        if self.kind == "metadata":  # one small document, always whole: never dropped
            sink.budget.overdraw(size)
        elif (self.spilled or (sink.down and sink.spool is not None) or self.queued + size > PART_BUDGET
                or not sink.budget.reserve(size)):
            if self.spill() and self._spool(block, self.size):
                self.size += size
            else:
                self._drop(size)
            return
        self.blocks.append(block)
        self.queued += size
        self.size += size
        sink.ready(self)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.dropped:
            marker = truncation_marker(self.dropped)
            if not (self.spilled and self._spool(marker, self.size, force=True)):
                self.sink.budget.overdraw(len(marker))  # the marker must be said, even past the budget
                self.blocks.append(marker)
                self.queued += len(marker)
            self.size += len(marker)
        if self.spilled:
            self.final_sent = self._spool(b"", self.size, final=True, force=True)
        elif not (self.sink.down and self.spill()):  # down: a complete part is safer on disk
            self.sink.ready(self)

    def _drop(self, size: int) -> None:
        self.dropped += size
        self.sink.dropped(size)

    # -- the spool -------------------------------------------------------------------------

    def spill(self) -> bool:
        """Move what is in memory to the spool; from now on all data goes there. False if
        the spool cannot take it (there is none, or it is full): the memory is kept then. A
        metadata part spills whole, once closed."""
        if self.spilled:
            return True
        if self.sink.spool is None or (self.kind == "metadata" and not self.closed):
            return False
        if self.kind == "metadata":
            if not self._spool(b"".join(self.blocks), 0, force=True):
                return False
        else:
            offset = self.start
            for block in self.blocks:
                if not self._spool(block, offset):
                    return False  # what was written stays there: delivering twice is harmless
                offset += len(block)
            if self.closed and not self._spool(b"", self.size, final=True, force=True):
                return False
        self.spilled = True
        self.final_sent = self.closed
        self.sink.budget.release(self.queued)
        self.blocks.clear()
        self.start, self.sent, self.queued = self.size, self.size, 0
        self.sink.not_ready(self)
        return True

    def _spool(self, block: Block, offset: int, final: bool = False, force: bool = False) -> bool:
        if self.kind == "metadata":
            head = metadata_head(self.exchange_id, len(block))
        else:
            head = append_head(self.exchange_id, self.kind, self.t0, self.t, offset, len(block), final)
        spool = self.sink.spool  # None once the logging server proved to take plain PUTs only
        if spool is None or not spool.append((head, block), len(head) + len(block), force):
            return False
        self.sink.wake.set()  # the sender delivers the spool too
        return True

    # -- the sender's side -----------------------------------------------------------------

    @property
    def unsent(self) -> bool:
        """Data or an end the logging server has not been sent (a metadata part: its
        document, once closed)."""
        if self.spilled:
            return False
        if self.kind == "metadata":
            return self.closed and not self.final_sent
        return self.sent < self.size or (self.closed and not self.final_sent)

    def take(self, limit: int) -> tuple[int, list[Block], bool]:
        """The next unsent data (at least one block, then up to `limit` bytes), its offset,
        and whether it ends the part. A metadata part goes whole."""
        offset, taken, blocks = self.start, 0, []
        for block in self.blocks:
            if offset >= self.sent:
                if blocks and taken + len(block) > limit and self.kind != "metadata":
                    break
                blocks.append(block)
                taken += len(block)
            offset += len(block)
        self.sent = offset
        final = self.closed and offset == self.size
        self.final_sent = self.final_sent or final
        return offset - taken, blocks, final

    def acked(self, length: int) -> None:
        """The logging server now holds `length` bytes of the part (a metadata part: its
        document): free what it has. What it lacks of what was sent goes again."""
        if self.spilled:
            return
        if self.kind == "metadata":
            length = self.size
        while self.blocks and self.start + len(self.blocks[0]) <= length:
            block = self.blocks.popleft()
            self.start += len(block)
            self.queued -= len(block)
            self.sink.budget.release(len(block))
        self.sent = self.start
        if length < self.size:
            self.final_sent = False
        if self.unsent:
            self.sink.ready(self)

    def discard(self) -> None:
        """The logging server has no place for this part (a plain-PUT server and metadata)."""
        self.acked(self.size)
        self.final_sent = True
        self.sink.not_ready(self)

    def unsend(self) -> None:
        """The batch failed: what it carried of this part goes again."""
        if not self.spilled:
            self.sent = self.start
            self.final_sent = False
            self.sink.ready(self)

    @property
    def done(self) -> bool:
        """Everything is with the logging server, or safe in the spool."""
        return self.closed and self.final_sent and not self.blocks
