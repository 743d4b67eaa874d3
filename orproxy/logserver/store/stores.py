"""Where the bodies and the index live.

Bodies and metadata documents: a `BodyStore`. The one built is the log dir (`LogDir`,
store/logdir.py), which several servers can share on one file system. The readers (the
API, HAR, replay, the tail, the sweeper, deriving) ask it by exchange and kind, and the
writers (ingest.py's streamed PUT, appends.py's batches) and reindex by exchange, kind and
the part's start, never for a path, so an object store can implement the same protocol
(docs/scaling-out.md, the body store's seam).

The index: SQLite in the log dir (store/index.py, the default, nothing to
set up) or PostgreSQL (store/pgindex.py), which several logging servers can share.

Both are an `IndexStore`. Their readers hand `fn` a connection whose `execute(sql, args)`
takes the SQLite dialect with `?` placeholders; the SQL of web/ and live/ keeps to what
both engines run alike, and pgindex.translate changes the few phrases that differ."""
from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, BinaryIO, Protocol, TypeVar

from orproxy.logserver.llm.httpfile import Head, Message
from orproxy.logserver.llm.pricing import Pricing
from orproxy.logserver.store.record import ExchangeRecord
from orproxy.logserver.store.schema import DEFAULT_PRICING

T = TypeVar("T")
SCHEMES = ("postgresql://", "postgres://")


class PartWriter(Protocol):
    """A part being written: by a streamed PUT block by block, by batches append by append."""
    name: str  # as the document names the part ("file")

    # Its bytes stored now, whoever wrote them; a store that must ask elsewhere may answer what
    # it knows (never more than is stored), and asks only if `look`.
    def stored(self, look: bool = False) -> int: ...
    def write(self, data: bytes | memoryview) -> None: ...
    def flush(self) -> None: ...  # what it holds back goes to the store's next sync
    def head(self, most: int) -> bytes: ...  # its first bytes, read back
    def close(self) -> None: ...
    def __enter__(self) -> PartWriter: ...
    def __exit__(self, *exc: object) -> None: ...


class BodyStore(Protocol):
    """What the writers and readers of bodies and documents ask of a store."""
    path: str  # where it is, as /api/health reports it
    ids: str   # a local dir of its own (the metrics files)
    blocking: bool  # its calls block the loop (files): retention and reindex run them on a thread
    batch_bytes: int  # of log data a proxy's batch should carry at most (logwire.BATCH_HEADER)

    # durability: what was written since `sync_point()` is durable once `sync` returns
    # (StoreUnavailable if some of it was lost: it must not be acknowledged)
    def sync_point(self) -> int: ...
    # not `eager`: the bytes may wait a moment to share an upload (the middle of a stream)
    def sync(self, since: int, eager: bool = True) -> None: ...

    # the writers (ingest.py, appends.py) and reindex
    def open_writer(self, exchange_id: str, kind: str, t: float, fresh: bool = False) -> PartWriter: ...
    def keep_recent(self, name: str, data: bytes, head: Head | None = None) -> None: ...
    def document_keys(self) -> list[str]: ...
    def adopt_document(self, key: str) -> tuple[dict[str, Any] | None, bool]: ...

    # the readers

    def read_metadata(self, exchange_id: str) -> dict[str, Any] | None: ...
    def metadata(self, exchange_id: str, now: float) -> AbstractContextManager[dict[str, Any]]: ...
    def exists(self, exchange_id: str) -> bool: ...
    def open_part(self, record: ExchangeRecord, kind: str) -> BinaryIO | None: ...
    def read_part(self, record: ExchangeRecord, kind: str, limit: int,
                  raw_limit: int | None = None) -> Message | None: ...
    def last_change(self, record: ExchangeRecord) -> float | None: ...
    def delete_exchange(self, document: dict[str, Any]) -> int: ...
    def collect(self) -> int: ...  # storage freed once nothing points into it, after deletes
    # held by one process of all that share the store at a time; False: another holds it
    def exclusive(self, name: str) -> AbstractContextManager[bool]: ...
    def close(self) -> None: ...


