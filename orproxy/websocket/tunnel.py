"""The WebSocket tunnel: after the 101, bytes copied both ways as they arrive, parsing nothing.

So subprotocols and extensions negotiated end to end just work, and no framing latency is
added. The message log sits beside it (messagelog.py): each pump hands the bytes it has
just forwarded to a tap.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import gevent
from gevent import socket, ssl

from orproxy.http1 import send_all

BLOCK = 256 * 1024                 # bytes a pump reads at once: fewer wake-ups for bulk data
CLOSE_LINGER = 5.0                 # after one side closed, seconds the other gets to close

Tap = Callable[[str, bytes], None]


def _no_tap(direction: str, data: bytes) -> None:
    pass


class Tunnel:
    """Two pumps copy bytes between the client and the upstream until the session ends.

    A clean close (EOF) on one side is passed on as a half-close to the other, which then
    gets CLOSE_LINGER seconds to close too (RFC 6455 7.1.1: the server closes TCP first, the
    client then closes its side). A failure, or no byte either way for `idle_timeout`, ends
    both at once. Either way nothing outlives `run`: no greenlet; the sockets are the
    caller's to close.
    """

    def __init__(self, client: socket.socket, upstream: socket.socket, idle_timeout: float,
                 tap: Tap | None = None) -> None:
        self.ends = {"client": client, "upstream": upstream}
        self.idle_timeout = idle_timeout
        self.tap = tap or _no_tap
        self.active_at = time.monotonic()
        self.bytes = {"client": 0, "upstream": 0}
        self.ended = ""

    def run(self, from_client: bytes = b"", from_upstream: bytes = b"") -> str:
        """Relay until the session ends; returns (and keeps in `ended`) how it ended."""
        for sock in self.ends.values():
            sock.settimeout(self.idle_timeout)
        pumps = {"client": gevent.spawn(self._pump, "client", "upstream", from_client),
                 "upstream": gevent.spawn(self._pump, "upstream", "client", from_upstream)}
        try:
            first = gevent.wait(list(pumps.values()), count=1)[0]
            self.ended = first.value or "proxy failed"
            source = "client" if first is pumps["client"] else "upstream"
            other = "upstream" if source == "client" else "client"
            # A half-close cannot be passed on over TLS: shutting down the socket under an
            # SSL object would end it; there the session just ends.
            if self.ended == f"{source} closed" and not isinstance(self.ends[other], ssl.SSLSocket):
                shutdown(self.ends[other], socket.SHUT_WR)
                pumps[other].join(CLOSE_LINGER)
        finally:
            gevent.killall(list(pumps.values()))
        return self.ended

    def _pump(self, source: str, target: str, first: bytes) -> str:
        src, dst = self.ends[source], self.ends[target]
        data = first
        while True:
            if data:
                try:
                    send_all(dst, data)
                except OSError:
                    return f"{target} failed"
                self.active_at = time.monotonic()
                self.bytes[source] += len(data)
                self.tap(source, data)
            try:
                data = src.recv(BLOCK)
            except TimeoutError:
                if time.monotonic() - self.active_at >= self.idle_timeout:
                    return "idle timeout"
                data = b""  # the other direction was active: keep waiting
                continue
            except OSError:
                return f"{source} failed"
            if not data:
                return f"{source} closed"


def shutdown(sock: socket.socket, how: int) -> None:
    """shutdown(2), for a socket the peer may have closed already."""
    try:
        sock.shutdown(how)
    except OSError:
        pass
