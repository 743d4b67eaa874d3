"""The index in PostgreSQL (`orlogserver --index postgresql://…`): the SQLite index's
tables, columns and queries (store/index.py) in a database that several logging servers
share, so that any of them lists, searches and feeds what any of them ingested.

- **psycopg 3 under gevent.** With the standard library monkey-patched, psycopg waits on
  its sockets cooperatively (docs/scaling-out.md measured it: 8 queries at once overlap),
  so queries run in the calling greenlet, on a small pool of connections; no threads.
- **One dialect for the readers.** web/ and live/ build SQLite SQL with `?` placeholders
  and hand it to `read(fn)`. `Connection.execute` runs it here after `translate`, which
  changes the few phrases PostgreSQL says otherwise (the full-text match, `LIKE`'s case).
- **The order of changes.** The live feed reads rows by `seq` (live/feed.py). Each write
  transaction first takes one advisory lock, then numbers its rows after the latest
  `seq`: transactions of any instance commit in the order of their numbers, so a feed
  that has read up to `seq` N never later meets a smaller one.
- **Full-text search.** `texts.words` is a tsvector of the text's words as SQLite's
  tokenizer splits and folds them (searchtext.folded_words), matched by
  `phraseto_tsquery('simple', …)`: whole words in order, as FTS5's phrase. Known
  difference: PostgreSQL keeps word positions up to 16,383, so a phrase past that many
  words into a text matches on its words alone.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, TypeVar

import psycopg
from gevent.monkey import get_original
from gevent.queue import LifoQueue
from psycopg.adapt import Loader
from psycopg.pq import TransactionStatus

from orproxy.logserver.llm.pricing import Pricing
from orproxy.logserver.llm.searchtext import folded_words
from orproxy.logserver.store.index import LAST_SEQ, TEXT_MATCHES, TOMBSTONE_SEQS, numbered, whole_texts
from orproxy.logserver.store.indexqueue import QueuedIndex
from orproxy.logserver.store.pgschema import WRITE_LOCK, migrate
from orproxy.logserver.store.schema import COLUMNS, DEFAULT_PRICING, row_from_document

T = TypeVar("T")
CONNECTIONS = 8
_thread_id = get_original("_thread", "get_ident")

_PHRASES = (  # SQLite's words -> PostgreSQL's
    (TEXT_MATCHES, "SELECT rowid FROM texts WHERE words @@ phraseto_tsquery('simple', ?)"),
    (" LIKE ", " ILIKE "),  # SQLite's LIKE ignores the case of ASCII letters
    ("json_each(?)", "json_array_elements_text(CAST(? AS json))"),  # a JSON list's values (query.ROWIDS_IN)
)
_STATEMENTS = {"BEGIN": "BEGIN ISOLATION LEVEL REPEATABLE READ"}  # a reader's one snapshot


@lru_cache(maxsize=4096)
def translate(sql: str) -> str:
    """SQLite SQL as PostgreSQL runs it: the phrases above, and `%s` placeholders for `?`
    (outside string literals, where a `%` is doubled)."""
    if sql in _STATEMENTS:
        return _STATEMENTS[sql]
    for sqlite, postgresql in _PHRASES:
        sql = sql.replace(sqlite, postgresql)
    pieces = sql.split("'")
    pieces[::2] = [p.replace("%", "%%").replace("?", "%s") for p in pieces[::2]]
    return "'".join(pieces)


class Row:
    """A result row as sqlite3.Row is one: by position, by name, and dict(row)."""
    __slots__ = ("_values", "_positions")

    def __init__(self, values: tuple[Any, ...], positions: dict[str, int]) -> None:
        self._values, self._positions = values, positions

    def __getitem__(self, key: int | str) -> Any:
        return self._values[self._positions[key] if isinstance(key, str) else key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def keys(self) -> list[str]:
        return list(self._positions)


def _rows(cursor: psycopg.Cursor[Any]) -> Callable[[Any], Row]:
    positions: dict[str, int] = {}
    for i, column in enumerate(cursor.description or ()):
        positions.setdefault(column.name, i)  # PostgreSQL's `*` holds rowid too
    return lambda values: Row(tuple(values), positions)


class _Number(Loader):
    """`numeric` (what sum() of integers gives) as int or float, as SQLite answers: JSON
    has no Decimal."""

    def load(self, data: Any) -> int | float:
        text = bytes(data)
        return float(text) if b"." in text or b"e" in text.lower() else int(text)


class Cursor:
    """A cursor that takes SQLite SQL; `row_factory = None` gives plain tuples (stats.py)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn
        self._cursor: psycopg.Cursor[Any] | None = None
        self.row_factory: Any = _rows

    def execute(self, sql: str, args: Any = ()) -> "Cursor":
        factory = self.row_factory or psycopg.rows.tuple_row
        self._cursor = self._conn.cursor(row_factory=factory)
        self._cursor.execute(translate(sql), tuple(args) or None)
        return self

    def fetchone(self) -> Any:
        return self._cursor.fetchone() if self._cursor is not None else None

    def fetchall(self) -> list[Any]:
        return self._cursor.fetchall() if self._cursor is not None and self._cursor.description else []

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount if self._cursor is not None else -1


