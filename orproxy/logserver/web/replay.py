"""`POST /api/requests/{id}/replay`: send a logged request again through the proxy URL it
was first sent to, with the caller's own key, and name the new exchange.

The answer comes as soon as the proxy's response head does (it carries the new exchange's
id, `X-Request-Id`); the rest of the response is read in the background, so a streamed
answer completes and is logged while the UI follows the new exchange's live tail. What is
sent is replay_plan.py's; the new exchange records what it replays through the
`X-Orproxy-Replay-Of` header the proxy logs with it (httpfile.py, its `replay_of`).

The caller's key travels in the POST's JSON (`key`, or `headers`), never in its
`Authorization`, which the logging server's own `--token` uses. It is never written: not
to a file, a log line or the index, and no message carries it (scrub). The proxy masks it
in its own log as it masks every key.

Only a proxy on this machine (a loopback host) is replayed through, or an origin given
with `--replay-via`: the logged URL's host is the `Host` the client sent to the proxy, so
an exchange with a forged one must not send the caller's key elsewhere (SSRF).
"""
from __future__ import annotations

import http.client
import os
import socket
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import gevent

from orproxy import jsoncodec
from orproxy.logserver.llm.httpfile import MAX_HEAD, Head, parse_head
from orproxy.logserver.store.stores import BodyStore
from orproxy.logserver.store.record import ExchangeRecord
from orproxy.logserver.web.guard import is_loopback
from orproxy.logserver.web.openapi import ERRORS, ID, json_content, ref
from orproxy.logserver.web.query import ParamError
from orproxy.logserver.web.replay_plan import Ask, BadAsk, Plan, RefusedReplay, parse_ask, plan
from orproxy.logserver.web.replies import HttpError, json_response

MAX_ASK = 64 * 1024 * 1024       # the POST's JSON: a whole edited body fits
MAX_LOGGED_BODY = 64 * 1024 * 1024
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 600.0             # as the proxy's own upstream read_timeout: a slow first token
ERROR_BODY = 64 * 1024
BLOCK = 65536


class Replay:
    """The handler of `POST /api/requests/{id}/replay` (app.py binds it by name)."""

    def __init__(self, log_dir: BodyStore, replay_via: Iterable[str] = ()) -> None:
        """`replay_via`: proxy origins beyond loopback to replay through (parse_origin's)."""
        self.log_dir = log_dir
        self.replay_via = {parse_origin(origin) for origin in replay_via}

    def __call__(self, environ: dict[str, Any], start_response: Callable, exchange_id: str) -> list[bytes]:
        unknown = next(iter(parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)), None)
        if unknown is not None:
            raise ParamError(unknown[:40], "unknown parameter: the replay takes its edits as JSON")
        try:
            ask = parse_ask(_json_body(environ))
        except BadAsk as e:
            raise HttpError("400 Bad Request", str(e)) from None
        exchange_id = exchange_id.lower()
        document = self.log_dir.read_metadata(exchange_id)
        if document is None:
            raise HttpError("404 Not Found", f"no exchange {exchange_id}")
        pool = gevent.get_hub().threadpool  # a large body is read, decoded and parsed off the loop
        try:
            head, body = pool.apply(_logged_request, (self.log_dir, ExchangeRecord(document)))
            replay = pool.apply(plan, (head, body, exchange_id, ask, self._check_origin))
        except RefusedReplay as e:
            raise HttpError("409 Conflict", f"exchange {exchange_id} cannot be replayed: {e}") from None
        return self._send(start_response, exchange_id, replay, ask)

    def _check_origin(self, host: str, origin: str) -> None:
        """Refuse a proxy beyond loopback not given with --replay-via (before the key is asked for)."""
        if not (is_loopback(host) or origin.lower() in self.replay_via):
            raise RefusedReplay(f"it was sent to {origin}, not to a proxy on this machine; start "
                                f"orlogserver with --replay-via {origin} to replay through it")

    def _send(self, start_response: Callable, exchange_id: str, replay: Plan, ask: Ask) -> list[bytes]:
        connection_class = http.client.HTTPSConnection if replay.scheme == "https" else http.client.HTTPConnection
        conn = connection_class(replay.host, replay.port, timeout=CONNECT_TIMEOUT)
        try:
            conn.connect()
            conn.sock.settimeout(READ_TIMEOUT)
            conn.putrequest(replay.method, replay.target, skip_host=True, skip_accept_encoding=True)
            for name, value in replay.headers:
                conn.putheader(name, value)
            conn.endheaders(replay.body)
            response = conn.getresponse()
        except (OSError, http.client.HTTPException, ValueError) as e:
            conn.close()
            raise HttpError("502 Bad Gateway", f"the proxy at {replay.origin} {_failure(e, ask)}") from None
        new_id = response.getheader("X-Request-Id")
        if not new_id:
            conn.close()
            raise HttpError("502 Bad Gateway", f"{replay.origin} answered {response.status} without an "
                                               "X-Request-Id: it is not orproxy")
        new_id = new_id.strip().lower()[:64]
        answer = {"id": new_id, "replay_of": exchange_id, "url": f"/api/requests/{new_id}",
                  "status": response.status, "content_type": response.getheader("Content-Type"),
                  "sent_to": replay.shown_url, "sent_without": replay.sent_without}
        proxy_error = _proxy_error(response)
        gevent.spawn(_drain, conn, response)
        if proxy_error is not None:
            code, message = proxy_error
            return json_response(start_response, "502 Bad Gateway", {
                "error": {"message": scrub(f"the proxy answered {response.status} {code}: {message}", ask),
                          "code": code}, **answer})
        return json_response(start_response, "201 Created", answer,
                             [("Location", answer["url"]), ("Cache-Control", "no-store")])


