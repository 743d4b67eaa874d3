"""The sender: one greenlet and one keep-alive connection carry all log data to the logging server.

To orlogserver it sends batches (logwire.py, `POST /ingest`): the spool's records first,
oldest first, then what the parts hold in memory, up to the batch size the logging server
asks for (logwire.BATCH_HEADER; 4 MiB, 12 MiB on an object store) in one write, and one
answer acknowledges them all. While a batch is out the next one gathers, so the log costs
a few writes a second, not a connection and a request per part (thousands of held streams
share this one connection). A batch that fails goes again, whole: the logging server skips
what it already holds, so nothing lands twice.

The original Go program's logging server speaks only plain `PUT /{uuid}/request|response`
(it answers the batch with 405). Then the sender falls back to that: each part, once
complete, as a pipelined `Content-Length` PUT; metadata, which it cannot take, is left out;
nothing spills (a retry there would write a second file). It tries batches again every
PROBE_EVERY seconds, in case the logging server was replaced by an orlogserver. Any other
answer that is not orlogserver's comes from something in front of it (nginx's 502 while
the servers behind it restart): the logging server is down, and the batch goes again, as
when it does not answer.
"""
from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

import gevent

from orproxy import jsoncodec
from orproxy.connections import Connection, ConnectionPool, Key
from orproxy.http1 import MalformedResponse, NoResponse, ResponseParser, head, read_head, receive, send_parts
from orproxy.logclient.part import Block, Part
from orproxy.logwire import (BATCH_BYTES, BATCH_HEADER, CONTENT_TYPE, MAX_BATCH, PATH, PROTOCOL, PROTOCOL_HEADER,
                             append_head, metadata_head)

if TYPE_CHECKING:
    from orproxy.logclient.sink import LogSink

BATCH_LEAST = 256 * 1024             # bytes a server's batch size is taken as at least
BATCH_MOST = MAX_BATCH - 1024 * 1024  # and at most (the record heads fit beside it)
GATHER_DELAY = 0.002                 # seconds a batch waits: the exchanges' own next steps go first
# A logging server that does not accept or answer within these is treated as down. It runs
# at idle CPU priority, so on a saturated machine it may not run at all until the load
# ends, and its listen queue overflows (a connect then waits for SYN retries).
CONNECT_TIMEOUT = 30.0
IO_TIMEOUT = 60.0
RETRY_MIN, RETRY_MAX = 0.25, 2.0     # seconds between attempts while it is down
PROBE_EVERY = 60.0                   # seconds between tries of batches with a plain-PUT server


class Refused(Exception):
    """The logging server answered, but not as orlogserver answers a batch."""

    def __init__(self, status: int, ours: bool) -> None:
        super().__init__(f"HTTP {status}")
        self.status, self.ours = status, ours


