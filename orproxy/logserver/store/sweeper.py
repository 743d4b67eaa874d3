"""The sweeper: an exchange whose parts stopped arriving gets a final state.

A proxy killed mid-exchange (or one that never reports an end, as the original Go program)
leaves an exchange in flight for ever. Every `interval` seconds the sweeper looks at the
exchanges in flight that started more than `stale_after` seconds ago; one whose files
have not changed for that long is marked `swept` in its metadata document (when, and
why), and its state becomes final (record.py): complete if both its parts arrived whole,
else incomplete. Whatever arrives later (a proxy's spool, delivered after a restart)
simply updates it again. Each worker process sweeps; marking twice is harmless.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import gevent

from orproxy.logserver.store.stores import IndexStore
from orproxy.logserver.store.ingest import Ingest
from orproxy.logserver.store.record import ExchangeRecord

STALE_AFTER = 15 * 60.0  # seconds without a byte: longer than the proxy's default read timeout


@dataclass(frozen=True, slots=True)
class Swept:
    """The exchange stopped arriving: its state is final."""


def stale_candidates(conn, before: float) -> list[str]:  # noqa: ANN001 - a sqlite3 connection
    """Exchanges in flight that started before `before` (the partial index in_flight)."""
    return [r[0] for r in conn.execute(
        "SELECT id FROM exchanges WHERE state = 'in_flight' AND started_at < ? ORDER BY started_at", (before,))]


class Sweeper:
    def __init__(self, ingest: Ingest, index: IndexStore, stale_after: float = STALE_AFTER,
                 interval: float | None = None) -> None:
        self.ingest, self.index = ingest, index
        self.stale_after = stale_after
        self.interval = interval or min(60.0, max(0.5, stale_after / 4))
        self._loop: gevent.Greenlet | None = None

    def start(self) -> None:
        if self._loop is None:
            self._loop = gevent.spawn(self._run_forever)

    def _run_forever(self) -> None:
        while True:
            gevent.sleep(self.interval)
            try:
                self.run_once()
            except Exception as e:  # keep sweeping next round; say why this one failed
                print(f"orlogserver: sweeping stale exchanges failed: {e!r}", file=sys.stderr, flush=True)

    def run_once(self, now: float | None = None) -> int:
        """Mark the exchanges that stopped arriving; returns how many."""
        now = time.time() if now is None else now
        self.index.flush(5)
        swept = 0
        for exchange_id in self.index.read(stale_candidates, now - self.stale_after):
            document = self.ingest.log_dir.read_metadata(exchange_id)
            if document is None or not self._stale(ExchangeRecord(document), now):
                continue
            reason = f"nothing arrived for {self.stale_after:g} s (the proxy stopped mid-exchange, " \
                     "or reports no end)"
            self.ingest.apply(exchange_id, [(now, lambda d: d.update(swept={"at": now, "reason": reason}), Swept())])
            swept += 1
        return swept

    def _stale(self, record: ExchangeRecord, now: float) -> bool:
        if record.over or record.swept:
            return False
        changed = self.ingest.log_dir.last_change(record)
        return changed is None or now - changed >= self.stale_after

    def close(self) -> None:
        if self._loop is not None:
            self._loop.kill()
