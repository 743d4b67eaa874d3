"""The lane: complete log bodies sent to the logging server as pipelined PUTs on one connection.

Most exchanges are over before their log streams could start: a 1 KB chat completion's
request, response and metadata are all complete by the time the proxy next waits. Giving
each its own streaming PUT costs a greenlet, a connection and several writes on both
sides. The lane instead writes every waiting body as a `Content-Length` PUT, all of them in
one write (HTTP/1.1 pipelining, RFC 9112 9.3.2), then reads the replies in order; while it
waits, the next batch gathers. Long, still-streaming bodies keep their own streaming PUT.
"""
from __future__ import annotations

from collections.abc import Callable

import gevent
from gevent.queue import SimpleQueue

from orproxy.connections import Connection, ConnectionPool, Key
from orproxy.http1 import ResponseParser, head, receive, send_all

BATCH_BYTES = 1024 * 1024  # at most this much in one write
GATHER_DELAY = 0.002       # seconds a batch waits: the logging server's work comes after ours


class Lane:
    """One greenlet, one keep-alive connection, batches of whole PUTs.

    `on_sent(size)` gives back budget, `on_failure(error)` reports a batch that did
    not arrive, `on_success()` one that did: the sink keeps the counters and the policy.
    """

    def __init__(self, pool: ConnectionPool, key: Key, host: str,
                 timeouts: tuple[float, float], on_sent: Callable[[int], None],
                 on_failure: Callable[[Exception], None], on_success: Callable[[], None]) -> None:
        self.pool, self.key, self.host = pool, key, host
        self.connect_timeout, self.io_timeout = timeouts
        self.on_sent, self.on_failure, self.on_success = on_sent, on_failure, on_success
        self.queue: SimpleQueue = SimpleQueue()
        self.conn: Connection | None = None
        self.greenlet = gevent.spawn(self._run)

    def put(self, path: str, body: bytes) -> None:
        self.queue.put((path, body))

    def _run(self) -> None:
        while True:
            batch = [self.queue.get()]
            gevent.sleep(GATHER_DELAY)  # the exchange's own next steps go first; the batch grows
            size = len(batch[0][1])
            while self.queue.qsize() and size < BATCH_BYTES:
                batch.append(self.queue.get())
                size += len(batch[-1][1])
            try:
                self._send(batch)
                self.on_success()
            except Exception as error:  # noqa: BLE001 - a lost batch only loses log data
                if self.conn is not None:
                    self.conn.close()
                    self.conn = None
                self.on_failure(error)
            finally:
                self.on_sent(size)

    def _send(self, batch: list[tuple[str, bytes]]) -> None:
        if self.conn is None or not self.conn.is_reusable():
            self.conn = self.pool.get(self.key, self.connect_timeout)[0]
        sock = self.conn.sock
        sock.settimeout(self.io_timeout)
        send_all(sock, b"".join(
            head(f"PUT {path} HTTP/1.1", [("Host", self.host), ("Content-Type", "application/octet-stream"),
                                          ("Content-Length", str(len(body)))]) + body
            for path, body in batch))
        replies = ResponseParser(pipelined=True)
        while len(replies.completed) < len(batch):
            data = receive(sock)
            if not data:
                raise ConnectionError("the logging server closed the connection")
            replies.feed(data)
        failed = sum(status >= 300 for status in replies.completed)
        if failed:
            raise ValueError(f"the logging server refused {failed} of {len(batch)} log parts")
