"""The REST API under `/api/`: the list of exchanges (filters, cursor pagination), one
exchange (its row, metadata and files; DELETE removes it), its raw files (followed while
they grow), its parsed view, HAR exports (har.py), statistics, health, and the OpenAPI
document. The handlers
are named in the route table (routes.py), which app.py dispatches from.

Index reads and file parsing run on threads (index.py, a small pool here), never on the
gevent loop. Mistakes raise HttpError or query.ParamError: JSON errors, 400 naming the
parameter, 404, 409 (the dispatch answers 405 itself).
"""
from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs

from gevent.threadpool import ThreadPool

from orproxy import __version__
from orproxy.logserver.llm.view import VIEW_LIMIT, exchange_view
from orproxy.logserver.store.follow import PartFollower
from orproxy.logserver.store.stores import BodyStore, IndexStore
from orproxy.logserver.store.record import ExchangeRecord
from orproxy.logserver.store.schema import row_from_document, to_api
from orproxy.logserver.web import har, listing, openapi, query, stats
from orproxy.logserver.web.query import ParamError
from orproxy.logserver.web.replies import HttpError, json_response
from orproxy.logserver.web.routes import openapi_paths

BLOCK = 65536
LARGE = 100_000           # exchanges: an index this large is counted at most every COUNT_FRESH_FOR
COUNT_FRESH_FOR = 10.0    # seconds (count(*) scans: 52 ms at 1,000,000 in PostgreSQL, a balancer
                          # may ask /api/health every second of every server)


def _not_found(message: str) -> HttpError:
    return HttpError("404 Not Found", message)


def _params(environ: dict[str, Any]) -> dict[str, list[str]]:
    return parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True, max_num_fields=100)


def _no_params(params: dict[str, list[str]], allowed: tuple[str, ...] = ()) -> None:
    for name in params:
        if name not in allowed:
            raise ParamError(name, "unknown parameter")


def _flag(params: dict[str, list[str]], name: str) -> bool:
    values = params.get(name)
    if not values:
        return False
    if len(values) > 1 or values[0].lower() not in ("true", "false", "1", "0"):
        raise ParamError(name, "must be true or false")
    return values[0].lower() in ("true", "1")


