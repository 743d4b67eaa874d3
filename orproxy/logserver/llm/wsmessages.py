"""A WebSocket session's message log read back: the records the proxy writes after the
handshake answer (orproxy/websocket/messagelog.py, the format README.md documents),
joined into whole messages.

A record is `<direction> <time> <opcode> <length>[ more]` CRLF, the payload, CRLF; a
message logged in pieces has `more` on every piece but its last, and control frames may
come between the pieces. Reading is bounded by the bytes given (the caller reads the body
up to its limit): a record cut off there, or a malformed one, ends the reading, and
`WsLog.truncated` or `WsLog.error` says so. Never raises on bad data.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

DIRECTIONS = ("client", "upstream")
OPCODES = ("text", "binary", "close", "ping", "pong", "error")


@dataclass
class WsMessage:
    direction: str   # "client" (sent by the client) or "upstream"
    time: float      # epoch seconds: when the proxy had its last piece
    opcode: str      # one of OPCODES
    payload: bytes


@dataclass
class WsLog:
    messages: list[WsMessage] = field(default_factory=list)
    truncated: bool = False   # the bytes ended inside a record or a message
    error: str | None = None  # a record that is not in the format


def _epoch(stamp: str) -> float | None:
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def read_messages(data: bytes) -> WsLog:
    """The messages of a message log (the response body after the handshake)."""
    log = WsLog()
    pending: dict[str, list[bytes]] = {}  # direction -> pieces of the data message in progress
    pos = 0
    while pos < len(data):
        end = data.find(b"\r\n", pos, pos + 200)
        if end < 0:
            log.truncated = len(data) - pos < 200
            log.error = None if log.truncated else "a record head without its line end"
            break
        fields = data[pos:end].decode("latin-1").split(" ")
        at = _epoch(fields[1]) if len(fields) in (4, 5) else None
        if (at is None or fields[0] not in DIRECTIONS or fields[2] not in OPCODES
                or not fields[3].isdigit() or fields[4:] not in ([], ["more"])):
            log.error = f"not a message record: {data[pos:end][:80]!r}"
            break
        direction, opcode, size, more = fields[0], fields[2], int(fields[3]), len(fields) == 5
        start = end + 2
        if start + size + 2 > len(data):
            log.truncated = True
            break
        payload = data[start:start + size]
        pos = start + size + 2
        if opcode in ("text", "binary"):
            pending.setdefault(direction, []).append(payload)
            if more:
                continue
            payload = b"".join(pending.pop(direction))
        log.messages.append(WsMessage(direction, at, opcode, payload))
    if pending:
        log.truncated = True  # the last message of a direction never got its last piece
    return log
