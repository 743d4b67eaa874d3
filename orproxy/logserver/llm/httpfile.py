"""Reading the logged `.bin` files back: the HTTP head, and the body decoded within bounds.

A `.bin` file is a raw HTTP message as the proxy saw it (CONTRACT.md): start line, headers,
blank line, body. The body is de-chunked but still content-encoded (gzip, br, deflate), and
it may be cut short (an aborted stream) or still growing. Everything here is bounded: a
head larger than `MAX_HEAD` is not a head, and a body is decoded only up to a limit, so a
1 GiB download never becomes 1 GiB of memory.
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from typing import Any, BinaryIO
from urllib.parse import urlsplit

MAX_HEAD = 64 * 1024
READ_BLOCK = 256 * 1024
# Sent by the logging server with a replayed request (web/replay.py); the proxy forwards and
# logs it as any header, so the new exchange's own request file says what it replays.
REPLAY_OF_HEADER = "X-Orproxy-Replay-Of"
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

Headers = list[tuple[str, str]]


@dataclass
class Head:
    """The start line and headers of one logged message."""

    start_line: str
    headers: Headers
    size: int  # bytes up to and including the blank line
    _first: dict[str, str] | None = field(default=None, repr=False, compare=False)

    def header(self, name: str) -> str | None:
        """A header's first value, by its name in any case."""
        if self._first is None:
            self._first = {}
            for n, v in self.headers:
                self._first.setdefault(n.lower(), v)
        return self._first.get(name.lower())

    @property
    def is_response(self) -> bool:
        return self.start_line.startswith("HTTP/")

    def summary(self) -> dict[str, Any]:
        """What the index needs from a head before the exchange ends (see ingest.py)."""
        parts = self.start_line.split(" ", 2)
        out: dict[str, Any] = {}
        if self.is_response:
            if len(parts) > 1 and parts[1].isdigit():
                out["status"] = int(parts[1])
        else:
            out["method"] = parts[0]
            called = self.header("x-proxy-path")
            if called:
                split = urlsplit(called)
                out["path"] = split.path + (f"?{split.query}" if split.query else "")
            elif len(parts) > 1:
                out["path"] = parts[1]
            replay_of = self.replay_of()
            if replay_of:
                out["replay_of"] = replay_of
        for key, name in (("content_type", "content-type"), ("content_encoding", "content-encoding")):
            value = self.header(name)
            if value:
                out[key] = value
        return out

    def replay_of(self) -> str | None:
        """The id of the exchange this request replays (REPLAY_OF_HEADER), if it is a UUID.
        A head without a request line (the Go proxy logs only the header lines) may have
        it as its first line, which parse_head took for the start line."""
        value = self.header(REPLAY_OF_HEADER)
        if value is None:
            name, sep, rest = self.start_line.partition(":")
            value = rest.strip() if sep and name.strip().lower() == REPLAY_OF_HEADER.lower() else None
        return value.lower() if value is not None and _UUID_RE.fullmatch(value) else None


def parse_head(data: bytes) -> Head | None:
    """The head at the start of `data`, or None while its blank line has not arrived."""
    end = data.find(b"\r\n\r\n", 0, MAX_HEAD)
    if end < 0:
        return None
    lines = data[:end].decode("latin-1").split("\r\n")
    headers: Headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers.append((name.strip(), value.strip()))
    return Head(lines[0], headers, end + 4)


class HeadSniffer:
    """Collects the first blocks of a stream until its head is complete (or too large)."""

    def __init__(self) -> None:
        self._buffer = b""
        self.head: Head | None = None
        self.done = False

    def feed(self, block: bytes) -> None:
        if self.done:
            return
        self._buffer += block
        self.head = parse_head(self._buffer)
        if self.head is not None or len(self._buffer) >= MAX_HEAD:
            self.done = True
            self._buffer = b""


@dataclass
class Body:
    """A decoded body, or as much of it as the limit allowed."""

    raw_size: int                     # bytes on disk after the head
    data: bytes                       # decoded (up to the limit)
    encoding: str | None = None       # Content-Encoding as logged
    truncated: bool = False           # the limit cut it
    decode_error: str | None = None   # unknown encoding, corrupt data: `data` is then raw
    notes: list[str] = field(default_factory=list)


@dataclass
class Message:
    """One logged HTTP message: its head (None if unreadable) and its body."""

    head: Head | None
    body: Body