class Api:
    def __init__(self, log_dir: BodyStore, index: IndexStore, health: Callable[[], dict[str, Any]] | None = None) -> None:
        self.log_dir = log_dir
        self.index = index
        self.health_extra = health or (lambda: {})
        self._count = (0, float("-inf"))  # the last count of the exchanges, and when (monotonic)
        self.pool = ThreadPool(2)

    def handlers(self) -> dict[str, Callable[..., Any]]:
        """The route table's handler names (routes.py) this serves."""
        return {"list_requests": self.list, "get_request": self.one, "delete_request": self.delete,
                "get_request_file": lambda env, sr, exchange_id: self.raw(env, sr, exchange_id, "request"),
                "get_response_file": lambda env, sr, exchange_id: self.raw(env, sr, exchange_id, "response"),
                "get_exchange": self.exchange, "get_stats": self.stats, "get_health": self.health,
                "get_openapi": self.openapi, "get_request_har": self.har_one, "get_har": self.har_many}

    # -- endpoints ------------------------------------------------------------------------

    def openapi(self, environ: dict[str, Any], start_response: Callable) -> list[bytes]:
        _no_params(_params(environ))
        body = _openapi_bytes()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    def health(self, environ: dict[str, Any], start_response: Callable) -> list[bytes]:
        _no_params(_params(environ))
        return json_response(start_response, "200 OK", {
            "status": "ok", "version": __version__, "time": time.time(), "log_dir": self.log_dir.path,
            "exchanges": self._exchanges(), "index_errors": self.index.errors, **self.health_extra()})

    def _exchanges(self) -> int:
        """The exchanges indexed: counted afresh, or for a large index at most every
        COUNT_FRESH_FOR seconds."""
        count, at = self._count
        if count < LARGE or time.monotonic() - at > COUNT_FRESH_FOR:
            count = self.index.read(lambda c: c.execute("SELECT count(*) FROM exchanges").fetchone()[0])
            self._count = (count, time.monotonic())
        return count

    def list(self, environ: dict[str, Any], start_response: Callable) -> list[bytes]:
        q = query.parse_list_query(_params(environ))
        return json_response(start_response, "200 OK", self.index.read(listing.list_rows, q),
                             [("Cache-Control", "no-store")])

    def stats(self, environ: dict[str, Any], start_response: Callable) -> list[bytes]:
        where = query.parse_filters(_params(environ), set())
        return json_response(start_response, "200 OK", self.index.read(stats.compute, where),
                             [("Cache-Control", "no-store")])

    def _document(self, exchange_id: str) -> dict[str, Any]:
        document = self.log_dir.read_metadata(exchange_id)
        if document is None:
            raise _not_found(f"no exchange {exchange_id.lower()}")
        return document

    def _row(self, exchange_id: str, document: dict[str, Any]) -> dict[str, Any]:
        """Its index row, or until the index has it, the row its file gives (priced alike)."""
        return self.index.read(listing.get_row, exchange_id) or row_from_document(document, pricing=self.index.pricing)

    def one(self, environ: dict[str, Any], start_response: Callable, exchange_id: str) -> list[bytes]:
        _no_params(_params(environ))
        exchange_id = exchange_id.lower()
        document = self._document(exchange_id)
        row = self._row(exchange_id, document)
        files = {kind: {"name": part.get("file"), "bytes": part.get("bytes"), "complete": part.get("complete"),
                        "url": f"/api/requests/{exchange_id}/{kind}"}
                 for kind, part in ExchangeRecord(document).parts.items() if kind in ("request", "response")}
        return json_response(start_response, "200 OK",
                             {**to_api(row), "metadata": document, "files": files},
                             [("Cache-Control", "no-store")])

    def delete(self, environ: dict[str, Any], start_response: Callable, exchange_id: str) -> list[bytes]:
        params = _params(environ)
        _no_params(params, ("force",))
        force = _flag(params, "force")
        exchange_id = exchange_id.lower()
        document = self._document(exchange_id)
        if ExchangeRecord(document).state == "in_flight" and not force:
            raise HttpError("409 Conflict", "the exchange is still in flight; add ?force=true to delete it anyway")
        freed = self.pool.apply(self.log_dir.delete_exchange, (document,))
        self.index.flush(5)
        self.index.delete_rows([exchange_id])  # its tombstone tells the live feeds
        return json_response(start_response, "200 OK", {"id": exchange_id, "deleted": True,
                                                        "freed_bytes": freed})

    def exchange(self, environ: dict[str, Any], start_response: Callable, exchange_id: str) -> list[bytes]:
        _no_params(_params(environ))
        document = self._document(exchange_id)
        body = self.pool.apply(_view_bytes, (self.log_dir, document))  # megabytes of JSON: off the loop
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                                  ("Cache-Control", "no-store")])
        return [body]

    def har_one(self, environ: dict[str, Any], start_response: Callable, exchange_id: str) -> Iterator[bytes]:
        _no_params(_params(environ))
        exchange_id = exchange_id.lower()
        document = self._document(exchange_id)
        row = to_api(self._row(exchange_id, document))
        entry = self.pool.apply(har.entry_bytes, (self.log_dir, row, document))
        start_response("200 OK", har.headers(f"orproxy-{exchange_id[:8]}.har"))
        return har.document(iter([entry]))

    def har_many(self, environ: dict[str, Any], start_response: Callable) -> Iterator[bytes]:
        params = _params(environ)
        where = query.parse_filters(params, {har.LIMIT_PARAM})
        limit = har.parse_limit(params)
        start_response("200 OK", har.headers(time.strftime("orproxy-%Y-%m-%d_%H-%M-%S.har")))
        return har.export(self.index, self.log_dir, lambda fn, *args: self.pool.apply(fn, args), where, limit)

    def raw(self, environ: dict[str, Any], start_response: Callable, exchange_id: str,
            kind: str) -> Iterator[bytes] | list[bytes]:
        params = _params(environ)
        _no_params(params, ("follow",))
        follow = _flag(params, "follow")
        record = ExchangeRecord(self._document(exchange_id))
        f = self.log_dir.open_part(record, kind)
        if f is None:
            raise _not_found(f"exchange {exchange_id.lower()} has no {kind} file")
        name = record.part(kind)["file"]
        headers = [("Content-Type", "application/octet-stream"), ("Cache-Control", "no-store"),
                   ("Content-Disposition", f'inline; filename="{name}"')]
        if follow and not record.ended(kind):
            f.close()
            start_response("200 OK", headers)
            return PartFollower(self.log_dir, exchange_id.lower(), kind).blocks()
        size = f.seek(0, os.SEEK_END)
        f.seek(0)
        start_response("200 OK", [*headers, ("Content-Length", str(size))])
        return _read_file(f, size)


@functools.cache
def _openapi_bytes() -> bytes:
    return json.dumps(openapi.document(openapi_paths()), indent=1).encode()


def _view_bytes(log_dir: BodyStore, document: dict[str, Any]) -> bytes:
    record = ExchangeRecord(document)
    request = log_dir.read_part(record, "request", VIEW_LIMIT)
    response = log_dir.read_part(record, "response", VIEW_LIMIT)
    view = exchange_view(document.get("id"), request, response, record.request_path(request.head if request else None))
    return json.dumps(view, ensure_ascii=False, separators=(",", ":")).encode()


def _read_file(f: Any, size: int) -> Iterator[bytes]:
    """`size` bytes of an open file (the size when the request came: the file may grow)."""
    with f:
        while size > 0:
            block = f.read(min(BLOCK, size))
            if not block:
                return
            size -= len(block)
            yield block
