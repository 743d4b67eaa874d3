"""HAR 1.2 export: `GET /api/requests/{id}/har` and `GET /api/har?<filters>` (api.py
serves them, har_entry.py builds each entry).

Streamed, so that an export of 100,000 exchanges never sits in memory: the index is paged
through with the listing's own query and cursor (listing.list_rows, newest first like the
list), and each entry is built on a thread from the exchange's files, written out, and
dropped before the next one is read. One entry costs at most its two bodies, each read
back up to har_entry.BODY_LIMIT decoded bytes. The document goes out as a chunked
response: its head, the entries one by one, its end.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from orproxy import __version__, jsoncodec
from orproxy.logserver.llm.httpfile import Message
from orproxy.logserver.store.stores import BodyStore, IndexStore
from orproxy.logserver.store.record import ExchangeRecord
from orproxy.logserver.web import listing, query
from orproxy.logserver.web.har_entry import BODY_LIMIT, har_entry
from orproxy.logserver.web.query import ParamError, Where

PAGE = 200  # rows per index read: a few hundred small dicts at a time
LIMIT_PARAM = "limit"


def headers(filename: str) -> list[tuple[str, str]]:
    return [("Content-Type", "application/json; charset=utf-8"), ("Cache-Control", "no-store"),
            ("Content-Disposition", f'attachment; filename="{filename}"')]


def parse_limit(params: dict[str, list[str]]) -> int | None:
    """`limit`: at most this many entries (the newest), or every match."""
    values = params.get(LIMIT_PARAM)
    if not values:
        return None
    if len(values) > 1 or not values[0].isdigit() or not 1 <= int(values[0]) <= 10**9:
        raise ParamError(LIMIT_PARAM, "must be a positive integer")
    return int(values[0])


def _head() -> bytes:
    creator = {"name": "orproxy", "version": __version__}
    return b'{"log":{"version":"1.2","creator":' + jsoncodec.dumps(creator) + b',"pages":[],"entries":['


def _part(log_dir: BodyStore, record: ExchangeRecord, kind: str) -> Message | None:
    """A part read back for an entry: its body decoded up to BODY_LIMIT, and no more
    of the file read than that needs (4 x for a compressed body)."""
    encoded = bool(record.head(kind).get("content_encoding"))
    return log_dir.read_part(record, kind, BODY_LIMIT, 4 * BODY_LIMIT if encoded else BODY_LIMIT)


def entry_bytes(log_dir: BodyStore, row: dict[str, Any], document: dict[str, Any] | None = None) -> bytes | None:
    """One entry's JSON (run on a thread: it reads and decodes files), or None if the
    exchange is gone (deleted since it was listed)."""
    document = document or log_dir.read_metadata(row["id"])
    if document is None:
        return None
    record = ExchangeRecord(document)
    try:
        entry = har_entry(document, row, _part(log_dir, record, "request"), _part(log_dir, record, "response"))
    except Exception as e:  # damaged files: this entry says so, and the export goes on
        entry = har_entry(document, row, None, None)
        entry["comment"] = f"its files could not be read: {type(e).__name__}: {e}"
    return jsoncodec.dumps(entry)


def _rows(index: IndexStore, where: Where, limit: int | None) -> Iterator[dict[str, Any]]:
    """The matching rows, newest first, a page at a time (the listing's cursor)."""
    cursor, left = None, limit
    while left is None or left > 0:
        page = index.read(listing.list_rows, query.ListQuery(where, PAGE if left is None else min(PAGE, left),
                                                            cursor))
        yield from page["items"]
        if left is not None:
            left -= len(page["items"])
        cursor = page["next_cursor"] and query.decode_cursor(page["next_cursor"])
        if not cursor:
            return


def document(entries: Iterator[bytes | None]) -> Iterator[bytes]:
    """The HAR document around `entries` (None: an entry left out), written as they come."""
    yield _head()
    first, skipped = True, 0
    for data in entries:
        if data is None:
            skipped += 1
            continue
        yield data if first else b"," + data
        first = False
    tail = b"]"
    if skipped:
        tail += b',"comment":' + jsoncodec.dumps(f"{skipped} exchanges were deleted while exported")
    yield tail + b"}}"


def export(index: IndexStore, log_dir: BodyStore, run: Callable[..., Any], where: Where,
           limit: int | None) -> Iterator[bytes]:
    """The HAR document of every exchange `where` matches (at most `limit`), newest first;
    `run(fn, *args)` runs a function on a thread."""
    return document(run(entry_bytes, log_dir, row) for row in _rows(index, where, limit))
