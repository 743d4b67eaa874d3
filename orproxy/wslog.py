"""The message log of a WebSocket tunnel: frames decoded beside the tunnel into records.

The tunnel (websocket.py) hands each block it has just forwarded to `MessageLog.tap`, which
only queues a reference to it. This log's own greenlet decodes the frames (wsproto,
permessage-deflate included) into message records on the exchange's response stream, the
format README.md documents. It decodes only while the event loop has nothing else to do, so
a burst is relayed first and logged after; the tunnel never waits for it. A decoder that
falls TAP_BUDGET behind in one direction stops logging that direction, with a record saying
so, and the tunnel goes on.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

import gevent
from gevent.queue import SimpleQueue
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import FrameProtocol, Opcode

from orproxy.sink import TOTAL_BUDGET, LogSink, LogStream

TAP_BUDGET = 32 * 1024 * 1024      # bytes a decoder may fall behind one direction before it stops
RECORD_MAX = 1024 * 1024           # larger payload pieces are split over several records
LOG_HIGH_WATER = 4 * 1024 * 1024   # the decoder waits while its log stream queues this much
DECODE_SLICE = 64 * 1024           # bytes decoded per turn: a turn delays the tunnels ~0.3 ms

_STOP = None


class MessageLog:
    """Decodes copies of both byte streams into message records on the response stream.

    `tap` only queues a reference to bytes already forwarded, within TAP_BUDGET per
    direction and the sink's TOTAL_BUDGET for all logging in the process; decoding and
    writing happen in this log's own greenlet, in arrival order.
    """

    def __init__(self, stream: LogStream, sink: LogSink, extensions: str) -> None:
        self.stream = stream
        self.sink = sink
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
        if self.pending[direction] + size > TAP_BUDGET or self.sink.queued_bytes + size > TOTAL_BUDGET:
            self.stopped.add(direction)
            self.queue.put((direction, time.time(), None))  # in order: stop here
            return
        self.pending[direction] += size
        self.sink.queued_bytes += size
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
        self.sink.queued_bytes -= size

    def _write(self, direction: str, at: float, opcode: str, payload: bytes, more: bool) -> None:
        for start in range(0, max(len(payload), 1), RECORD_MAX):
            piece = payload[start:start + RECORD_MAX]
            while self.stream.queued > LOG_HIGH_WATER and not self.stream.dead:
                gevent.sleep(0.005)  # only the decoder waits for the logging server
            self.stream.write(message_record(direction, at, opcode, piece,
                                             more or start + RECORD_MAX < len(payload)))


def message_record(direction: str, at: float, opcode: str, payload: bytes, more: bool) -> bytes:
    """`<direction> <UTC time> <opcode> <length>[ more]` CRLF, the payload, CRLF (README.md)."""
    stamp = datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    head = f"{direction} {stamp} {opcode} {len(payload)}{' more' if more else ''}\r\n"
    return b"".join((head.encode(), payload, b"\r\n"))


class Decoder:
    """One direction's frames -> (opcode, payload, more) pieces, with its message counts.

    `from_upstream` selects wsproto's client side (unmasked frames); the client's frames
    are masked. Text comes back as its UTF-8 bytes, a close as `<code> <reason>`.
    """

    def __init__(self, from_upstream: bool, extensions: str) -> None:
        self.messages = self.control_frames = self.payload_bytes = 0
        self.failure = ""
        self.reported = False
        try:
            self.protocol = FrameProtocol(from_upstream, _permessage_deflate(extensions))
        except (ValueError, IndexError) as e:
            self.fail(f"cannot decode the extensions {extensions!r}: {e}")

    def fail(self, why: str) -> None:
        if not self.failure:
            self.failure = f"the proxy stopped decoding these messages ({why}); the tunnel goes on"

    def counts(self) -> dict[str, Any]:
        counts: dict[str, Any] = {"messages": self.messages, "control_frames": self.control_frames,
                                  "payload_bytes": self.payload_bytes}
        if self.failure:
            counts["log_incomplete"] = self.failure
        return counts

    def feed(self, data: bytes | memoryview) -> list[tuple[str, bytes, bool]]:
        pieces = []
        try:
            self.protocol.receive_bytes(data)
            for frame in self.protocol.received_frames():
                opcode = frame.opcode
                if opcode is Opcode.CLOSE:
                    code, reason = frame.payload
                    payload = b"" if code == 1005 else f"{int(code)} {reason}".encode()
                elif opcode is Opcode.TEXT:
                    payload = frame.payload.encode()
                else:
                    payload = bytes(frame.payload)
                more = opcode in (Opcode.TEXT, Opcode.BINARY) and not frame.message_finished
                if opcode in (Opcode.TEXT, Opcode.BINARY):
                    self.payload_bytes += len(payload)
                    self.messages += not more
                    if more and not payload:
                        continue
                else:
                    self.control_frames += 1
                pieces.append((opcode.name.lower(), payload, more))
        except Exception as e:  # noqa: BLE001 - a protocol error here only ends the decoding
            self.fail(f"{type(e).__name__}: {e}")
        return pieces


def _permessage_deflate(extensions: str) -> list[PerMessageDeflate]:
    """permessage-deflate with the parameters the upstream accepted (RFC 7692), if it did."""
    for accepted in extensions.split(","):
        if accepted.split(";")[0].strip().lower() == "permessage-deflate":
            deflate = PerMessageDeflate()
            deflate.finalize(accepted.strip())
            return [deflate]
    return []
