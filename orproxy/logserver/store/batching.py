"""Pipelined uploads batched: work that requests on one connection put off until the
connection next waits, and the logging server's request handler that runs it.

The proxy's log lane pipelines an exchange's request, response and metadata PUTs in one
write (orproxy/logclient/). Each PUT changes the exchange's metadata document (ingest.py);
deferred to the connection's `Batch`, the changes are applied in one rewrite of the file
instead of three, and the answers are held back until it is written, so that no client
sees an answer before the work it stands for.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from gevent import socket

from orproxy.hosting.handler import RawRequestHandler
from orproxy.http1 import send_all

BATCH_KEYS = 256              # keys a batch may gather before its work runs anyway
HOLD_MAX = 1024 * 1024        # bytes of responses held back for a batch before it runs anyway


class Batch:
    """Work that requests on one connection put off until the connection next waits.

    The proxy's log lane pipelines many PUTs in one write; the handler takes them one after
    another without waiting, and work deferred here (the logging server's rewrite of an
    exchange's metadata file) then runs once per key for all of them. The handler holds
    their responses back until the work has run, so no client sees an answer before the
    work it stands for. `run(key, items)` gets the items deferred under `key` in order.
    """

    __slots__ = ("work",)

    def __init__(self) -> None:
        self.work: dict[Any, tuple[Callable[[Any, list[Any]], None], list[Any]]] = {}

    def defer(self, key: Any, item: Any, run: Callable[[Any, list[Any]], None]) -> None:
        entry = self.work.get(key)
        if entry is None:
            self.work[key] = (run, [item])
        else:
            entry[1].append(item)

    def run(self) -> None:
        work, self.work = self.work, {}
        for key, (run, items) in work.items():
            try:
                run(key, items)
            except Exception as e:  # noqa: BLE001 - one key's failure must not skip the others
                print(f"deferred work for {key} failed: {e!r}", file=sys.stderr, flush=True)


class BatchingRequestHandler(RawRequestHandler):
    """The logging server's handler: a `Batch` per connection (`orproxy.batch`), run before
    the connection waits for its next request, its answers held until then.

    Overrides pywsgi's `handle_one_request` too (gevent 24-26); tests/test_logserver.py
    fails loudly if a release changes it.
    """

    def __init__(self, sock: socket.socket, address: Any, server: Any, rfile: Any = None) -> None:
        super().__init__(sock, address, server, rfile)
        self.batch = Batch()
        self.held: list[bytes] = []  # responses waiting for the batch's work
        self.held_bytes = 0

    def get_environ(self) -> dict[str, Any]:
        env = super().get_environ()
        env["orproxy.batch"] = self.batch
        return env

    def _sendall(self, data: bytes) -> None:
        if self.batch.work and self.held_bytes + len(data) <= HOLD_MAX:
            self.held.append(bytes(data))
            self.held_bytes += len(data)
            self.response_length += len(data)
            return
        if self.batch.work or self.held:
            self._end_batch()  # the answers before this one go first
        super()._sendall(data)

    def _end_batch(self) -> None:
        """Run the batch's work, then send the responses held for it."""
        self.batch.run()
        if self.held:
            data = b"".join(self.held)
            self.held, self.held_bytes = [], 0
            send_all(self.socket, data)

    def before_waiting(self) -> None:
        """Run the batch before the connection waits (or once it has gathered enough)."""
        if self.batch.work and (len(self.batch.work) >= BATCH_KEYS or not self._request_waiting()):
            self._end_batch_quietly()

    def handle_one_request(self) -> Any:
        result = super().handle_one_request()
        if result is not True and (self.batch.work or self.held):
            self._end_batch_quietly()  # the connection ends, or a 400 follows the held answers
        return result

    def _end_batch_quietly(self) -> None:
        try:
            self._end_batch()
        except OSError:  # the client is gone: its answers with it
            self.held, self.held_bytes = [], 0

    def _request_waiting(self) -> bool:
        """Whether the next request's bytes are here already (pipelined): a peek at the
        buffer, or one read that does not wait."""
        sock = self.socket
        timeout = sock.gettimeout()
        sock.settimeout(0.0)
        try:
            return bool(self.rfile.peek(1))
        except OSError:
            return False
        finally:
            sock.settimeout(timeout)