class Connection:
    """A psycopg connection that speaks to the readers as sqlite3's does."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.raw = conn

    def cursor(self) -> Cursor:
        return Cursor(self.raw)

    def execute(self, sql: str, args: Any = ()) -> Cursor:
        return Cursor(self.raw).execute(sql, args)


def connect(url: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(url, autocommit=True, connect_timeout=10, application_name="orlogserver")
    conn.adapters.register_loader("numeric", _Number)
    return conn


# -- writes (both run in one transaction under WRITE_LOCK) -------------------------------

_WRITTEN = [c for c in COLUMNS if c not in ("id", "seq")]
_UPSERT = (
    f"INSERT INTO exchanges ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * len(COLUMNS))}) "
    f"ON CONFLICT (id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in _WRITTEN + ['seq'])} "
    "WHERE excluded.rev >= exchanges.rev"
)
_PUT_TEXT = ("INSERT INTO texts (rowid, id, body, words) SELECT rowid, id, %s, to_tsvector('simple', %s) "
             "FROM exchanges WHERE id = %s "
             "ON CONFLICT (rowid) DO UPDATE SET body = excluded.body, words = excluded.words")
_DROP_TEXT = "DELETE FROM texts WHERE rowid = (SELECT rowid FROM exchanges WHERE id = %s)"


@contextmanager
def _writing(conn: psycopg.Connection[Any]) -> Iterator[int]:
    """A write transaction in the order of changes (the module docstring); gives the latest seq."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
        yield conn.execute(translate(LAST_SEQ)).fetchone()[0]


def _text(value: Any) -> Any:
    """PostgreSQL's text holds no NUL (a path, a WebSocket message, hostile bytes may):
    it becomes U+FFFD, as an undecodable byte does."""
    return value.replace("\x00", "\ufffd") if isinstance(value, str) and "\x00" in value else value


def upsert_rows(conn: psycopg.Connection[Any], rows: list[dict[str, Any]],
                texts: dict[str, str] | None = None) -> None:
    """As index.upsert_rows: each row gets the next `seq`; older revisions lose."""
    with _writing(conn) as seq, conn.cursor() as cursor:
        cursor.executemany(_UPSERT, [tuple(map(_text, values)) for values in numbered(rows, seq)])
        if texts:
            whole = {i: _text(text) for i, text in whole_texts(rows, texts).items()}
            put = [(text, folded_words(text), i) for i, text in whole.items() if text]
            if put:
                cursor.executemany(_PUT_TEXT, put)
            dropped = [(i,) for i, text in whole.items() if not text]
            if dropped:
                cursor.executemany(_DROP_TEXT, dropped)


