"""Where the index lives: SQLite in the log dir (store/index.py, the default, nothing to
set up) or PostgreSQL (store/pgindex.py), which several logging servers can share.

Both are an `IndexStore`. Their readers hand `fn` a connection whose `execute(sql, args)`
takes the SQLite dialect with `?` placeholders; the SQL of web/ and live/ keeps to what
both engines run alike, and pgindex.translate changes the few phrases that differ."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from orproxy.logserver.llm.pricing import Pricing
from orproxy.logserver.store.schema import DEFAULT_PRICING

T = TypeVar("T")
SCHEMES = ("postgresql://", "postgres://")


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
        raise IndexUnavailable(f"{masked(url)}: {str(e).strip()}") from None