def parse_origin(text: str) -> str:
    """`scheme://host:port` of a proxy origin given with --replay-via; ValueError if it is
    not an http(s) origin (a path, a user or a query are not part of one)."""
    try:
        url = urlsplit(text.strip().rstrip("/"))
        port = url.port or (443 if url.scheme == "https" else 80)
    except ValueError:
        url, port = None, 0
    if url is None or url.scheme not in ("http", "https") or not url.hostname or url.path \
            or url.query or "@" in url.netloc:
        raise ValueError(f"{text!r} is not an http(s) origin such as http://proxy.lan:5601")
    host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
    return f"{url.scheme}://{host}:{port}"


def _json_body(environ: dict[str, Any]) -> Any:
    """The POST's JSON document ({} when empty). Only `application/json` is taken: a
    cross-site form can send `text/plain` without asking first (guard.py refuses those
    by their Origin already; this is the second lock)."""
    content_type = environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
    if content_type != "application/json":
        raise HttpError("415 Unsupported Media Type", "send the replay's edits as JSON, with "
                        "Content-Type: application/json ({} replays the request as logged)")
    length = environ.get("CONTENT_LENGTH") or ""
    if length and (not length.isdigit() or int(length) > MAX_ASK):
        raise HttpError("413 Content Too Large", f"the replay's JSON is limited to {MAX_ASK} bytes")
    data = environ["wsgi.input"].read(int(length)) if length else environ["wsgi.input"].read(MAX_ASK + 1)
    if len(data) > MAX_ASK:
        raise HttpError("413 Content Too Large", f"the replay's JSON is limited to {MAX_ASK} bytes")
    if not data.strip():
        return {}
    try:
        return jsoncodec.loads(data)
    except ValueError as e:  # the parsers' messages give a position, never the text
        raise HttpError("400 Bad Request", f"the replay's body is not JSON: {e}") from None


def _logged_request(log_dir: BodyStore, record: ExchangeRecord) -> tuple[Head, bytes]:
    """The logged request's head and whole body, as logged; RefusedReplay if the log does
    not hold it whole."""
    part = record.part("request")
    if not part:
        raise RefusedReplay("no request was logged")
    if not record.ended("request"):
        raise RefusedReplay("its request is still arriving; replay it once it has")
    if not part.get("complete"):
        raise RefusedReplay("its logged request broke off")
    f = log_dir.open_part(record, "request")
    if f is None:
        raise RefusedReplay("its request file is gone")
    with f:
        data = f.read(MAX_HEAD + MAX_LOGGED_BODY + 1)
        size = f.seek(0, os.SEEK_END)
    head = parse_head(data[:MAX_HEAD])
    if head is None:
        raise RefusedReplay("its request file holds no HTTP head")
    body = data[head.size:]
    if size - head.size > MAX_LOGGED_BODY:
        raise RefusedReplay(f"its body is over {MAX_LOGGED_BODY} bytes")
    forwarded = record.proxy.get("request_bytes")
    if isinstance(forwarded, int) and forwarded != len(body):  # the log kept less (a truncation marker)
        raise RefusedReplay(f"the log holds {len(body)} bytes of its {forwarded}-byte body")
    return head, body


