"""The message log of a WebSocket tunnel: frames decoded beside the tunnel into records.

The tunnel (tunnel.py) hands each block it has just forwarded to `MessageLog.tap`, which
only queues a reference to it. This log's own greenlet decodes the frames (RFC 6455,
permessage-deflate included) into message records on the exchange's response stream, the
format README.md documents. It decodes only while the event loop has nothing else to do, so
a burst is relayed first and logged after; the tunnel never waits for it. A decoder that
falls TAP_BUDGET behind in one direction stops logging that direction, with a record saying
so, and the tunnel goes on.
"""
from __future__ import annotations

import time
import zlib
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import gevent
from gevent.queue import SimpleQueue

try:
    from websockets.speedups import apply_mask
except ImportError:  # a build without the C extension: the same function in Python
    from websockets.utils import apply_mask

from orproxy.logclient.budget import Budget
from orproxy.logclient.part import Part

TAP_BUDGET = 32 * 1024 * 1024      # bytes a decoder may fall behind one direction before it stops
RECORD_MAX = 1024 * 1024           # larger payload pieces are split over several records
DECODE_SLICE = 256 * 1024          # bytes decoded per turn: a turn delays the tunnels ~0.1 ms

MAX_FRAME_HEAD = 14                # bytes: 2, an extended length of up to 8, a mask key of 4
OPCODES = {1: "text", 2: "binary", 8: "close", 9: "ping", 10: "pong"}
_EXTENDED = {126: 2, 127: 8}       # length codes -> bytes of extended length that follow
_DEFLATE_TAIL = b"\x00\x00\xff\xff"  # what a sender strips from each compressed message (RFC 7692 7.2.1)

_STOP = None


class MessageLog:
    """Decodes copies of both byte streams into message records on the response stream.

    `tap` only queues a reference to bytes already forwarded, within TAP_BUDGET per
    direction and the process's Budget for all logging; decoding and
    writing happen in this log's own greenlet, in arrival order.
    """

    def __init__(self, stream: Part, budget: Budget, extensions: str) -> None:
        self.stream = stream
        self.budget = budget
        self.queue: SimpleQueue = SimpleQueue()
        self.pending = {"client": 0, "upstream": 0}
        self.stopped: set[str] = set()
        self.decoders = {"client": Decoder(False, extensions), "upstream": Decoder(True, extensions)}
        self.idle = gevent.get_hub().loop.idle()
        self.greenlet = gevent.spawn(self._run)

    def tap(self, direction: str, data: bytes) -> None:
        if direction in self.stopped:
            return
        size = len(data)
        if self.pending[direction] + size > TAP_BUDGET or not self.budget.reserve(size):
            self.stopped.add(direction)
            self.queue.put((direction, time.time(), None))  # in order: stop here
            return
        self.pending[direction] += size
        self.queue.put((direction, time.time(), data))

    def finish(self, timeout: float) -> None:
        """Let the decoder log what is queued (for up to `timeout`), then stop it and give
        back the budget of whatever it did not get to."""
        self.queue.put(_STOP)
        self.greenlet.join(timeout)
        self.greenlet.kill()
        self.idle.close()
        while self.queue.qsize():
            item = self.queue.get()
            if item is not _STOP and item[2] is not None:
                self._release(item[0], len(item[2]))

    def _run(self) -> None:
        while (item := self.queue.get()) is not _STOP:
            direction, at, data = item
            if data is not None:
                self._release(direction, len(data))
            decoder = self.decoders[direction]
            if data is None:
                decoder.fail(f"the log fell more than {TAP_BUDGET} bytes behind the tunnel")
            view = memoryview(data or b"")
            for start in range(0, len(view), DECODE_SLICE):
                # libev runs idle watchers only when no I/O is pending: the tunnels go first.
                gevent.get_hub().wait(self.idle)
                if decoder.failure:
                    break
                for opcode, payload, more in decoder.feed(view[start:start + DECODE_SLICE]):
                    self._write(direction, at, opcode, payload, more)
            if decoder.failure and not decoder.reported:
                decoder.reported = True
                self._write(direction, at, "error", decoder.failure.encode(), False)

    def _release(self, direction: str, size: int) -> None:
        self.pending[direction] -= size
        self.budget.release(size)

    def _write(self, direction: str, at: float, opcode: str, payload: bytes | memoryview, more: bool) -> None:
        for start in range(0, max(len(payload), 1), RECORD_MAX):
            piece = payload[start:start + RECORD_MAX]
            for part in message_record(direction, at, opcode, piece,
                                       more or start + RECORD_MAX < len(payload)):
                self.stream.write(part)  # the payload as it is: never copied into a record


