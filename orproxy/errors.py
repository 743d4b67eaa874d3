"""The proxy's error codes, and the one place where a failure becomes one.

Before the response head is sent, a failure is answered with OpenAI-style JSON carrying
the exchange's request id (CONTRACT.md, "Proxying"):

    {"error": {"message": "...", "type": "proxy_error", "code": "no_route", "request_id": "..."}}

After it, the client's connection is cut and the code is recorded in the exchange's
metadata (`error`). Failures come from one exception family, requests' (which orproxy's
own transport raises too, so requests' HTTPAdapter can stand in for it), plus urllib3's
(raised from an HTTPAdapter response's reads), OSError, and ClientBodyError.
"""
from __future__ import annotations

import json

import requests
import urllib3

# The codes answered with a JSON error, and their statuses.
STATUS = {
    "bad_request": "400 Bad Request",
    "no_route": "404 Not Found",
    "upstream_unreachable": "502 Bad Gateway",
    "upstream_timeout": "504 Gateway Timeout",
    # A head refused before anything is forwarded (hosting/framing.py)
    "request_timeout": "408 Request Timeout",
    "headers_too_large": "431 Request Header Fields Too Large",
    "unsupported_transfer_coding": "501 Not Implemented",
}
BY_STATUS = {status: code for code, status in STATUS.items()}
# Every code an exchange's metadata may record: the above, and those that happen after the
# response head went out (or on a WebSocket session).
CODES = (*STATUS, "upstream_broken", "client_disconnected", "idle_timeout")


class ClientBodyError(Exception):
    """The client's request body ended early or was malformed (not an upstream failure)."""


def error_response(code: str, message: str, request_id: str) -> tuple[str, list[tuple[str, str]], bytes]:
    """Status line, headers and body of one proxy error."""
    body = json.dumps({"error": {"message": message, "type": "proxy_error", "code": code,
                                 "request_id": request_id}}).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
               ("X-Request-Id", request_id)]
    return STATUS[code], headers, body


def before_head(error: BaseException) -> tuple[str, str] | None:
    """The code and message for a failure before any response head: the client gets them as
    a JSON error. None for anything else (a bug, or the greenlet killed): re-raise it."""
    if isinstance(error, ClientBodyError):
        return "bad_request", str(error)
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return "upstream_unreachable", f"connecting to the upstream timed out: {error}"
    if isinstance(error, (requests.exceptions.ReadTimeout, urllib3.exceptions.ReadTimeoutError)):
        return "upstream_timeout", f"the upstream did not answer in time: {error}"
    if isinstance(error, (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError)):
        return "upstream_unreachable", f"the upstream could not be reached: {error}"
    return None


def in_body(error: BaseException) -> str | None:
    """The code for a failure while the response body streams (the client's connection is
    then cut); None for anything else."""
    if isinstance(error, (requests.exceptions.ReadTimeout, urllib3.exceptions.ReadTimeoutError)):
        return "upstream_timeout"
    if isinstance(error, (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError)):
        return "upstream_broken"
    return None


# How a WebSocket tunnel ended (websocket/tunnel.py) -> the code its metadata records.
TUNNEL_ENDS = {"client failed": "client_disconnected", "upstream failed": "upstream_broken",
               "idle timeout": "idle_timeout"}