class Sender:
    def __init__(self, sink: "LogSink", pool: ConnectionPool, key: Key, host: str, base_path: str,
                 token: str | None = None) -> None:
        self.sink, self.pool, self.key, self.host, self.base_path = sink, pool, key, host, base_path
        # Every request to the logging server carries its token (orlogserver --token), if any.
        self.auth = [("Authorization", f"Bearer {token}")] if token else []
        self.batch_bytes = BATCH_BYTES  # until the logging server says what suits its store
        self.conn: Connection | None = None
        self.plain_puts_since: float | None = None  # when it fell back to plain PUTs
        self.spool = sink.spool  # the sink's own is None while plain PUTs are in use
        self.said_plain = False
        self.busy = False
        self.inflight: list[Part] = []
        self.batches = 0
        self.greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        retry = RETRY_MIN
        while True:
            self.sink.wake.wait(timeout=1.0)
            self.sink.wake.clear()
            spool = self.sink.spool
            if spool is not None and spool.adopt_due():
                spool.adopt()
            gevent.sleep(GATHER_DELAY)  # the exchanges' own next steps go first; the batch grows
            while self._has_work():
                self.busy = True
                try:
                    if not self._send_once():
                        break  # nothing could go (what waits is not ready to): wait for news
                    retry = RETRY_MIN
                    self.sink.came_back()
                except Exception as error:  # noqa: BLE001 - a failed batch loses nothing: it goes again
                    self._drop_connection()
                    self.sink.went_down(error)
                    gevent.sleep(retry)
                    retry = min(RETRY_MAX, retry * 2)
                finally:
                    self.busy = False

    def _has_work(self) -> bool:
        spool = self.sink.spool
        if self.plain_puts_since is not None:
            return any(p.closed and p.unsent for p in self.sink.ready_parts())
        return bool(self.sink.ready_parts()) or (spool is not None and spool.pending)

    def _send_once(self) -> bool:
        """Send what is ready; whether anything went."""
        if self.plain_puts_since is not None:
            if time.monotonic() - self.plain_puts_since < PROBE_EVERY:
                return self._send_plain_puts()
            self.plain_puts_since = None  # time to try batches again
            self.sink.spool = self.spool
        try:
            return self._send_batch()
        except Refused as refusal:
            if refusal.ours or refusal.status != 405:  # not the Go server: what is in front of one is
                raise  # down (a balancer's 502 while it restarts, a body limit's 413): sent again
            if not self.said_plain and self.spool is not None:
                self.said_plain = True
                waiting = (f"; the {self.spool.size} bytes in the spool ({self.spool.directory}) wait "
                           "there for an orlogserver" if self.spool.pending else "")
                print(f"orproxy: the logging server {self.sink.server_url} takes no batches "
                      f"(HTTP {refusal.status}): logging with plain PUTs, without the spool{waiting}",
                      file=sys.stderr, flush=True)
            self.plain_puts_since = time.monotonic()
            self.sink.spool = None  # nothing spills: a plain-PUT server cannot resume a part
            return self._send_plain_puts()

    # -- batches -----------------------------------------------------------------------------

    def _send_batch(self) -> bool:
        pieces: list[Block] = []
        parts: list[Part | None] = []  # one per record; None: a record from the spool
        size = 0
        spool = self.sink.spool
        token = None
        if spool is not None and spool.pending:
            spooled, token = spool.read(self.batch_bytes)
            pieces.extend(spooled)
            parts.extend([None] * len(spooled))
            size += sum(map(len, spooled))
        for part in self.sink.ready_parts():
            if size >= self.batch_bytes:
                break
            if part.unsent:
                offset, blocks, final = part.take(self.batch_bytes - size)
                length = sum(map(len, blocks))
                record = metadata_head(part.exchange_id, length) if part.kind == "metadata" else \
                    append_head(part.exchange_id, part.kind, part.t0, part.t, offset, length, final)
                pieces.append(record)
                pieces.extend(blocks)
                parts.append(part)
                size += len(record) + length
            if not part.unsent:
                self.sink.not_ready(part)
        if not parts:
            return False
        self.inflight = [p for p in parts if p is not None]
        try:
            acks = self._exchange(pieces, size, len(parts))
        except BaseException:
            for part in self.inflight:
                part.unsend()
            raise
        finally:
            self.inflight = []
        self.batches += 1
        if token is not None:
            spool.delivered(token)
        for part, length in zip(parts, acks):
            if part is not None:
                part.acked(length)
        return True

    def _exchange(self, pieces: list[Block], size: int, count: int) -> list[int]:
        """Send one batch; the logging server's acks, one per record. A pooled connection
        the logging server closed while idle is replaced once, at no cost: it answered nothing."""
        message = [head(f"POST {self.base_path}{PATH} HTTP/1.1", [
            ("Host", self.host), *self.auth, ("Content-Type", CONTENT_TYPE), ("Content-Length", str(size))]),
            *pieces]
        for attempt in (1, 2):
            sock, reused = self._connection()
            send_parts(sock, message, size)
            try:
                answer = self._answer(sock)
                break
            except NoResponse:
                self._drop_connection()
                if attempt == 2 or not reused:
                    raise ConnectionError("the logging server closed the connection without answering") from None
        ours = any(n.lower() == PROTOCOL_HEADER.lower() and v == PROTOCOL for n, v in answer.headers)
        body = b"".join(answer.chunks)
        if answer.status != 201 or not ours:
            if ours and answer.status in (400, 413):  # our own mistake: sending it again would loop
                print(f"orproxy: the logging server refused a log batch (HTTP {answer.status}: "
                      f"{body[:300]!r}); its {count} records are lost", file=sys.stderr, flush=True)
                return [2 ** 62] * count
            raise Refused(answer.status, ours)
        asked = next((v for n, v in answer.headers if n.lower() == BATCH_HEADER.lower()), "")
        if asked.isdigit():
            self.batch_bytes = min(max(int(asked), BATCH_LEAST), BATCH_MOST)
        acks = jsoncodec.loads(body)["acks"]
        if len(acks) != count:
            raise ValueError(f"the logging server acknowledged {len(acks)} of {count} records")
        return acks

    # -- plain PUTs, for a logging server that takes nothing else ----------------------------

    def _send_plain_puts(self) -> bool:
        batch: list[Part] = []
        size = 0
        for part in self.sink.ready_parts():
            if part.kind == "metadata" and part.closed:
                part.discard()  # the plain-PUT server has no place for it
            elif part.closed and part.unsent and size < BATCH_BYTES:
                batch.append(part)
                size += part.size
            if not part.unsent:
                self.sink.not_ready(part)
        if not batch:
            return False
        pieces: list[Block] = []
        for part in batch:
            _, blocks, _ = part.take(part.size)
            pieces.append(head(f"PUT {self.base_path}/{part.exchange_id}/{part.kind} HTTP/1.1", [
                ("Host", self.host), *self.auth, ("Content-Type", "application/octet-stream"),
                ("Content-Length", str(part.size))]))
            pieces.extend(blocks)
        self.inflight = batch
        try:
            sock, _ = self._connection()
            send_parts(sock, pieces, size)
            replies = ResponseParser(pipelined=True)
            while len(replies.completed) < len(batch):
                data = receive(sock)
                if not data:
                    raise ConnectionError("the logging server closed the connection")
                replies.feed(data)
            failed = sum(status >= 300 for status in replies.completed)
            if failed:
                raise ValueError(f"the logging server refused {failed} of {len(batch)} log parts")
        except BaseException:
            for part in batch:
                part.unsend()
            raise
        finally:
            self.inflight = []
        for part in batch:
            part.acked(part.size)
        return True

    # -- the connection ----------------------------------------------------------------------

    def _connection(self):  # noqa: ANN202 - a gevent socket, and whether it was pooled
        reused = self.conn is not None and self.conn.is_reusable()
        if not reused:
            self._drop_connection()
            self.conn = self.pool.get(self.key, CONNECT_TIMEOUT)[0]
        self.conn.sock.settimeout(IO_TIMEOUT)
        return self.conn.sock, reused

    def _answer(self, sock) -> ResponseParser:  # noqa: ANN001
        """The logging server's whole answer; NoResponse if it closed without one."""
        answer = ResponseParser()
        try:
            read_head(sock, answer)
            while not answer.complete:
                data = receive(sock)
                if not data:
                    if answer.close_delimited:
                        break
                    raise ConnectionError("the logging server closed the connection mid-answer")
                answer.feed(data)
        except MalformedResponse as e:
            raise ConnectionError(f"the logging server's answer: {e}") from e
        if not answer.keep_alive:
            self._drop_connection()
        return answer

    def stop(self) -> None:
        self.greenlet.kill()
        self._drop_connection()

    def _drop_connection(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
