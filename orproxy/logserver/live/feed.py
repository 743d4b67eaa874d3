"""The live feed's hub: finds index rows that changed and hands them to subscribed clients.

Why polling: under gunicorn each worker process indexes only the uploads it received, so
no worker sees every change in memory. All of them share the SQLite index, where every
write gives the row the next `seq` (index.py). So each worker polls the index for rows
with `seq` above its cursor every `INTERVAL` seconds (a cheap indexed query, made only
while someone is subscribed) and pushes them to its own clients, whichever worker wrote
them.

Each client (a `Subscriber`) has a filter (query.py's parameters, the same as the list's)
and its own bounded queue, as mitmproxy's web UI does: broadcasting only enqueues, never
waits for a slow client. A client whose queue is full gets one `reset` message instead
of what it missed, and reloads its list from the REST API.

Messages (JSON, the same over the WebSocket and over SSE):
  {"type": "hello", "seq": N, "time": T, "worker": PID}
        first; T is the server's clock (epoch s), PID the worker process serving the feed
  {"type": "rows", "seq": N, "items": [...], "removed": [ids], "deleted": [ids]}
        items: changed rows that match the filter (API items, GET /api/requests shape);
        removed: ids to drop from the list: changed rows that no longer match the filter
        (e.g. state=in_flight), and exchanges deleted (DELETE /api/requests/{id},
        retention, a reindex that found their files gone), whatever the filter;
        deleted: those of the removed ids whose exchange is gone (its detail too)
  {"type": "reset", "reason": "..."}         reload the list, then carry on from its max_seq
  {"type": "ping"}                            after HEARTBEAT seconds of silence (SSE: a comment)
Over SSE each message is one event, and `rows` events carry `id: <seq>`, which EventSource
sends back as Last-Event-ID when it reconnects by itself. A client that reconnects with `since` (the last `seq` it saw) gets what changed meanwhile.

Deletions reach every worker's clients the same way: a deleted row leaves a tombstone with
the next `seq` in the index (index.delete_rows), read here beside the changed rows.
"""
from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from typing import Any

import gevent
from gevent.event import Event
from gevent.lock import Semaphore
from gevent.queue import Empty, Full, Queue

from orproxy.logserver.store.index import TOMBSTONE_SEQS
from orproxy.logserver.store.stores import IndexStore
from orproxy.logserver.store.schema import COLUMNS, to_api
from orproxy.logserver.web import query

INTERVAL = 0.25          # seconds between polls of the index
QUEUE_SIZE = 64          # messages a client may have waiting
BATCH = 200              # rows per message
CATCH_UP_MAX = 2000      # more changed rows than this since a client's `since`: reset
_COLUMNS = ", ".join(COLUMNS)  # a changed row's columns beside its rowid (changes())

Filters = dict[str, list[str]]


def _dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def filter_key(params: Filters) -> str:
    """A canonical form of a filter, so that clients with the same filter share one query."""
    return json.dumps(sorted((k, sorted(v)) for k, v in params.items() if k not in query.LIVE_PARAMS))


def changes(conn: sqlite3.Connection, after: int, limit: int, wheres: dict[str, query.Where],
            until: int = 2**63 - 1) -> tuple[int, list[dict[str, Any]], list[str], dict[str, set[str]]]:
    """Rows changed and ids deleted after `after` and up to `until` (at most `limit` changes
    in all, oldest first), the last `seq` covered, and per filter key the ids among the rows
    that match that filter. One read transaction, so the matches are of the same rows."""
    conn.execute("BEGIN")
    try:
        rows = [dict(r) for r in conn.execute(
            "SELECT * FROM exchanges WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?", (after, until, limit))]
        tombstones = conn.execute("SELECT seq, id FROM removed WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
                                  (after, until, limit)).fetchall()
        seqs = sorted([r["seq"] for r in rows] + [t[0] for t in tombstones])
        if not seqs:
            return after, [], [], {}
        upto = seqs[min(limit, len(seqs)) - 1]
        rows = [r for r in rows if r["seq"] <= upto]
        # A row written again after its deletion (a forced delete in flight): the row wins.
        written = {r["id"] for r in rows}
        deleted = [t[1] for t in tombstones if t[0] <= upto and t[1] not in written]
        matches = {}
        for key, where in wheres.items():
            if not where.clauses:
                matches[key] = written
                continue
            # Only the changed rows, found by seq: as a plain WHERE, SQLite would pick the
            # filter's index (by_model, by_route) and visit every row of that model per poll.
            # A subquery with a LIMIT is not flattened into the outer query; it names its
            # rowid, which the text search's clause needs (a subquery's rows have none), and
            # its columns (PostgreSQL's `*` has the rowid too).
            condition = " AND ".join(f"({c})" for c in where.clauses)
            sql = (f"SELECT id FROM (SELECT rowid AS rowid, {_COLUMNS} FROM exchanges WHERE seq > ? AND seq <= ? "
                   f"LIMIT {2**62}) AS changed WHERE {condition}")
            matches[key] = {r[0] for r in conn.execute(sql, [after, upto, *where.args])}
        return upto, rows, deleted, matches
    finally:
        conn.execute("COMMIT")


