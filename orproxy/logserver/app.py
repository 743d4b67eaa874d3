"""The logging server's WSGI app: builds the parts (the log dir, ingest and deriving, the
index that follows ingest's rewrites, retention, the REST API, the live feed and tail,
the UI's files) and dispatches every request from the one route table (web/routes.py)."""
from __future__ import annotations

import atexit
import json
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

import gevent
from gevent.event import Event

from orproxy import logwire
from orproxy.config import ModelPrice
from orproxy.hosting.framing import HeadLimits
from orproxy.hosting.incoming import local_address, raw_path
from orproxy.http1 import head
from orproxy.logserver.live.feed import LiveFeed
from orproxy.logserver.live.tail import Tail
from orproxy.logserver.live.transports import LiveTransport
from orproxy.logserver.llm.pricing import Pricing
from orproxy.logserver.metrics.counting import ExchangeMetrics
from orproxy.logserver.store.appends import Appends
from orproxy.logserver.store.batching import BatchingRequestHandler
from orproxy.logserver.store.deriving import Deriver
from orproxy.logserver.store.ingest import BadInput, Ingest
from orproxy.logserver.store.linking import Linker
from orproxy.logserver.store.reindex import reindex
from orproxy.logserver.store.relinking import Relinker
from orproxy.logserver.store.retention import Retention
from orproxy.logserver.store.stores import StoreUnavailable, open_stores
from orproxy.logserver.store.sweeper import STALE_AFTER, Sweeper
from orproxy.logserver.web.api import Api
from orproxy.logserver.web.conversations import Diffs
from orproxy.logserver.web.guard import Guard
from orproxy.logserver.web.query import ParamError
from orproxy.logserver.web.replay import Replay
from orproxy.logserver.web.replies import HttpError, error_response, json_response
from orproxy.logserver.web.routes import ROUTES, match, not_found
from orproxy.logserver.web.static import StaticFiles


