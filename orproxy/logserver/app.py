"""The logging server's WSGI app: routes ingest PUTs, and answers everything else."""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from orproxy.logserver.blobs import KINDS, UUID_RE, LogDir
from orproxy.logserver.ingest import BadInput, Ingest


def json_response(start_response: Callable, status: str, document: Any,
                  headers: list[tuple[str, str]] | None = None) -> list[bytes]:
    body = json.dumps(document).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body))), *(headers or [])])
    return [body]


def error_response(start_response: Callable, status: str, message: str,
                   headers: list[tuple[str, str]] | None = None) -> list[bytes]:
    return json_response(start_response, status, {"error": {"message": message}}, headers)


class LogServerApp:
    def __init__(self, log_dir: str) -> None:
        self.log_dir = LogDir(log_dir)
        self.ingest = Ingest(self.log_dir)

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Any:
        path = environ.get("PATH_INFO", "/")
        parts = path.strip("/").split("/")
        if len(parts) == 2 and not parts[0] == "api":
            return self._ingest(environ, start_response, *parts)
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
            return [f"orlogserver: logs in {self.log_dir.path}\n".encode()]
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