class IndexStore(Protocol):
    pricing: Pricing
    recreated: bool  # it was empty at start: the app fills it from the log dir
    errors: int      # failed batch writes (the metrics)

    def put(self, document: dict[str, Any], text: str | None = None) -> None: ...
    def flush(self, timeout: float | None = None) -> bool: ...
    @property
    def queued(self) -> int: ...
    def read(self, fn: Callable[..., T], *args: Any) -> T: ...
    def read_here(self, fn: Callable[..., T], *args: Any) -> T: ...
    def upsert_rows(self, rows: list[dict[str, Any]], texts: dict[str, str] | None = None) -> None: ...
    def delete_rows(self, ids: list[str]) -> None: ...
    def analyze(self) -> None: ...
    def last_seq(self) -> int: ...
    def close(self) -> None: ...


class StoreUnavailable(OSError):
    """The body store did not take a write (an object store's upload failed): the writer is
    answered 503, and the proxy sends the bytes again from its spool."""


class IndexUnavailable(Exception):
    """The index cannot be opened (a bad URL, a database that does not answer)."""


def open_index(url: str | None, log_dir: str, pricing: Pricing = DEFAULT_PRICING) -> IndexStore:
    """The SQLite index of `log_dir` if `url` is None, else the PostgreSQL one at `url`."""
    if url is None:
        from orproxy.logserver.store.index import Index
        return Index(log_dir, pricing=pricing)
    if not url.startswith(SCHEMES):
        raise IndexUnavailable(f"{url.split(':', 1)[0]!r} is not an index this server knows: "
                          "give a postgresql://USER@HOST/DB URL, or leave it out for SQLite in the log dir")
    try:
        import psycopg
    except ImportError:
        raise IndexUnavailable("PostgreSQL needs psycopg: pip install 'orproxy[postgresql]'") from None
    from orproxy.logserver.store.pgindex import PgIndex, masked
    try:
        return PgIndex(url, pricing=pricing)
    except psycopg.Error as e:
        raise IndexUnavailable(f"{masked(url)}: {' '.join(str(e).split())}") from None


def named_store(store_url: str | None, log_dir: str) -> tuple[str | None, str]:
    """(the object store's URL, the log dir) that `--store` and `--log-dir` name: `file:DIR`
    is the log dir DIR and no object store (the default, named: CONTRACT.md)."""
    if store_url is not None and store_url.startswith("file:"):
        return None, store_url[len("file:"):] or log_dir
    return store_url, log_dir


def open_stores(store_url: str | None, log_dir: str, index_url: str | None,
                pricing: Pricing = DEFAULT_PRICING) -> tuple[BodyStore, IndexStore]:
    """The body store and the index. The store is the log dir (`store_url` None, or
    `file:DIR`), or the object store at an s3:// `store_url`, whose documents go in the
    index's PostgreSQL database. StoreUnavailable: a store that cannot be."""
    store_url, log_dir = named_store(store_url, log_dir)
    if store_url is None:
        from orproxy.logserver.store.logdir import LogDir
        files = LogDir(log_dir)
        return files, open_index(index_url, files.path, pricing)
    if index_url is None or not index_url.startswith(SCHEMES):
        raise StoreUnavailable(f"{store_url}: bodies in an object store need the index in PostgreSQL too "
                         "(--index postgresql://USER@HOST/DB)")
    index = open_index(index_url, log_dir, pricing)  # its migrations make the store's tables
    try:
        from orproxy.logserver.store.objectstore import ObjectBodyStore
        return ObjectBodyStore(store_url, log_dir, index_url), index
    except ValueError as e:  # not an s3:// URL
        index.close()
        raise StoreUnavailable(str(e)) from None
    except BaseException:
        index.close()
        raise
