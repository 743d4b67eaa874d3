"""Rebuilding the index from the files (`orlogserver --reindex`, or by itself when the index
is new or its schema changed).

The files are the source of truth: every `*_metadata.json` becomes a row, derived fields
missing or made by older rules are computed again from the `.bin` files (and stored in the
metadata file, so the next rebuild is quick), and rows whose files are gone are removed.
An exchange whose proxy metadata never came (a proxy crash) is indexed from its parts.
The search texts are not stored anywhere else: they are made again from the `.bin` files.
Exchanges are walked oldest first, so that a turn derived again finds the turn it
continues among those walked before it (linking.py, from memory).
"""
from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from orproxy.logserver.store.deriving import derive_document, remember_document, search_text
from orproxy.logserver.store.stores import BodyStore, IndexStore
from orproxy.logserver.store.linking import Linker
from orproxy.logserver.store.record import ExchangeRecord
from orproxy.logserver.store.schema import row_from_document

BATCH = 1000


@dataclass
class Result:
    indexed: int = 0
    derived: int = 0
    skipped: int = 0
    removed: int = 0
    seconds: float = 0.0


def _indexed_ids(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT id FROM exchanges")]


def reindex(log_dir: BodyStore, index: IndexStore,
            run: Callable[..., Any] = lambda fn, *args: fn(*args)) -> Result:
    """Rebuild the index of `log_dir`. `run(fn, *args)` runs the file parsing (pass a
    thread pool's apply when a gevent server is serving meanwhile)."""
    started = time.monotonic()
    result = Result()
    seen: set[str] = set()
    batch: list[dict[str, Any]] = []
    texts: dict[str, str] = {}
    linker = Linker()
    for key in log_dir.document_keys():
        document, linked = run(log_dir.adopt_document, key)
        if document is None:
            result.skipped += 1
            continue
        if ExchangeRecord(document).needs_derive:
            derivation = run(derive_document, log_dir, document, linker)
            if linked:  # store them: the next rebuild need not parse the bodies again
                with log_dir.metadata(document["id"], time.time()) as current:
                    current["derived"] = derivation.fields
                document = current
            else:
                document["derived"] = derivation.fields
            text = derivation.text
            result.derived += 1
        else:
            remember_document(linker, document)
            text = run(search_text, log_dir, document)
        seen.add(document["id"].lower())
        batch.append(row_from_document(document, pricing=index.pricing))
        texts[document["id"].lower()] = text
        if len(batch) >= BATCH:
            index.upsert_rows(batch, texts)
            result.indexed += len(batch)
            batch, texts = [], {}
    if batch:
        index.upsert_rows(batch, texts)
        result.indexed += len(batch)
    gone = [i for i in index.read(_indexed_ids) if i not in seen and log_dir.read_metadata(i) is None]
    if gone:
        index.delete_rows(gone)
    index.analyze()
    result.removed = len(gone)
    result.seconds = time.monotonic() - started
    return result
