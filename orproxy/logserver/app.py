"""The logging server's WSGI app: routes ingest PUTs and the API, and wires the parts
together (files, ingest and deriving, the index that follows ingest's rewrites, retention)."""
from __future__ import annotations

import atexit
import sys
from collections.abc import Callable
from typing import Any

import gevent

from orproxy.logserver.store.batching import BatchingRequestHandler
from orproxy.logserver.store.deriving import Deriver
from orproxy.logserver.store.index import Index
from orproxy.logserver.store.ingest import BadInput, Ingest
from orproxy.logserver.store.logdir import KINDS, UUID_RE, LogDir
from orproxy.logserver.store.reindex import reindex
from orproxy.logserver.store.retention import Retention
from orproxy.logserver.ui import Ui
from orproxy.logserver.web.api import Api
from orproxy.logserver.web.replies import error_response, json_response

__all__ = ["LogServerApp", "json_response", "error_response"]


class LogServerApp:
    # Its connections batch the metadata rewrites of pipelined PUTs (ingest.Ingest._update);
    # serving.serve and orproxy.worker serve it with this handler.
    handler_class = BatchingRequestHandler

    def __init__(self, log_dir: str, max_age: float | None = None, max_bytes: int | None = None,
                 retention_interval: float = 60.0) -> None:
        self.log_dir = LogDir(log_dir)
        self.deriver = Deriver(self.log_dir)
        self.ingest = Ingest(self.log_dir, self.deriver)
        self.index = Index(self.log_dir.path)
        self.ingest.subscribe(lambda record, events: self.index.put(record.document))
        self.retention = Retention(self.log_dir, self.index, max_age, max_bytes, retention_interval)
        self.api = Api(self.log_dir, self.index, self._health)
        self.ui = Ui(self.log_dir, self.index)
        self.rebuilding = False
        atexit.register(self.close)  # under gunicorn too: what is queued reaches the index
        if self.index.recreated and self.log_dir.metadata_files():
            self.rebuilding = True
            gevent.spawn(self._rebuild)  # then retention: it prunes what the index lists
        else:
            self.retention.start()

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

    def close(self) -> None:
        """Write what the index queue still holds (up to 5 s) and stop the background work."""
        try:
            self.retention.close()
            self.index.close()
        except Exception as e:  # at exit: say it, do not raise
            print(f"orlogserver: closing the index: {e!r}", file=sys.stderr, flush=True)

    def begin_shutdown(self) -> None:
        """The server is stopping: end the UI's endless streams so it need not wait for them."""
        self.ui.shutdown()

    def _health(self) -> dict[str, Any]:
        return {"rebuilding": self.rebuilding, "derive_errors": self.deriver.errors,
                "retention": {"max_age_s": self.retention.max_age, "max_bytes": self.retention.max_bytes}}

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Any:
        path = environ.get("PATH_INFO", "/")
        parts = path.strip("/").split("/")
        ui = self.ui.route(path)
        if ui is None and parts[0] != "api" and len(parts) == 2:
            return self._ingest(environ, start_response, *parts)
        batch = environ.get("orproxy.batch")
        if batch is not None and batch.work:
            batch.run()  # a read pipelined behind uploads sees what they wrote
        if ui is not None:
            return ui(environ, start_response)
        if parts[0] == "api":
            return self.api(environ, start_response)
        return error_response(start_response, "404 Not Found", f"nothing at {path}")

    def _ingest(self, environ: dict[str, Any], start_response: Callable, exchange_id: str,
                kind: str) -> list[bytes]:
        if not UUID_RE.match(exchange_id):
            return error_response(start_response, "400 Bad Request", "the id must be a UUID")
        if kind not in KINDS:
            return error_response(start_response, "400 Bad Request",
                                  f"the kind must be one of {', '.join(KINDS)}")
        if environ["REQUEST_METHOD"] != "PUT":
            return error_response(start_response, "405 Method Not Allowed", "use PUT",
                                  [("Allow", "PUT")])
        try:
            if kind == "metadata":
                self.ingest.store_metadata(exchange_id, environ)
                return json_response(start_response, "201 Created", {"id": exchange_id.lower()})
            name = self.ingest.store_part(exchange_id, kind, environ)
        except BadInput as e:
            return error_response(start_response, "400 Bad Request", str(e))
        return json_response(start_response, "201 Created", {"id": exchange_id.lower(), "file": name})
