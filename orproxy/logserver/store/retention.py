"""Retention: `--max-age` and `--max-bytes` prune the oldest exchanges, files and rows.

Runs in the background, once at start and then every `interval` seconds. With several
worker processes or servers one prunes at a time (the store's `exclusive`: a lock file in
the log dir, an advisory lock in PostgreSQL; the others skip that round). `--max-bytes` counts the exchanges' files (`stored_bytes`), not the index. An
exchange still in flight is left alone unless it started over an hour ago (a proxy that
died mid-stream never finishes it).
"""
from __future__ import annotations

import sqlite3
import sys
import time
from dataclasses import dataclass

import gevent
from gevent.threadpool import ThreadPool

from orproxy.logserver.store.stores import BodyStore, IndexStore

STALE_IN_FLIGHT = 3600.0
BATCH = 500


@dataclass
class Pruned:
    exchanges: int = 0
    bytes: int = 0


def select_victims(conn: sqlite3.Connection, now: float, max_age: float | None,
                   max_bytes: int | None) -> list[tuple[str, int]]:
    """(id, stored_bytes) of the exchanges to delete, oldest first."""
    spare = "NOT (state = 'in_flight' AND started_at > ?)"
    victims: dict[str, int] = {}
    if max_age is not None:
        for r in conn.execute(f"SELECT id, stored_bytes FROM exchanges WHERE started_at < ? AND {spare} "
                              "ORDER BY started_at", (now - max_age, now - STALE_IN_FLIGHT)):
            victims[r[0]] = r[1] or 0
    if max_bytes is not None:
        total = conn.execute("SELECT coalesce(sum(stored_bytes), 0) FROM exchanges").fetchone()[0]
        excess = total - sum(victims.values()) - max_bytes
        if excess > 0:
            for r in conn.execute(f"SELECT id, stored_bytes FROM exchanges WHERE {spare} "
                                  "ORDER BY started_at, id", (now - STALE_IN_FLIGHT,)):
                if excess <= 0:
                    break
                if r[0] not in victims:
                    victims[r[0]] = r[1] or 0
                    excess -= r[1] or 0
    return list(victims.items())


def _delete_files(log_dir: BodyStore, ids: list[str]) -> int:
    freed = 0
    for exchange_id in ids:
        document = log_dir.read_metadata(exchange_id)
        if document is not None:
            freed += log_dir.delete_exchange(document)
    return freed


class Retention:
    def __init__(self, log_dir: BodyStore, index: IndexStore, max_age: float | None = None,
                 max_bytes: int | None = None, interval: float = 60.0) -> None:
        self.log_dir = log_dir
        self.index = index
        self.max_age = max_age
        self.max_bytes = max_bytes
        self.interval = interval
        self.pool = ThreadPool(1)
        self._loop: gevent.Greenlet | None = None

    @property
    def enabled(self) -> bool:
        return self.max_age is not None or self.max_bytes is not None

    def start(self) -> None:
        if self.enabled and self._loop is None:
            self._loop = gevent.spawn(self._run_forever)

    def _run_forever(self) -> None:
        while True:
            try:
                self.run_once()
            except Exception as e:  # keep pruning next round; say why this one failed
                print(f"orlogserver: retention failed: {e!r}", file=sys.stderr, flush=True)
            gevent.sleep(self.interval)

    def run_once(self, now: float | None = None) -> Pruned:
        """One pruning round (skipped if another process is pruning)."""
        pruned = Pruned()
        if not self.enabled:
            return pruned
        with self.log_dir.exclusive("retention") as ours:
            if not ours:
                return pruned
            self.index.flush(5)
            victims = self.index.read(select_victims, time.time() if now is None else now,
                                      self.max_age, self.max_bytes)
            ids = [v[0] for v in victims]
            for start in range(0, len(ids), BATCH):
                chunk = ids[start:start + BATCH]
                if self.log_dir.blocking:
                    pruned.bytes += self.pool.apply(_delete_files, (self.log_dir, chunk))
                else:
                    pruned.bytes += _delete_files(self.log_dir, chunk)
                self.index.delete_rows(chunk)
                pruned.exchanges += len(chunk)
            if ids:
                self.log_dir.collect()
        return pruned

    def close(self) -> None:
        if self._loop is not None:
            self._loop.kill()
        self.pool.kill()

