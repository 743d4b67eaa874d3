"""WSGI replies of the logging server: JSON documents and JSON errors, one shape for all.

Errors are `{"error": {"message": "...", "parameter": "status"}}`; `parameter` names the
query parameter (or path part) at fault, for a 400. A handler raises `HttpError` (or
query.ParamError, a 400) and the dispatch answers it.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from orproxy import jsoncodec

Headers = list[tuple[str, str]]


class HttpError(Exception):
    """An error answer, raised where it is found and answered by app.py's dispatch."""

    def __init__(self, status: str, message: str, parameter: str | None = None,
                 headers: Headers | None = None) -> None:
        super().__init__(message)
        self.status, self.parameter, self.headers = status, parameter, headers


def json_response(start_response: Callable, status: str, document: Any,
                  headers: Headers | None = None) -> list[bytes]:
    body = jsoncodec.dumps(document)
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body))), *(headers or [])])
    return [body]


def error_response(start_response: Callable, status: str, message: str,
                   headers: Headers | None = None, parameter: str | None = None) -> list[bytes]:
    error: dict[str, Any] = {"message": message}
    if parameter is not None:
        error["parameter"] = parameter
    return json_response(start_response, status, {"error": error}, headers)
