"""What a replay sends: a logged request, the caller's edits and key, made into the request
that goes again to the proxy URL the original was sent to (`POST /api/requests/{id}/replay`,
replay.py sends it). No sockets and no files here.

- **Where.** The logged request's `X-Proxy-Path` (the URL the client called, CONTRACT.md),
  http or https only; nothing the caller sends can change it. A query parameter masked in
  the log (`key=****abcd`) takes the caller's `key`, or the replay is refused: a masked
  value is never sent as if it were the key.
- **Headers.** The logged ones in their order, minus the framing (Host, Content-Length,
  Transfer-Encoding and the hop-by-hop ones, recomputed or dropped), `X-Proxy-Path`, and
  masked secrets (`Bearer ****abcd`): those take the caller's `key` after their scheme
  word, or are left out (`sent_without`). Cookies, masked whole, are always left out.
  `headers` sets or (null) removes any other. `X-Orproxy-Replay-Of: <id>` is added: the
  proxy logs it with the new exchange, which so records what it replays (httpfile.py).
- **Body.** As logged, byte for byte, still content-encoded. `edits` merges top-level keys
  into its JSON object (decoded first; null removes a key); `body` replaces it whole. The
  new body is sent as JSON, without the Content-Encoding.

The caller's key is in the returned plan only; every ParamError and RefusedReplay message
is written without any value the caller sent (a key may be pasted into any field).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from orproxy import jsoncodec
from orproxy.logserver.llm.httpfile import REPLAY_OF_HEADER, Head, decode_body
from orproxy.logserver.web.query import ParamError

ASK_FIELDS = ("key", "headers", "edits", "body")
MAX_BODY = 64 * 1024 * 1024  # decoded, for edits
MAX_KEY = 8192
# Set by the replay itself: from the log they are dropped, from the caller refused.
FRAMING = frozenset(("host", "content-length", "transfer-encoding", "connection", "keep-alive",
                     "proxy-connection", "te", "trailer", "upgrade", "expect", "x-proxy-path",
                     REPLAY_OF_HEADER.lower()))
NO_BODY_METHODS = frozenset(("GET", "HEAD", "DELETE", "OPTIONS"))
_MASKED_HEADER = re.compile(r"(?:(\S+) )?\*\*\*\*\S{0,4}")  # headers.mask_secret's forms
_MASKED_PARAM = re.compile(r"\*\*\*\*[^&]{0,4}")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}")
_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
_KEY = re.compile(r"[\x21-\x7e]{1,%d}" % MAX_KEY)
_TARGET = re.compile(r"[\x21-\x7e]+")
_WORD = re.compile(r"[a-z_]{1,30}")
_MISSING = object()


class BadAsk(ValueError):
    """A mistake in the caller's JSON that no one field is at fault for (400)."""


class RefusedReplay(Exception):
    """This exchange cannot be replayed as logged (409): no URL, a WebSocket, ..."""


@dataclass(frozen=True)
class Ask:
    """What the caller sent: every part optional."""

    key: str | None = None
    headers: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # lower name -> (name, value)
    edits: dict[str, Any] | None = None
    body: Any = _MISSING

    @property
    def replaces_body(self) -> bool:
        return self.body is not _MISSING

    @property
    def secrets(self) -> list[str]:
        """Every value the caller sent that may be a secret (never to be shown)."""
        values = [self.key] if self.key else []
        return values + [v for _, v in self.headers.values() if v]


def parse_ask(document: Any) -> Ask:
    """The caller's JSON document as an Ask; ParamError naming the field at fault, else BadAsk."""
    if not isinstance(document, dict):
        raise BadAsk("the replay's JSON must be an object: {} replays the request as logged")
    for name in document:
        if name not in ASK_FIELDS:
            fields = f"the fields are {', '.join(ASK_FIELDS)} (changes to the request body go in `edits`)"
            if _WORD.fullmatch(name):
                raise ParamError(name, f"unknown field: {fields}")
            raise BadAsk(f"an unknown field: {fields}")  # no word, maybe a pasted key: never echoed
    key = document.get("key")
    if key is not None and (not isinstance(key, str) or not _KEY.fullmatch(key)):
        raise ParamError("key", f"must be a string of 1 to {MAX_KEY} printable ASCII characters, no spaces")
    headers: dict[str, tuple[str, str | None]] = {}
    given = document.get("headers")
    if given is not None:
        if not isinstance(given, dict):
            raise ParamError("headers", "must be an object of header names to values (null removes one)")
        for name, value in given.items():
            if not _TOKEN.fullmatch(name):
                raise ParamError("headers", "a header name is not an HTTP token of 1 to 100 characters")
            if name.lower() in FRAMING:
                raise ParamError("headers", f"{name} is set by the replay itself")
            if value is not None and (not isinstance(value, str) or not _VALUE.fullmatch(value)):
                raise ParamError("headers", f"the value of {name} must be a string on one line, or null")
            headers[name.lower()] = (name, value)
    edits = document.get("edits")
    if edits is not None and not isinstance(edits, dict):
        raise ParamError("edits", "must be an object of top-level keys of the request body (null removes one)")
    body = document.get("body", _MISSING)
    if body is None:
        raise ParamError("body", "must be the new body as JSON; leave it out to send the logged one")
    if edits and body is not _MISSING:
        raise ParamError("edits", "give edits or a whole body, not both")
    return Ask(key or None, headers, edits or None, body)


