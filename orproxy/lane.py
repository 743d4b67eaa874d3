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
import httptools
from gevent.queue import SimpleQueue

from orproxy.transport import Connection, ConnectionPool, receive, send_all

BATCH_BYTES = 1024 * 1024  # at most this much in one write
GATHER_DELAY = 0.002       # seconds a batch waits: the logging server's work comes after ours


class _Replies:
    """Counts the pipelined responses as httptools parses them, and remembers failures."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done = 0
        self.failed = 0

    def on_message_complete(self) -> None:
        self.done += 1
        if self.parser.get_status_code() >= 300:
            self.failed += 1


class Lane:
    """One greenlet, one keep-alive connection, batches of whole PUTs.

    `on_sent(size)` gives back budget, `on_failure(error)` reports a batch that did
    not arrive, `on_success()` one that did: the sink keeps the counters and the policy.
    """

    def __init__(self, pool: ConnectionPool, key: tuple[str, str, int], host: str,
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
            b"PUT %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path.encode(), self.host.encode(), len(body), body)
            for path, body in batch))
        replies = _Replies()
        while replies.done < len(batch):
            data = receive(sock)
            if not data:
                raise ConnectionError("the logging server closed the connection")
            replies.parser.feed_data(data)
        if replies.failed:
            raise ValueError(f"the logging server refused {replies.failed} of {len(batch)} log parts")
