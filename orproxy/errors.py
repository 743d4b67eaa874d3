"""The proxy's own error responses: OpenAI-style JSON with the exchange's request id.

    {"error": {"message": "...", "type": "proxy_error", "code": "no_route", "request_id": "..."}}
"""
from __future__ import annotations

import json

STATUS = {
    "bad_request": "400 Bad Request",
    "no_route": "404 Not Found",
    "upstream_unreachable": "502 Bad Gateway",
    "upstream_timeout": "504 Gateway Timeout",
}


def error_response(code: str, message: str, request_id: str) -> tuple[str, list[tuple[str, str]], bytes]:
    """Status line, headers and body of one proxy error."""
    body = json.dumps({"error": {"message": message, "type": "proxy_error", "code": code,
                                 "request_id": request_id}}).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
               ("X-Request-Id", request_id)]
    return STATUS[code], headers, body