def message_record(direction: str, at: float, opcode: str, payload: bytes | memoryview,
                   more: bool) -> tuple[bytes, bytes | memoryview, bytes]:
    """`<direction> <UTC time> <opcode> <length>[ more]` CRLF, the payload, CRLF (README.md),
    as its three parts."""
    stamp = datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    head = f"{direction} {stamp} {opcode} {len(payload)}{' more' if more else ''}\r\n"
    return head.encode(), payload, b"\r\n"


class Decoder:
    """One direction's frames -> (opcode, payload, more) pieces, with its message counts.

    RFC 6455 framing read slice by slice, never a whole message at once: a payload comes
    out in the pieces it arrived in, unmasked in C (the `websockets` package's speedups)
    and inflated when permessage-deflate compressed it (RFC 7692). The client's frames must
    be masked, the upstream's not. Text comes out as the bytes that were sent, a close as
    `<code> <reason>`. A protocol error ends the decoding, never the tunnel.
    """

    def __init__(self, from_upstream: bool, extensions: str) -> None:
        self.messages = self.control_frames = self.payload_bytes = 0
        self.failure = ""
        self.reported = False
        self.masked = not from_upstream
        # One inflater for the session: with context takeover a message refers back to
        # earlier ones; without it, keeping the old window does no harm.
        self.inflater = zlib.decompressobj(-zlib.MAX_WBITS) if _permessage_deflate(extensions) else None
        self.head = b""            # the start of a frame head still incomplete
        self.frame: tuple[int, bool, bytes] | None = None  # opcode, fin, mask key
        self.remaining = 0         # payload bytes of the current frame still to come
        self.offset = 0            # payload bytes of the current frame already seen
        self.message = ""          # the data message in progress: "text" or "binary"
        self.compressed = False
        self.control = b""

    def fail(self, why: str) -> None:
        if not self.failure:
            self.failure = f"the proxy stopped decoding these messages ({why}); the tunnel goes on"

    def counts(self) -> dict[str, Any]:
        counts: dict[str, Any] = {"messages": self.messages, "control_frames": self.control_frames,
                                  "payload_bytes": self.payload_bytes}
        if self.failure:
            counts["log_incomplete"] = self.failure
        return counts

    def feed(self, data: bytes | memoryview) -> Iterator[tuple[str, bytes | memoryview, bool]]:
        view = memoryview(data)
        try:
            while view and not self.failure:
                if self.frame is None:
                    view = self._take_head(view)
                    if self.frame is None:
                        return
                    chunk = view[:0]
                else:
                    chunk = view[:self.remaining]
                    view = view[len(chunk):]
                if chunk or not self.remaining:
                    yield from self._payload(chunk)
        except (ValueError, zlib.error) as e:
            self.fail(f"{type(e).__name__}: {e}")

    def _take_head(self, view: memoryview) -> memoryview:
        had = len(self.head)
        head = self.head + bytes(view[:MAX_FRAME_HEAD - had])
        size = _head_size(head)
        if len(head) < size:
            self.head = head
            return view[len(view):]
        self.head = b""
        self._start_frame(head[:size])
        return view[size - had:]

    def _start_frame(self, head: bytes) -> None:
        fin, rsv1, opcode = bool(head[0] & 0x80), bool(head[0] & 0x40), head[0] & 0x0F
        masked = bool(head[1] & 0x80)
        length = head[1] & 0x7F
        if length >= 126:
            length = int.from_bytes(head[2:2 + _EXTENDED[length]], "big")
        if masked != self.masked:
            raise ValueError("a masked frame from the upstream" if masked else "an unmasked frame from the client")
        if opcode != 0 and opcode not in OPCODES:
            raise ValueError(f"unknown opcode {opcode}")
        if head[0] & 0x30 or rsv1 and (self.inflater is None or opcode not in (1, 2)):
            raise ValueError("reserved bits set")
        if opcode >= 8 and (not fin or length > 125):
            raise ValueError("a control frame fragmented or longer than 125 bytes")
        if opcode in (1, 2):
            if self.message:
                raise ValueError("a new message before the last one ended")
            self.message, self.compressed = OPCODES[opcode], rsv1
        elif opcode == 0 and not self.message:
            raise ValueError("a continuation frame without a message")
        self.frame = (opcode, fin, head[-4:] if masked else b"")
        self.remaining, self.offset = length, 0

    def _payload(self, chunk: memoryview) -> Iterator[tuple[str, bytes | memoryview, bool]]:
        opcode, fin, key = self.frame
        if key:
            turn = self.offset % 4
            chunk = apply_mask(chunk, key[turn:] + key[:turn])
        self.offset += len(chunk)
        self.remaining -= len(chunk)
        if self.remaining:
            ended = False
        else:
            self.frame, ended = None, True
        if opcode >= 8:
            self.control += chunk
            if ended:
                self.control_frames += 1
                payload, self.control = self.control, b""
                yield OPCODES[opcode], _close_text(payload) if opcode == 8 else payload, False
            return
        last = ended and fin
        held = None  # the latest piece, held back so that a message's last one says so
        for piece in self._inflate(chunk, last) if self.compressed else (chunk,):
            if piece:
                self.payload_bytes += len(piece)
                if held is not None:
                    yield self.message, held, True
                held = piece
        if last:
            self.messages += 1
            yield self.message, b"" if held is None else held, False
            self.message = ""
        elif held is not None:
            yield self.message, held, True

    def _inflate(self, chunk: bytes | memoryview, last: bool) -> Iterator[bytes]:
        """The inflated bytes in pieces of at most RECORD_MAX: a small frame may inflate to
        a huge payload, which never sits in memory whole."""
        for data in (chunk, _DEFLATE_TAIL) if last else (chunk,):
            while data:
                piece = self.inflater.decompress(data, RECORD_MAX)
                data = self.inflater.unconsumed_tail
                yield piece
        if last and self.inflater.eof:  # a final deflate block: the next message starts afresh
            self.inflater = zlib.decompressobj(-zlib.MAX_WBITS)


def _head_size(head: bytes) -> int:
    """Bytes of the frame head that `head` starts: 2 while its second byte is unknown."""
    if len(head) < 2:
        return 2
    return 2 + _EXTENDED.get(head[1] & 0x7F, 0) + 4 * (head[1] >> 7)


def _close_text(payload: bytes) -> bytes:
    """A close frame's payload as `<code> <reason>`, empty when it had no code (1005)."""
    if len(payload) == 1:
        raise ValueError("a close frame with a one-byte payload")
    if not payload:
        return b""
    return b"%d %s" % (int.from_bytes(payload[:2], "big"), payload[2:])


def _permessage_deflate(extensions: str) -> bool:
    """Whether the upstream accepted permessage-deflate. Its window parameters do not
    matter here: inflating with the largest window reads any smaller one."""
    return any(accepted.split(";")[0].strip().lower() == "permessage-deflate"
               for accepted in extensions.split(","))