def _drain(conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
    """Read the rest of the answer (in the background): the proxy then completes and logs
    the exchange, as it does for a client that reads it all."""
    try:
        while response.read1(BLOCK):
            pass
    except (OSError, http.client.HTTPException, ValueError):
        pass  # the proxy logs how it ended
    finally:
        conn.close()


def _proxy_error(response: http.client.HTTPResponse) -> tuple[str, str] | None:
    """(code, message) if the proxy answered an error of its own (`proxy_error`: the
    upstream unreachable, a timeout, no route) rather than relaying the upstream's."""
    length = response.getheader("Content-Length") or ""
    if response.status < 400 or "json" not in (response.getheader("Content-Type") or "") \
            or not length.isdigit() or int(length) > ERROR_BODY:
        return None
    try:
        error = jsoncodec.loads(response.read(int(length))).get("error")
    except (OSError, http.client.HTTPException, ValueError, AttributeError):
        return None
    if not isinstance(error, dict) or error.get("type") != "proxy_error":
        return None
    return str(error.get("code"))[:60], str(error.get("message"))[:500]


def _failure(error: Exception, ask: Ask) -> str:
    """What went wrong, to follow "the proxy at <origin> ": never with a value sent."""
    if isinstance(error, (socket.timeout, TimeoutError)):
        return "did not answer in time"
    if isinstance(error, ConnectionRefusedError):
        return "is unreachable: connection refused"
    if isinstance(error, OSError):
        return scrub(f"is unreachable: {error.strerror or type(error).__name__}", ask)
    if isinstance(error, ValueError):  # http.client refusing a header or target: its text quotes them
        return "could not be sent the request"
    return scrub(f"broke off: {type(error).__name__}: {error}", ask)


def scrub(text: str, ask: Ask) -> str:
    """`text` with every value the caller sent masked (a message quoting what it received)."""
    for secret in ask.secrets:
        if len(secret) >= 4:
            text = text.replace(secret, "****")
    return text


# -- its OpenAPI operation (routes.py) ----------------------------------------------------

_ANSWER_FIELDS = {
    "id": {"type": "string", "format": "uuid", "description": "The new exchange (the X-Request-Id the proxy gave)."},
    "replay_of": {"type": "string", "format": "uuid", "description": "The exchange replayed."},
    "url": {"type": "string", "description": "The new exchange in this API (also the Location)."},
    "status": {"type": "integer", "description": "The status of the proxy's answer."},
    "content_type": {"type": ["string", "null"]},
    "sent_to": {"type": "string", "description": "The URL it was sent to, as logged (keys masked)."},
    "sent_without": {"type": "array", "items": {"type": "string"},
                     "description": "Headers masked in the log and sent without a value: give `key`."},
}
_ERROR = {"type": "object", "additionalProperties": False, "required": ["message"],
          "properties": {"message": {"type": "string"}, "parameter": {"type": "string"},
                         "code": {"type": "string", "description": "The proxy's error code, if it answered one."}}}

OPERATION = {
    "summary": "Send the logged request again through the proxy, with your key",
    "description":
        "Sends the logged request again to the proxy URL it was first sent to (its X-Proxy-Path), with "
        "`key` in place of every secret masked in the log, and answers as soon as the proxy's response "
        "head arrives; the rest is read in the background, so the new exchange completes and is logged "
        "(follow it at `url`, or its tail). The new exchange has `replay_of`. `{}` replays it as logged, "
        "its body byte for byte. The key is never written anywhere. Only a proxy on a loopback host, or "
        "one given with `orlogserver --replay-via`, is replayed through.",
    "parameters": [ID],
    "requestBody": {"required": False, "content": {"application/json": {"schema": {
        "type": "object", "additionalProperties": False, "properties": {
            "key": {"type": "string", "description": "Your API key: it takes the place of every masked "
                    "secret (after its scheme word: `Authorization: Bearer <key>`, `X-Api-Key: <key>`, a "
                    "masked query parameter), or goes as `Authorization: Bearer <key>` if none was masked."},
            "headers": {"type": "object", "additionalProperties": {"type": ["string", "null"]},
                        "description": "Headers to set (a logged one of the same name is replaced) or, "
                                       "with null, to leave out. Not Host, Content-Length, Transfer-Encoding "
                                       "or the hop-by-hop ones, which the replay sets itself."},
            "edits": {"type": "object", "description": "Top-level keys of the JSON body to set (`model`, "
                      "`messages`, `temperature`, ...) or, with null, to remove; a compressed body is "
                      "decoded first and the new one sent uncompressed."},
            "body": {"description": "A whole new body, sent as JSON (not with `edits`)."}}}}}},
    "responses": {
        "201": json_content({"type": "object", "additionalProperties": False, "required": list(_ANSWER_FIELDS),
                             "properties": _ANSWER_FIELDS}, "Sent: the proxy's answer has begun."),
        "400": ERRORS["400"], "404": ERRORS["404"], "405": ERRORS["405"],
        "409": json_content(ref("Error"), "This exchange cannot be replayed (no proxy URL, a WebSocket, "
                            "its request not logged whole, a proxy not on this machine)."),
        "413": json_content(ref("Error"), "The JSON, or the logged body, is too large."),
        "415": json_content(ref("Error"), "Not sent as application/json."),
        "502": json_content({"type": "object", "additionalProperties": False, "required": ["error"],
                             "properties": {"error": _ERROR, **_ANSWER_FIELDS}},
                            "The proxy is unreachable, or answered an error of its own (`error.code`: "
                            "upstream_unreachable, upstream_timeout, no_route); then `id` names the "
                            "new exchange, which is logged."),
    },
}