def decoders(encoding: str | None) -> list["Decoder"]:
    """One decoder per coding of a Content-Encoding value, in the order to apply them: the
    header lists codings in the order they were applied, so undo them in reverse (RFC 9110
    8.4). Raises ValueError for a coding this cannot undo."""
    codings = [c.strip().lower() for c in reversed((encoding or "").split(","))]
    return [Decoder(c) for c in codings if c not in ("", "identity")]


class Decoder:
    """Undoes one Content-Encoding (gzip, deflate, br) incrementally: for a whole body read
    back (decode_body) and for a body followed as it grows (tail.py)."""

    def __init__(self, coding: str) -> None:
        self.coding = coding
        if coding in ("gzip", "x-gzip"):
            self._z: Any = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif coding == "deflate":
            self._z = None  # zlib-wrapped or raw: decided on the first bytes
        elif coding == "br":
            import brotli
            self._z = brotli.Decompressor()
        else:
            raise ValueError(f"unsupported content-encoding {coding!r}")

    def feed(self, data: bytes, room: int | None = None) -> bytes:
        """The bytes `data` decodes to so far; at most `room` of them if given (the rest of
        a gzip or deflate input stays unconsumed: a bounded decode is not fed again)."""
        if not data:
            return b""
        if self._z is None:
            self._z = zlib.decompressobj(-zlib.MAX_WBITS if data[0] & 0x0F != 8 else zlib.MAX_WBITS)
        if self.coding == "br":
            if room is None:
                return self._z.process(data)
            return self._z.process(data, output_buffer_limit=room)[:room]
        return self._z.decompress(data, room or 0)


def decode_body(raw: bytes, encoding: str | None, limit: int) -> tuple[bytes, bool, str | None]:
    """`raw` decoded by `encoding`, at most `limit` bytes: (data, truncated, error).

    A stream that ends early (an aborted response) decodes as far as it goes. Unknown or
    corrupt encodings return the raw bytes with an error message instead of raising.
    """
    data, cut = raw, False
    try:
        chain = decoders(encoding)
    except ValueError as e:
        return raw[:limit], len(raw) > limit, f"cannot decode: {e}"
    for decoder in chain:
        try:
            data = decoder.feed(data, limit + 1)
        except Exception as e:  # zlib.error, brotli.error: keep what we have
            return raw[:limit], len(raw) > limit, f"cannot decode {decoder.coding}: {e}"
        cut = cut or len(data) > limit
    return data[:limit], cut or len(data) > limit, None


def read_message(f: BinaryIO, limit: int, raw_limit: int | None = None) -> Message:
    """Parse a stored part (an open, seekable stream): its head, and its body decoded up
    to `limit` bytes.

    `raw_limit` bounds the encoded bytes read (default: 4 x `limit`, a compressed body's
    plausible ratio for text; beyond it the body is marked truncated).
    """
    raw_limit = raw_limit or 4 * limit
    start = f.read(MAX_HEAD)
    head = parse_head(start)
    if head is None:
        f.seek(0)
        return _headless(start, _size(f), limit)
    f.seek(head.size)
    raw = f.read(raw_limit + 1)
    raw_size = _size(f) - head.size
    return _message(head, raw, raw_size, raw_limit, limit)


def parse_message(data: bytes, limit: int, raw_limit: int | None = None, head: Head | None = None) -> Message:
    """read_message for a part's bytes already in memory (`head`: theirs, parsed already)."""
    raw_limit = raw_limit or 4 * limit
    head = head or parse_head(data[:MAX_HEAD])
    if head is None:
        return _headless(data, len(data), limit)
    return _message(head, data[head.size:head.size + raw_limit + 1], len(data) - head.size,
                    raw_limit, limit)


def _headless(start: bytes, size: int, limit: int) -> Message:
    return Message(None, Body(size, start[:limit], truncated=size > limit, notes=["no HTTP head found"]))


def _message(head: Head, raw: bytes, raw_size: int, raw_limit: int, limit: int) -> Message:
    encoding = head.header("content-encoding")
    raw_cut = len(raw) > raw_limit
    raw = raw[:raw_limit]
    data, truncated, error = decode_body(raw, encoding, limit)
    return Message(head, Body(raw_size, data, encoding, truncated or raw_cut, error))


def _size(f: Any) -> int:
    f.seek(0, 2)
    return f.tell()
