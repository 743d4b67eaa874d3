"""The SQLite index of exchanges: one row per exchange, in `<log-dir>/.ids/index.sqlite3`
(beside the id links: the log dir itself holds only the exchanges' files).

The files stay the source of truth (reindex.py rebuilds this from them). SQLite calls
block whatever thread makes them, so none is made on the gevent loop (FACTS.md, "SQLite
under gevent"): writes go through one writer thread, fed by a queue that coalesces
updates of the same exchange (rows are built there, from the newest metadata document)
and commits them in batches (one transaction per batch, WAL,
synchronous=NORMAL); reads run on a small pool of reader threads, each with its own
connection. Several worker processes share the file: WAL lets them read while one writes,
`busy_timeout` makes writers wait their turn, and a row is only ever replaced by a newer
revision of its metadata document (logdir.py), whichever process writes it.

The free-text search's table `texts` (FTS5) holds each exchange's search text (llm/
searchtext.py) with its short columns' values (searchtext.indexed_text), under the rowid
of its row in `exchanges`; the deriving hands it over with the row (`put`), and removing a
row removes its text.

`seq` orders every change for the live feed (live/feed.py): each write of a row takes the
next one, and so does each removal (`delete_rows`), which leaves a tombstone (id, seq) in
`removed` so that every worker's feed can tell its clients. Tombstones are kept for the
last TOMBSTONE_SEQS seqs; a client further behind than that reloads instead.
"""
from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from gevent.monkey import get_original
from gevent.threadpool import ThreadPool

from orproxy.logserver.llm.pricing import Pricing
from orproxy.logserver.llm.searchtext import indexed_text
from orproxy.logserver.store.indexqueue import QueuedIndex
from orproxy.logserver.store.schema import COLUMNS, DEFAULT_PRICING, FIELDS, row_from_document

_sleep = get_original("time", "sleep")  # in the index's own thread: a real sleep

SCHEMA_VERSION = 6  # 3: incomplete_reason, the in_flight index; 4: conversations, cost, texts; 5: replay_of;
# 6: the texts hold the short columns' values
FILENAME = "index.sqlite3"
READERS = 4
BUSY_TIMEOUT_MS = 30_000
TOMBSTONE_SEQS = 100_000  # tombstones older than this many changes are dropped

T = TypeVar("T")
_thread_id = get_original("_thread", "get_ident")

INDEXES = (  # name, columns, and for a partial index the rows it covers
    ("by_time", "started_at, id", ""),
    ("by_model", "model, started_at, id", ""),  # ordered scans per model: see listing._newest_first
    ("by_model_requested", "model_requested, started_at, id", ""),
    ("by_route", "route, started_at, id", ""),
    ("by_seq", "seq", ""),
    ("in_flight", "started_at", "state = 'in_flight'"),  # the sweeper's few rows (sweeper.py)
    ("by_conversation", "conversation_id, started_at", "conversation_id IS NOT NULL"),
    ("by_session", "session_id, started_at", "session_id IS NOT NULL"),
    ("by_turn_key_time", "turn_key, started_at", "turn_key IS NOT NULL"),  # a next turn finds this one (linking.py)
    ("by_response_id", "response_id", "response_id IS NOT NULL"),
    ("by_previous", "previous_id", "previous_id IS NOT NULL"),  # a relinked turn's followers (relinking.py)
    ("replays", "replay_of, started_at, id", "replay_of IS NOT NULL"),  # the replay_of filter's few rows
)


_TOMBSTONES = "CREATE TABLE IF NOT EXISTS removed (seq INTEGER PRIMARY KEY, id TEXT NOT NULL)"
TEXT_MATCHES = "SELECT rowid FROM texts WHERE texts MATCH ?"  # a phrase's rows (pgindex.py translates it)
_TEXTS = ("CREATE VIRTUAL TABLE IF NOT EXISTS texts USING fts5(id UNINDEXED, body, "
          "tokenize = 'unicode61 remove_diacritics 2')")


def connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                           check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def _set_wal(conn: sqlite3.Connection, tries: int = 100) -> None:
    """WAL mode. Two worker processes starting together may both ask for it, and SQLite
    then answers one "database is locked" at once, without waiting its busy timeout: try
    again (a gunicorn worker died of it at start, now and then, in the suite)."""
    for attempt in range(tries):
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or attempt == tries - 1:
                raise
            _sleep(0.05)


def create_schema(conn: sqlite3.Connection) -> bool:
    """Create (or, after a schema change, recreate) the table; True if it was (re)created."""
    _set_wal(conn)
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        exists = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'exchanges'").fetchone()
        if version == SCHEMA_VERSION and exists:
            conn.execute(_TOMBSTONES)  # added after version 2 shipped: no rebuild for it
            conn.execute("COMMIT")
            return False
        conn.execute("DROP TABLE IF EXISTS exchanges")
        conn.execute("DROP TABLE IF EXISTS removed")
        conn.execute("DROP TABLE IF EXISTS texts")
        columns = ", ".join(f"{f.name} {f.sql}" + (" PRIMARY KEY" if f.name == "id" else "")
                            for f in FIELDS)
        conn.execute(f"CREATE TABLE exchanges ({columns})")
        for name, columns, rows in INDEXES:
            conn.execute(f"CREATE INDEX IF NOT EXISTS {name} ON exchanges ({columns})"
                         + (f" WHERE {rows}" if rows else ""))
        conn.execute(_TOMBSTONES)
        conn.execute(_TEXTS)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
        return True
    except BaseException:
        conn.execute("ROLLBACK")
        raise


_WRITTEN = [c for c in COLUMNS if c not in ("id", "seq")]
_UPSERT = (
    f"INSERT INTO exchanges ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "
    f"ON CONFLICT(id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in _WRITTEN + ['seq'])} "
    "WHERE excluded.rev >= exchanges.rev"
)


def analyze(conn: sqlite3.Connection) -> None:
    """Refresh the planner's statistics (sampled, so it takes milliseconds): with them it
    scans by time for a common model and by model for a rare one."""
    conn.execute("PRAGMA analysis_limit = 1000")
    conn.execute("ANALYZE")


# Both dialects' SQL (the PostgreSQL index runs it too: store/pgindex.py)
LAST_SEQ = ("SELECT max(s) FROM (SELECT coalesce(max(seq), 0) AS s FROM exchanges "
            "UNION ALL SELECT coalesce(max(seq), 0) FROM removed) AS latest")


def last_seq(conn: Any) -> int:
    """The `seq` of the latest change: a row written or removed (two index lookups), from
    either index's connection."""
    return conn.execute(LAST_SEQ).fetchone()[0]


def numbered(rows: list[dict[str, Any]], seq: int) -> list[tuple[Any, ...]]:
    """The rows as COLUMNS values, each with the next `seq` after `seq` (either index's)."""
    return [tuple(seq + n if c == "seq" else row.get(c) for c in COLUMNS) for n, row in enumerate(rows, 1)]


def whole_texts(rows: list[dict[str, Any]], texts: dict[str, str]) -> dict[str, str]:
    """The texts the index holds: each derived text with its row's short columns (either index's)."""
    by_id = {str(row.get("id")).lower(): row for row in rows}
    return {i: indexed_text(by_id.get(i, {}), text) for i, text in texts.items()}