@dataclass(frozen=True)
class Plan:
    """The request a replay sends. `target` may hold the caller's key: show `shown_url`."""

    scheme: str
    host: str
    port: int
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    shown_url: str                 # the URL as logged (masked)
    sent_without: list[str]        # masked headers left out for want of a key

    @property
    def origin(self) -> str:
        """scheme://host:port, for messages (holds no secret)."""
        return _origin(self.scheme, self.host, self.port)


def _origin(scheme: str, host: str, port: int) -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def plan(head: Head, body: bytes, exchange_id: str, ask: Ask,
         check_origin: Callable[[str, str], None] = lambda host, origin: None) -> Plan:
    """The replay of the logged request (`head`, `body` as logged) with `ask` applied.
    RefusedReplay if the exchange cannot be replayed (`check_origin(host, origin)` raises
    it for a proxy not to replay through), ParamError for a mistake in `ask`."""
    called = head.header("x-proxy-path")
    if not called:
        raise RefusedReplay("the logged request has no X-Proxy-Path (it was not logged by orproxy), "
                            "so the proxy URL it was sent to is unknown")
    if not _TARGET.fullmatch(called):
        raise RefusedReplay("the logged X-Proxy-Path is not a URL that can be sent again")
    url = urlsplit(called)
    if url.scheme in ("ws", "wss"):
        raise RefusedReplay("a WebSocket session cannot be replayed")
    if url.scheme not in ("http", "https") or not url.hostname:
        raise RefusedReplay("the logged X-Proxy-Path is not an http(s) URL")
    if "@" in url.netloc:
        raise RefusedReplay("the logged X-Proxy-Path names a user: it is not a proxy URL")
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
    except ValueError:
        raise RefusedReplay("the logged X-Proxy-Path has an invalid port") from None
    check_origin(url.hostname, _origin(url.scheme, url.hostname, port))
    method = head.start_line.split(" ", 1)[0]
    if not _TOKEN.fullmatch(method):
        raise RefusedReplay("the logged request has no request line")
    target = (url.path or "/") + (f"?{_unmasked_query(url.query, ask.key)}" if url.query else "")
    headers, sent_without = _headers(head, ask)
    new_body = _body(head, body, ask)
    if new_body is not body:
        headers = [(n, v) for n, v in headers if n.lower() != "content-encoding"]
        if not any(n.lower() == "content-type" for n, _ in headers):
            headers.append(("Content-Type", "application/json"))
    if new_body or method not in NO_BODY_METHODS or head.header("content-length") is not None:
        headers.append(("Content-Length", str(len(new_body))))
    headers = [("Host", url.netloc), *headers, (REPLAY_OF_HEADER, exchange_id)]
    return Plan(url.scheme, url.hostname, port, method, target, headers, new_body, called, sent_without)


def _unmasked_query(query: str, key: str | None) -> str:
    """The logged query with each masked value replaced by the key (percent-encoded)."""
    pairs = []
    for pair in query.split("&"):
        name, eq, value = pair.partition("=")
        if eq and _MASKED_PARAM.fullmatch(value):
            if key is None:
                raise ParamError("key", f"the query parameter {name[:40]!r} of the logged URL was masked "
                                        "in the log: give the key to send in its place")
            pair = f"{name}={quote(key, safe='')}"
        pairs.append(pair)
    return "&".join(pairs)


def _headers(head: Head, ask: Ask) -> tuple[list[tuple[str, str]], list[str]]:
    """The logged headers to send again, with the key and the caller's headers put in."""
    out: list[tuple[str, str]] = []
    sent_without: list[str] = []
    key_placed = False
    given = dict(ask.headers)
    for name, value in head.headers:
        lower = name.lower()
        if lower in FRAMING:
            continue
        if lower in given:
            replacement = given.pop(lower)[1]
            if replacement is not None:
                out.append((name, replacement))
            continue
        if lower in ask.headers:  # given, and put in at its first occurrence already
            continue
        masked = _MASKED_HEADER.fullmatch(value)
        if masked:
            if ask.key is None or lower in ("cookie", "set-cookie"):
                sent_without.append(name)
            else:
                out.append((name, f"{masked.group(1)} {ask.key}" if masked.group(1) else ask.key))
                key_placed = True
            continue
        out.append((name, value))
    out += [(name, value) for name, value in given.values() if value is not None]
    if ask.key is not None and not key_placed and "authorization" not in ask.headers:
        out.append(("Authorization", f"Bearer {ask.key}"))
    return out, sent_without


def _body(head: Head, body: bytes, ask: Ask) -> bytes:
    """The body to send: `body` itself (the same object) unless the caller changes it."""
    if ask.replaces_body:
        return jsoncodec.dumps(ask.body)
    if not ask.edits:
        return body
    data, truncated, error = decode_body(body, head.header("content-encoding"), MAX_BODY)
    if error or truncated:
        raise ParamError("edits", "the logged body cannot be decoded to apply them"
                         + (f" ({error})" if error else f" (over {MAX_BODY} bytes)") + "; send `body` instead")
    try:
        document = jsoncodec.loads(data)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise ParamError("edits", "the logged body is not a JSON object; send a whole `body` instead")
    for name, value in ask.edits.items():
        if value is None:
            document.pop(name, None)
        else:
            document[name] = value
    return jsoncodec.dumps(document)
