"""The write queue in front of either index (store/index.py for SQLite, store/pgindex.py
for PostgreSQL): ingest hands each metadata rewrite over without waiting, and a greenlet
writes what has piled up as one batch. Updates of the same exchange coalesce (the newest
revision of its metadata document wins, and rows are built only for what gets written),
so a burst of rewrites costs one transaction, not one each."""
from __future__ import annotations

from typing import Any

import gevent
from gevent.event import Event

from orproxy.logserver.llm.pricing import Pricing

ANALYZE_EVERY = 20_000  # rows written


class QueuedIndex:
    """What both indexes share: the queue, its writer greenlet and its counters. A subclass
    gives `write_documents` (SQLite builds the rows on its writer thread), `analyze`, and
    the reads and writes that the rest of the server calls (`IndexStore` in store/stores.py)."""

    ROW_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError)  # a row's own fault: retried alone

    def __init__(self, pricing: Pricing) -> None:
        self.pricing = pricing
        self._pending: dict[str, dict[str, Any]] = {}
        self._texts: dict[str, str] = {}
        self._wake = Event()
        self._idle = Event()
        self._idle.set()
        self._loop: gevent.Greenlet | None = None
        self.errors = 0
        self._since_analyze = 0

    def write_documents(self, documents: list[dict[str, Any]], texts: dict[str, str]) -> None:
        """Write the rows of these metadata documents, with these search texts, at once."""
        raise NotImplementedError

    def analyze(self) -> None:
        raise NotImplementedError

    def put(self, document: dict[str, Any], text: str | None = None) -> None:
        """Queue an exchange's metadata document (and its search text, if just derived) for
        indexing; never blocks. A newer revision replaces a queued one."""
        exchange_id = str(document.get("id", "")).lower()
        queued = self._pending.get(exchange_id)
        if queued is None or (queued.get("rev") or 0) <= (document.get("rev") or 0):
            self._pending[exchange_id] = document
        if text is not None:
            self._texts[exchange_id] = text
        self._idle.clear()
        self._wake.set()
        if self._loop is None:
            self._loop = gevent.spawn(self._write_loop)

    def _write_loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, texts = list(self._pending.values()), self._texts
                self._pending, self._texts = {}, {}
                self._write(batch, texts)
                self._since_analyze += len(batch)
                if self._since_analyze >= ANALYZE_EVERY:
                    self._since_analyze = 0
                    try:
                        self.analyze()
                    except Exception as e:
                        print(f"orlogserver: index statistics not refreshed: {e}", flush=True)
            self._idle.set()

    def _write(self, batch: list[dict[str, Any]], texts: dict[str, str]) -> None:
        try:
            self.write_documents(batch, texts)
            return
        except Exception as e:  # a full disk, a locked file, a lost database: keep serving
            failed = e
        if len(batch) > 1 and isinstance(failed, self.ROW_ERRORS):  # one bad row must not cost the others theirs
            for document in batch:
                exchange_id = str(document.get("id", "")).lower()
                self._write([document], {exchange_id: texts[exchange_id]} if exchange_id in texts else {})
            return
        self.errors += 1
        print(f"orlogserver: index write failed: {failed}", flush=True)

    @property
    def queued(self) -> int:
        """Exchanges waiting to be written (the metrics: how far the writer is behind)."""
        return len(self._pending)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued row is written (tests, reindex, shutdown)."""
        return self._idle.wait(timeout)

    def stop_writing(self) -> None:
        self.flush(5)
        if self._loop is not None:
            self._loop.kill()