def upsert_rows(conn: sqlite3.Connection, rows: list[dict[str, Any]],
                texts: dict[str, str] | None = None) -> None:
    """Write rows in one transaction; each gets the next `seq`. Older revisions lose.
    `texts`: search texts by exchange id, replacing the ones they had."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(_UPSERT, numbered(rows, last_seq(conn)))
        if texts:
            _replace_texts(conn, whole_texts(rows, texts))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def delete_rows(conn: sqlite3.Connection, ids: list[str]) -> None:
    """Remove rows in one transaction, each leaving a tombstone with the next `seq` (the
    live feed's news of it); tombstones more than TOMBSTONE_SEQS behind are dropped."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        seq = last_seq(conn)
        for exchange_id in ids:
            conn.execute("DELETE FROM texts WHERE rowid = (SELECT rowid FROM exchanges WHERE id = ?)",
                         (exchange_id,))
            if conn.execute("DELETE FROM exchanges WHERE id = ?", (exchange_id,)).rowcount:
                seq += 1
                conn.execute("INSERT INTO removed (seq, id) VALUES (?, ?)", (seq, exchange_id))
        conn.execute("DELETE FROM removed WHERE seq <= ?", (seq - TOMBSTONE_SEQS,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _replace_texts(conn: sqlite3.Connection, texts: dict[str, str]) -> None:
    for exchange_id, text in texts.items():
        found = conn.execute("SELECT rowid FROM exchanges WHERE id = ?", (exchange_id,)).fetchone()
        if found is not None:
            conn.execute("DELETE FROM texts WHERE rowid = ?", (found[0],))
            if text:
                conn.execute("INSERT INTO texts (rowid, id, body) VALUES (?, ?, ?)", (found[0], exchange_id, text))


def _upsert_documents(conn: sqlite3.Connection, documents: list[dict[str, Any]], texts: dict[str, str],
                      pricing: Pricing) -> None:
    upsert_rows(conn, [row_from_document(d, pricing=pricing) for d in documents], texts)  # on the writer thread


class Index(QueuedIndex):
    """The SQLite index of one log directory, safe to use from any greenlet."""
    ROW_ERRORS = (ValueError, TypeError, OverflowError, sqlite3.DataError, sqlite3.IntegrityError)

    def __init__(self, log_dir: str, readers: int = READERS, pricing: Pricing = DEFAULT_PRICING) -> None:
        super().__init__(pricing)
        self.path = os.path.join(log_dir, ".ids", FILENAME)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.created = not os.path.exists(self.path)
        self._writer = ThreadPool(1)
        self._readers = ThreadPool(readers)
        self._write_conn: sqlite3.Connection | None = None
        self._read_conns: dict[int, sqlite3.Connection] = {}
        self.recreated = self.write(self._init)

    # -- threads ------------------------------------------------------------------------

    def _init(self, conn: sqlite3.Connection) -> bool:
        recreated = create_schema(conn) or self.created
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'").fetchone():
            analyze(conn)
        return recreated

    def _writer_conn(self) -> sqlite3.Connection:
        if self._write_conn is None:
            self._write_conn = connect(self.path)
        return self._write_conn

    def _reader_conn(self) -> sqlite3.Connection:
        conn = self._read_conns.get(_thread_id())
        if conn is None:
            conn = self._read_conns[_thread_id()] = connect(self.path)
            conn.execute("PRAGMA query_only = 1")
        return conn

    def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(connection, *args) on the writer thread; the calling greenlet waits."""
        return self._writer.apply(lambda: fn(self._writer_conn(), *args))

    def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(connection, *args) on a reader thread; the calling greenlet waits."""
        return self._readers.apply(lambda: fn(self._reader_conn(), *args))

    def read_here(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(connection, *args) on this thread, which is not the loop's (it may block)."""
        return fn(self._reader_conn(), *args)

    # -- the writes ---------------------------------------------------------------------

    def write_documents(self, documents: list[dict[str, Any]], texts: dict[str, str]) -> None:
        self.write(_upsert_documents, documents, texts, self.pricing)

    def upsert_rows(self, rows: list[dict[str, Any]], texts: dict[str, str] | None = None) -> None:
        self.write(upsert_rows, rows, texts)

    def delete_rows(self, ids: list[str]) -> None:
        self.write(delete_rows, ids)

    def analyze(self) -> None:
        self.write(analyze)

    def last_seq(self) -> int:
        return self.read(last_seq)

    def close(self) -> None:
        self.stop_writing()
        for pool in (self._writer, self._readers):
            pool.kill()