class Subscriber:
    """One live client: its filter and its bounded queue of (message, seq, last) items,
    messages already serialised (shared by every client with the same filter)."""

    def __init__(self, params: Filters) -> None:
        self.key = filter_key(params)
        where = query.parse_filters({k: v for k, v in params.items() if k not in query.LIVE_PARAMS}, set())
        # flat(): every condition as a plain clause (query.py keeps some apart for listing.py)
        self.where = where.flat() if hasattr(where, "flat") else where
        self.queue: Queue = Queue(QUEUE_SIZE)
        self.seq = 0          # the last seq this client has been sent
        self.closed = False   # its last message is queued: nothing more gets in

    def put(self, message: str, seq: int | None = None) -> None:
        """Enqueue without waiting; a full queue turns into one `reset`."""
        if self.closed:
            return
        try:
            self.queue.put_nowait((message, seq, False))
        except Full:
            self.reset("client too slow")
            return
        if seq is not None:
            self.seq = max(self.seq, seq)

    def reset(self, reason: str) -> None:
        """Tell the client to reload its list; its stream ends after this message."""
        self._last(_dumps({"type": "reset", "reason": reason}))

    def end(self) -> None:
        """End the stream at once (the server is stopping): queued messages are dropped."""
        self._last("")

    def _last(self, message: str) -> None:
        if self.closed and message:
            return
        self.closed = True
        while True:
            try:
                self.queue.get_nowait()
            except Empty:
                break
        self.queue.put_nowait((message, None, True))

    def get(self, timeout: float) -> tuple[str, int | None, bool] | None:
        """The next (message, seq, last), or None after `timeout` seconds of silence; ""
        as the message: end without sending anything."""
        try:
            return self.queue.get(timeout=timeout)
        except Empty:
            return None


class LiveFeed:
    def __init__(self, index: IndexStore, stopping: Event | None = None, interval: float = INTERVAL) -> None:
        self.index = index
        self.stopping = stopping or Event()
        self.interval = interval
        self.subscribers: set[Subscriber] = set()
        self.cursor: int | None = None   # the last seq pushed; None while nobody listens
        self._lock = Semaphore()
        self._poller: gevent.Greenlet | None = None
        self.errors = 0

    # -- clients ---------------------------------------------------------------------------

    def subscribe(self, params: Filters, since: int | None) -> Subscriber:
        """Register a client (a bad filter raises query.ParamError); its queue starts with
        `hello` and, if `since` is given, the rows changed since then."""
        subscriber = Subscriber(params)
        with self._lock:  # the cursor, the catch-up and the registration as one step
            if self.cursor is None:
                self.cursor = self.index.last_seq()
            cursor = self.cursor
            # No seq on the item: an SSE client resuming from it would skip the catch-up.
            subscriber.put(_dumps({"type": "hello", "seq": cursor, "time": time.time(), "worker": os.getpid()}))
            if since is not None and since != cursor:
                self._catch_up(subscriber, since, cursor)
            self.subscribers.add(subscriber)
        if self._poller is None or self._poller.dead:
            self._poller = gevent.spawn(self._poll_loop)
        return subscriber

    def _catch_up(self, subscriber: Subscriber, since: int, cursor: int) -> None:
        if since > cursor:  # an index rebuilt from scratch counts again from 1
            subscriber.reset("the index was rebuilt")
            return
        if cursor - since > TOMBSTONE_SEQS:  # the news of some deletions may be gone
            subscriber.reset("too much changed")
            return
        after, sent = since, 0
        wheres = {subscriber.key: subscriber.where}
        while after < cursor:
            # Up to the cursor: what came after it, the poll sends.
            upto, rows, deleted, matches = self.index.read(changes, after, BATCH, wheres, cursor)
            if upto == after:
                break
            sent += len(rows) + len(deleted)
            if sent > CATCH_UP_MAX:  # cheaper for both sides to reload one page
                subscriber.reset("too much changed")
                return
            subscriber.put(self._rows_message(rows, deleted, matches.get(subscriber.key, set()), upto), upto)
            after = upto

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)

    # -- polling ---------------------------------------------------------------------------

    def _poll_loop(self) -> None:
        while not self.stopping.is_set():
            if not self.subscribers:
                with self._lock:
                    if not self.subscribers:
                        self.cursor = None
                        self._poller = None
                        return
            try:
                more = self.poll()
            except Exception as e:  # a locked or replaced index: keep serving, retry
                self.errors += 1
                if self.errors & (self.errors - 1) == 0:  # 1st, 2nd, 4th, 8th...: no flood
                    print(f"orlogserver: live feed poll failed ({self.errors} times): {e!r}",
                          file=sys.stderr, flush=True)
                more = False
            if not more:
                self.stopping.wait(self.interval)

    def poll(self) -> bool:
        """Push what changed since the cursor; True if there may be more right away."""
        with self._lock:
            if self.cursor is None:
                return False
            subscribers = list(self.subscribers)
            wheres = {s.key: s.where for s in subscribers}
            upto, rows, deleted, matches = self.index.read(changes, self.cursor, BATCH, wheres)
            if upto == self.cursor:
                return False
            messages = {key: self._rows_message(rows, deleted, matches.get(key, set()), upto) for key in wheres}
            for subscriber in subscribers:
                if subscriber.seq < upto:
                    subscriber.put(messages[subscriber.key], upto)
            self.cursor = upto
            return len(rows) + len(deleted) >= BATCH

    @staticmethod
    def _rows_message(rows: list[dict[str, Any]], deleted: list[str], matching: set[str], upto: int) -> str:
        items = [to_api(r) for r in rows if r["id"] in matching]
        removed = [r["id"] for r in rows if r["id"] not in matching] + deleted
        return _dumps({"type": "rows", "seq": upto, "items": items, "removed": removed, "deleted": deleted})

    # -- shutdown --------------------------------------------------------------------------

    def close(self) -> None:
        """Stop polling and end every client's stream (they reconnect elsewhere or later)."""
        self.stopping.set()
        for subscriber in list(self.subscribers):
            subscriber.end()
