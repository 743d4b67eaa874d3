"""Header rules shared by both directions: hop-by-hop stripping, secret masking, raw heads.

Headers travel as lists of (name, value) pairs so that order, case and repeats
(`Set-Cookie`) survive; a dict would lose them.
"""
from __future__ import annotations

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


def masked(headers: Headers, secret_names: frozenset[str]) -> Headers:
    return [(n, mask_secret(n, v) if n.lower() in secret_names else v) for n, v in headers]


def serialize_head(first_line: str, headers: Headers) -> bytes:
    """A raw HTTP head with CRLF line ends and the blank line that ends it."""
    lines = [first_line, *(f"{n}: {v}" for n, v in headers), "", ""]
    return "\r\n".join(lines).encode("latin-1", "replace")
