"""Header rules shared by both directions: hop-by-hop stripping and secret masking.

Headers travel as lists of (name, value) pairs so that order, case and repeats
(`Set-Cookie`) survive; a dict would lose them. http1.head() writes them out.
"""
from __future__ import annotations

from typing import Any

Headers = list[tuple[str, str]]

# RFC 9110 section 7.6.1: these describe one connection, not the message. `Expect` is
# answered by our own server (it sends `100 Continue`), so the upstream must not see it.
HOP_BY_HOP = frozenset((
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade", "expect",
))


def strip_hop_by_hop(headers: Headers, keep: frozenset[str] = frozenset()) -> Headers:
    """Drop hop-by-hop headers and any header that `Connection` names, except those in `keep`."""
    named = set()
    for name, value in headers:
        if name.lower() == "connection":
            named.update(token.strip().lower() for token in value.split(","))
    dropped = (HOP_BY_HOP | named) - keep
    return [(n, v) for n, v in headers if n.lower() not in dropped]


def header_value(headers: Headers, name: str) -> str | None:
    """The first value of a header, matched case-insensitively."""
    name = name.lower()
    for n, v in headers:
        if n.lower() == name:
            return v
    return None


def mask_secret(name: str, value: str) -> str:
    """`Bearer sk-...abcd` -> `Bearer ****abcd`; short values and cookies become `****`."""
    if name.lower() in ("cookie", "set-cookie"):
        return "****"
    scheme, sep, secret = value.partition(" ")
    if not sep:
        scheme, secret = "", value
    if len(secret) < 12:
        return f"{scheme} ****" if scheme else "****"
    return f"{scheme} ****{secret[-4:]}" if scheme else f"****{secret[-4:]}"


SECRET_PARAMS = frozenset(("key", "api_key", "api-key", "access_token", "token"))


def masked_target(target: str) -> str:
    """A request target (or URL) with the values of key-carrying query parameters masked as
    header values are (`?key=AIza...XYZ9` -> `?key=****XYZ9`): Gemini takes its key there.
    Only those values change; every other byte stays as it was (nothing is re-encoded)."""
    path, sep, query = target.partition("?")
    if not sep or "=" not in query:
        return target
    pairs = []
    for pair in query.split("&"):
        name, eq, value = pair.partition("=")
        if eq and name.lower() in SECRET_PARAMS and value:
            pair = f"{name}={mask_secret('', value)}"
        pairs.append(pair)
    return f"{path}?{'&'.join(pairs)}"


def masked(headers: Headers, secret_names: frozenset[str]) -> Headers:
    """The headers as logged: the values of `secret_names` masked, and API keys passed as
    WebSocket subprotocols. Browsers cannot set `Authorization` on a WebSocket, so OpenAI's
    Realtime API takes the key as a subprotocol `openai-insecure-api-key.<key>`."""
    out = []
    for name, value in headers:
        lower = name.lower()
        if lower in secret_names:
            value = mask_secret(name, value)
        elif lower == "sec-websocket-protocol" and "api-key." in value:
            value = ", ".join(_mask_subprotocol(token) for token in value.split(","))
        out.append((name, value))
    return out


def _mask_subprotocol(token: str) -> str:
    prefix, sep, key = token.strip().partition("api-key.")
    return f"{prefix}{sep}{mask_secret('', key)}" if sep else token.strip()


class HeaderPairs:
    """Header pairs as the wire had them, answering the questions requests and urllib3 ask
    of a header mapping: `name in h` and `h.get(name)` (case-insensitive), iteration over
    the names, `items()` over the pairs (repeats included). So one object is the request
    headers for orproxy's adapter, which sends the pairs exactly, and for requests' own
    HTTPAdapter; and the response headers either adapter's `raw` offers. urllib3 also
    copies request headers and merges its proxy headers into the copy (`copy`, `update`)."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: Headers) -> None:
        self.pairs = pairs

    def items(self) -> Headers:
        return self.pairs

    def __iter__(self):  # noqa: ANN204 - the names, as a mapping iterates
        return (name for name, _ in self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and header_value(self.pairs, name) is not None

    def get(self, name: str, default: str | None = None) -> str | None:
        value = header_value(self.pairs, name)
        return default if value is None else value

    def copy(self) -> HeaderPairs:
        return HeaderPairs(list(self.pairs))

    def update(self, other: Any) -> None:
        """Set each header of the mapping `other`, replacing those of the same name."""
        for name, value in other.items():
            lower = name.lower()
            self.pairs = [(n, v) for n, v in self.pairs if n.lower() != lower]
            self.pairs.append((name, value))