class LogServerApp:
    # Its connections batch the metadata rewrites of pipelined PUTs (ingest.Ingest._update);
    # hosting.server.serve and orproxy's gunicorn worker serve it with this handler.
    handler_class = BatchingRequestHandler
    limits = HeadLimits()

    def __init__(self, log_dir: str, max_age: float | None = None, max_bytes: int | None = None,
                 retention_interval: float = 60.0, stale_after: float = STALE_AFTER,
                 allowed_hosts: Iterable[str] = (), token: str | None = None,
                 prices: tuple[ModelPrice, ...] = (),
                 replay_via: Iterable[str] = (), index_url: str | None = None,
                 store_url: str | None = None) -> None:
        self.guard = Guard(allowed_hosts, token)
        self.log_dir, self.index = open_stores(store_url, log_dir, index_url, Pricing(prices))
        self.deriver = Deriver(self.log_dir, Linker(self.index))
        self.ingest = Ingest(self.log_dir, self.deriver)
        self.deriver.on_unlinked = Relinker(self.ingest, self.deriver.linker).watch
        self.ingest.subscribe(lambda record, events: self.index.put(record.document,
                                                                     self.deriver.take_text(record.id)))
        self.metrics = ExchangeMetrics(
            os.path.join(self.log_dir.ids, "metrics"), deriving=True,
            errors=lambda: (self.index.errors, self.deriver.errors),
            queues=lambda: (self.index.queued, self.ingest.deriving), pricing=self.index.pricing)
        self.ingest.mark_in_rewrite(self.metrics.mark)  # each exchange counted once (counting.py)
        self.ingest.subscribe(self.metrics.count)
        self.appends = Appends(self.ingest)
        self.retention = Retention(self.log_dir, self.index, max_age, max_bytes, retention_interval)
        self.sweeper = Sweeper(self.ingest, self.index, stale_after)
        self.stopping = Event()  # set when the server stops: the endless streams end
        self.feed = LiveFeed(self.index, self.stopping)
        live = LiveTransport(self.feed)
        static = StaticFiles()
        self.api = Api(self.log_dir, self.index, self._health)
        self.handlers: dict[str, Callable[..., Any]] = {
            "index": lambda environ, start_response: static(environ, start_response, "index.html"),
            "static": static,
            "ingest": self._ingest,
            "ingest_batch": self._ingest_batch,
            **self.api.handlers(),
            **Diffs(self.log_dir, self.api.pool).handlers(),
            "live_websocket": live.websocket,
            "live_events": live.events,
            "tail_response": Tail(self.log_dir, self.stopping),
            "get_metrics": self.metrics.serve,
            "replay_request": Replay(self.log_dir, replay_via),
        }
        unbound = {name for route in ROUTES for name in route.methods.values()} - set(self.handlers)
        assert not unbound, f"routes without a handler: {unbound}"
        self.rebuilding = False
        atexit.register(self.close)  # under gunicorn too: what is queued reaches the index
        if self.index.recreated and self.log_dir.document_keys():
            self.rebuilding = True
            gevent.spawn(self._rebuild)  # then retention: it prunes what the index lists
        else:
            self.retention.start()
            self.sweeper.start()

    def _rebuild(self) -> None:
        """A new (or schema-changed) index over existing files: fill it in the background."""
        try:
            result = reindex(self.log_dir, self.index, lambda fn, *a: self.deriver.pool.apply(fn, a))
            print(f"orlogserver: indexed {result.indexed} exchanges from {self.log_dir.path} "
                  f"in {result.seconds:.1f}s", flush=True)
        except Exception as e:
            print(f"orlogserver: rebuilding the index failed: {e!r}", file=sys.stderr, flush=True)
        finally:
            self.rebuilding = False
            self.retention.start()
            self.sweeper.start()

    def close(self) -> None:
        """Write what the index queue still holds (up to 5 s) and stop the background work
        and its threads (at exit; and tests that serve the app in their own process)."""
        try:
            self.retention.close()
            self.sweeper.close()
            self.index.close()
            self.metrics.close()
            for pool in (self.api.pool, self.deriver.pool):
                pool.kill()
            self.appends.close()
            self.log_dir.close()
        except Exception as e:  # at exit: say it, do not raise
            print(f"orlogserver: closing the index: {e!r}", file=sys.stderr, flush=True)

    def malformed_request(self, message: str, status: str = "400 Bad Request") -> bytes:
        """The whole answer to a request refused before it reached the app: the API's JSON error."""
        body = json.dumps({"error": {"message": message}}).encode()
        return head(f"HTTP/1.1 {status}", [("Content-Type", "application/json"),
                                                 ("Content-Length", str(len(body))), ("Connection", "close")]) + body

    def drain(self, timeout: float) -> None:
        """Nothing to finish once the last request is served: close() writes the index at exit."""

    def begin_shutdown(self) -> None:
        """The server is stopping: end the UI's endless streams (live feeds and tails) now,
        so that it need not wait for browsers that would stay connected for ever (they
        reconnect to the next server)."""
        self.stopping.set()
        self.feed.close()

    def _health(self) -> dict[str, Any]:
        return {"rebuilding": self.rebuilding, "derive_errors": self.deriver.errors,
                "ingest": {"batch": logwire.PROTOCOL, "path": logwire.PATH},
                "retention": {"max_age_s": self.retention.max_age, "max_bytes": self.retention.max_bytes}}

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Any:
        path = raw_path(environ)  # undecoded: /..%2F..%2Fetc/request is a bad id, not a path
        refused = self.guard.check(environ, start_response, path, local_address(environ))
        if refused is not None:
            return refused
        found = match(path)
        if found is None or not found[0].batched:
            batch = environ.get("orproxy.batch")
            if batch is not None and batch.work:
                batch.run()  # a read pipelined behind uploads sees what they wrote
        if found is None:
            return error_response(start_response, "404 Not Found", not_found(path))
        route, values = found
        try:
            route.check(values)
            handler = self.handlers[route.handler(environ["REQUEST_METHOD"])]
            return handler(environ, start_response, *values)
        except ParamError as e:
            return error_response(start_response, "400 Bad Request", str(e), parameter=e.parameter)
        except HttpError as e:
            return error_response(start_response, e.status, str(e), e.headers, e.parameter)

    def _ingest_batch(self, environ: dict[str, Any], start_response: Callable) -> list[bytes]:
        """`POST /ingest`: a batch of appends and metadata from orproxy (logwire.py)."""
        ours = [(logwire.PROTOCOL_HEADER, logwire.PROTOCOL)]
        length = environ.get("CONTENT_LENGTH") or ""
        if not length.isdigit():
            return error_response(start_response, "411 Length Required", "a batch needs a Content-Length", ours)
        if int(length) > logwire.MAX_BATCH:
            return error_response(start_response, "413 Content Too Large",
                                  f"a batch is at most {logwire.MAX_BATCH} bytes", ours)
        body = environ["wsgi.input"].read(int(length))
        try:
            acks = self.appends.take(body)
        except logwire.BadBatch as e:
            return error_response(start_response, "400 Bad Request", f"malformed batch: {e}", ours)
        except StoreUnavailable as e:  # nothing acknowledged: the proxy sends it again
            return error_response(start_response, "503 Service Unavailable", str(e), ours)
        return json_response(start_response, "201 Created", {"acks": acks},
                             [*ours, (logwire.BATCH_HEADER, str(self.ingest.log_dir.batch_bytes))])

    def _ingest(self, environ: dict[str, Any], start_response: Callable, exchange_id: str,
                kind: str) -> list[bytes]:
        try:
            if kind == "metadata":
                self.ingest.store_metadata(exchange_id, environ)
                return json_response(start_response, "201 Created", {"id": exchange_id.lower()})
            name = self.ingest.store_part(exchange_id, kind, environ)
        except BadInput as e:
            return error_response(start_response, "400 Bad Request", str(e))
        except StoreUnavailable as e:
            return error_response(start_response, "503 Service Unavailable", str(e))
        return json_response(start_response, "201 Created", {"id": exchange_id.lower(), "file": name})
