"""What a request's head must be, to be read one way only (RFC 9112 2.2, 3, 5, 6.3, 11.2).

The proxy shares keep-alive connections to an upstream between clients, so a request that
two HTTP parsers would frame differently is request smuggling: the bytes one reads as
this request's body another reads as the next request (CONTRACT.md, "Security"). So a
head is refused, before anything is forwarded, and the connection closed, when:
- the request line is not `METHOD SP target SP HTTP/1.x`;
- a header name is not a token (whitespace before the colon included), or a head holds
  a bare CR, a NUL or another control character, or obsolete line folding;
- `Content-Length` comes more than once or is not digits, or comes with
  `Transfer-Encoding`; `Transfer-Encoding` is anything but exactly `chunked` (501 for a
  coding this server does not know); `Host` comes more than once;
- the head is larger than `max_header_bytes`, has more than `max_headers` fields (431),
  or takes longer than `head_timeout` to arrive (408: a slowloris).
pywsgi itself would forward several of these (FACTS.md: two `Content-Length`s,
`Transfer-Encoding: xchunked`, a bare CR in a value).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# RFC 9110 5.6.2: tchar
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e\x80-\xff]+) HTTP/1\.([01])\r?\n")
_CONTROLS = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # field values: HTAB, and nothing else below SP
KNOWN_CODINGS = frozenset(("chunked", "identity", "gzip", "x-gzip", "deflate", "compress", "x-compress", "br"))


@dataclass(frozen=True)
class HeadLimits:
    max_header_bytes: int = 65536   # the whole head: request line and fields
    max_headers: int = 100
    head_timeout: float = 10.0      # seconds from the first byte of a head to its end
    idle_timeout: float = 75.0      # seconds a keep-alive connection may wait for its next request


class Refused(Exception):
    """A head refused: `status` (a status line's code and reason) and why."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


def bad(message: str) -> Refused:
    return Refused("400 Bad Request", message)


def request_line(line: bytes) -> tuple[str, str, str]:
    """(method, target, version) of a request line, or Refused."""
    m = _REQUEST_LINE.fullmatch(line)
    if m is None:
        shown = line.rstrip(b"\r\n")[:100]
        raise bad(f"the request line {shown!r} is not 'METHOD target HTTP/1.x'")
    return m.group(1).decode("latin-1"), m.group(2).decode("latin-1"), f"HTTP/1.{m.group(3).decode()}"


def read_fields(rfile: Any, limits: HeadLimits, used: int) -> list[tuple[str, str]]:
    """The header fields up to the blank line, as (name as sent, value) pairs in wire
    order; `used`: bytes of the head read already (the request line). Refused when a
    field breaks a rule above."""
    pairs: list[tuple[str, str]] = []
    while True:
        line = rfile.readline(limits.max_header_bytes - used + 1)
        used += len(line)
        if used > limits.max_header_bytes:
            raise Refused("431 Request Header Fields Too Large",
                          f"the request head is larger than {limits.max_header_bytes} bytes")
        if line in (b"\r\n", b"\n"):
            return pairs
        if not line.endswith(b"\n"):
            raise bad("the connection ended inside the request head")
        if len(pairs) >= limits.max_headers:
            raise Refused("431 Request Header Fields Too Large", f"more than {limits.max_headers} header fields")
        if line[:1] in (b" ", b"\t"):
            raise bad("obsolete line folding in the request head (RFC 9112 5.2)")
        body = line[:-2] if line.endswith(b"\r\n") else line[:-1]
        name, sep, value = body.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):
            raise bad(f"the header line {body[:100]!r} has no valid field name and colon")
        if _CONTROLS.search(value):
            raise bad(f"a control character (bare CR, NUL, ...) in the value of {name[:100]!r}")
        pairs.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))


def framing(pairs: list[tuple[str, str]]) -> int | None:
    """The body's framing: its Content-Length, or None for chunked (or no body, with
    neither); Refused when the head frames it any other way."""
    lengths = [v for n, v in pairs if n.lower() == "content-length"]
    codings = [v for n, v in pairs if n.lower() == "transfer-encoding"]
    if sum(1 for n, _ in pairs if n.lower() == "host") > 1:
        raise bad("more than one Host header")
    if codings:
        if lengths:
            raise bad("Transfer-Encoding together with Content-Length")
        tokens = [t.strip().lower() for value in codings for t in value.split(",")]
        if tokens != ["chunked"]:
            unknown = [t for t in tokens if t not in KNOWN_CODINGS]
            if unknown:
                raise Refused("501 Not Implemented", f"unknown transfer coding {unknown[0][:50]!r}")
            raise bad(f"Transfer-Encoding {', '.join(codings)[:100]!r} is not exactly 'chunked'")
        return None
    if len(lengths) > 1:
        raise bad("more than one Content-Length")
    if lengths:
        if not lengths[0].isdigit() or not lengths[0].isascii() or len(lengths[0]) > 18:
            raise bad(f"invalid Content-Length: {lengths[0][:40]!r}")
        return int(lengths[0])
    return None
