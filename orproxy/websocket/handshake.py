"""The WebSocket handshake with the upstream: the upgrade request, its answer, a refusal's body.

The upgrade goes upstream under HTTP's routing and header rules, the upgrade headers
kept; the upstream's answer goes back byte for byte plus `X-Request-Id` (CONTRACT.md,
"WebSocket upgrades"), so its raw head is kept as well as parsed (http1.py).
"""
from __future__ import annotations

import requests
from gevent import socket

from orproxy.exchange import Exchange
from orproxy.headers import Headers, header_value, strip_hop_by_hop
from orproxy.http1 import MalformedResponse, NoResponse, ResponseParser, read_head, receive
from orproxy.logclient.exchange_log import ExchangeLog


def is_websocket_upgrade(headers: Headers) -> bool:
    """RFC 6455 4.1: `Upgrade: websocket` (a token, any case) asks for the tunnel."""
    value = header_value(headers, "upgrade")
    return value is not None and any(t.strip().lower() == "websocket" for t in value.split(","))


def upstream_headers(headers: Headers, host: str) -> Headers:
    """The handshake as it goes upstream: HTTP's header rules with the upgrade kept.

    `Connection` is hop-by-hop (RFC 9110 7.6.1), so the proxy sends its own
    `Connection: Upgrade`, and drops what the client's named (`Keep-Alive`, ...).
    `Upgrade` and `Sec-WebSocket-*` (key, version, subprotocols, extensions) pass as sent:
    they are negotiated end to end, which is what lets the tunnel relay raw bytes.
    """
    forwarded: Headers = []
    seen = set()
    for name, value in strip_hop_by_hop(headers, keep=frozenset(("connection", "upgrade"))):
        lower = name.lower()
        if lower in ("connection", "host"):
            if lower in seen:
                continue
            value = "Upgrade" if lower == "connection" else host
        seen.add(lower)
        forwarded.append((name, value))
    if "host" not in seen:
        forwarded.insert(0, ("Host", host))
    if "connection" not in seen:
        forwarded.append(("Connection", "Upgrade"))
    return forwarded


def handshake(sock: socket.socket, request_head: bytes,
              read_timeout: float) -> tuple[ResponseParser, bytes, bytes]:
    """Send the upgrade; the parsed answer, its raw head, and the bytes that followed it.
    Failures are requests' exceptions, as the transport's (errors.py maps them)."""
    sock.settimeout(read_timeout)
    answer, data = ResponseParser(), bytearray()
    try:
        sock.sendall(request_head)
        read_head(sock, answer, data)
    except TimeoutError as e:
        raise requests.exceptions.ReadTimeout(f"no answer to the upgrade within {read_timeout} s") from e
    except NoResponse:
        raise requests.exceptions.ConnectionError(
            "the upstream closed the connection without answering the upgrade") from None
    except MalformedResponse as e:
        raise requests.exceptions.ConnectionError(f"malformed answer from upstream: {e}") from e
    end = min(at + len(blank) for blank in (b"\r\n\r\n", b"\n\n") if (at := data.find(blank)) >= 0)
    return answer, bytes(data[:end]), bytes(data[end:])


def with_request_id(raw_head: bytes, request_id: str) -> bytes:
    """The upstream's raw head with `X-Request-Id` added as its last header."""
    eol = b"\r\n" if raw_head.endswith(b"\r\n\r\n") else b"\n"
    return raw_head[:-len(eol)] + b"X-Request-Id: " + request_id.encode() + eol + eol


def pass_refusal(exchange: Exchange, log: ExchangeLog, client: socket.socket, upstream: socket.socket,
                 answer: ResponseParser, rest: bytes) -> None:
    """A refused upgrade (401, 403, ...): its body goes on as it came, then the connection ends."""
    data = rest
    while True:
        if data:
            client.sendall(data)
        while answer.chunks:
            block = answer.chunks.popleft()
            log.response.write(block)
            exchange.count_response(len(block))
        if answer.complete:
            return
        try:
            data = bytes(receive(upstream))
            if not data:
                return  # a body delimited by the close, or cut short: either way, the end
            answer.feed(data)
        except (OSError, MalformedResponse):
            exchange.fail("upstream_broken")
            return