def delete_rows(conn: psycopg.Connection[Any], ids: list[str]) -> None:
    """As index.delete_rows: each removal leaves a tombstone with the next `seq`."""
    with _writing(conn) as seq, conn.cursor() as cursor:
        for exchange_id in ids:
            cursor.execute(_DROP_TEXT, (exchange_id,))
            cursor.execute("DELETE FROM exchanges WHERE id = %s", (exchange_id,))
            if cursor.rowcount:
                seq += 1
                cursor.execute("INSERT INTO removed (seq, id) VALUES (%s, %s)", (seq, exchange_id))
        cursor.execute("DELETE FROM removed WHERE seq <= %s", (seq - TOMBSTONE_SEQS,))


class PgIndex(QueuedIndex):
    """The index in the PostgreSQL database at `url`, safe to use from any greenlet."""
    ROW_ERRORS = (ValueError, TypeError, psycopg.DataError, psycopg.IntegrityError)

    def __init__(self, url: str, pricing: Pricing = DEFAULT_PRICING, connections: int = CONNECTIONS) -> None:
        super().__init__(pricing)
        self.url = url
        self.pool = Pool(url, connections)
        first = connect(url)
        try:
            self.recreated = migrate(first)
        finally:
            first.close()

    def _use(self, fn: Callable[..., T], args: tuple[Any, ...], wrap: bool = True) -> T:
        with self.pool.connection() as conn:
            return fn(Connection(conn) if wrap else conn, *args)

    def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(connection, *args) on a pooled connection; the calling greenlet waits."""
        return self._use(fn, args)

    write = read
    read_here = read  # from a thread that is not the loop's (the deriver's): its own connection

    def write_documents(self, documents: list[dict[str, Any]], texts: dict[str, str]) -> None:
        self.upsert_rows([row_from_document(d, pricing=self.pricing) for d in documents], texts)

    def upsert_rows(self, rows: list[dict[str, Any]], texts: dict[str, str] | None = None) -> None:
        self._use(upsert_rows, (rows, texts), wrap=False)

    def delete_rows(self, ids: list[str]) -> None:
        self._use(delete_rows, (ids,), wrap=False)

    def analyze(self) -> None:
        self._use(lambda conn: conn.execute("ANALYZE exchanges; ANALYZE texts"), (), wrap=False)

    def last_seq(self) -> int:
        return self.read(lambda conn: conn.execute(LAST_SEQ).fetchone()[0])

    def close(self) -> None:
        self.stop_writing()
        self.pool.close()


class Pool:
    """Connections to one database: up to `size` shared by the loop's greenlets, opened when
    first needed, and one of its own for each other thread (the deriver's)."""

    def __init__(self, url: str, size: int = CONNECTIONS) -> None:
        self.url = url
        self._slots: LifoQueue = LifoQueue()
        for _ in range(size):
            self._slots.put(None)
        self._loop_thread = _thread_id()
        self._by_thread: dict[int, psycopg.Connection[Any]] = {}

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection, idle again (its transaction rolled back) when given back; one the
        server dropped is closed, and the next use reconnects."""
        thread = _thread_id()
        if thread != self._loop_thread:
            conn = self._by_thread.get(thread)
            if conn is None or conn.closed:
                conn = self._by_thread[thread] = connect(self.url)
            yield conn
            return
        conn = self._slots.get()
        try:
            if conn is None or conn.closed:
                conn = connect(self.url)
            yield conn
            if conn.info.transaction_status != TransactionStatus.IDLE:
                conn.rollback()
        except psycopg.OperationalError:  # the server went away: the next call reconnects
            if conn is not None:
                conn.close()
            conn = None
            raise
        except BaseException:
            if conn is not None and not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
                conn.rollback()
            raise
        finally:
            self._slots.put(conn)

    def close(self) -> None:
        while not self._slots.empty():
            conn = self._slots.get_nowait()
            if conn is not None:
                conn.close()
        for conn in self._by_thread.values():
            conn.close()


def masked(url: str) -> str:
    """A database URL fit for a message: its password and query (which may hold one) hidden."""
    return re.sub(r"^(\w+://[^:/@]*):[^@/]*@", r"\1:***@", url.split("?")[0])

