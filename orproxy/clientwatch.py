"""Noticing a client that closes its connection while the proxy waits on the upstream.

Servers notice only when a write fails, which never happens while the upstream is silent
(FACTS.md, "Client disconnect"): an LLM thinking for a minute would keep generating, and
billing, tokens. An event-loop watcher on the client socket fires when it becomes
readable; a peek then tells a close (b'') from a pipelined request, and the greenlet
serving the client gets ClientGone. A loop watcher, not a greenlet reading the socket: the
server reads the same socket next.
"""
from __future__ import annotations

import socket as _stdlib_socket
from typing import Any

import gevent


class ClientGone(gevent.GreenletExit):
    """Thrown into the greenlet serving a client that closed its connection."""


class ClientWatch:
    __slots__ = ("sock", "served", "watcher")

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.served = gevent.getcurrent()
        self.watcher = None

    def start(self) -> None:
        if self.sock is not None and self.watcher is None:
            self.watcher = gevent.get_hub().loop.io(self.sock.fileno(), 1)
            self.watcher.start(self._readable)

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.close()
            self.watcher = None

    def _readable(self) -> None:
        self.stop()
        if _peer_closed(self.sock.fileno()):
            gevent.kill(self.served, ClientGone)


def _peer_closed(fd: int) -> bool:
    """Peek without consuming or blocking, on a duplicate of the descriptor."""
    try:
        with _stdlib_socket.fromfd(fd, _stdlib_socket.AF_INET, _stdlib_socket.SOCK_STREAM) as dup:
            return dup.recv(1, _stdlib_socket.MSG_PEEK | _stdlib_socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
