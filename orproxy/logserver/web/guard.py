"""The logging server's guard: every request passes it before any route (CONTRACT.md, "Security").

The log holds every prompt and answer that went to an LLM, so it answers only its own:
- **Host.** A request must be addressed to this server: a `Host` of its listen address,
  `localhost`, `127.0.0.1` or `[::1]`, with its port, or a name given with
  `--allowed-host`, with any port (a balancer or a TLS front end in front of several
  servers listens on a port of its own). Anything else is DNS rebinding (a hostile page
  whose own name resolves to 127.0.0.1 would otherwise be same-origin): 403.
- **Origin.** A browser request from another origin can neither read nor write: an
  `Origin` other than the server's own (its scheme as a TLS front end's `X-Forwarded-Proto`
  gives it), or `Sec-Fetch-Site: cross-site`, is a 403; the
  WebSocket upgrade of `/api/live` included, which browsers do not hold to the same-origin
  rule. Ingest (`PUT /{uuid}/...`, `POST /ingest`) comes from proxies, never from a page:
  any `Origin` there is a 403.
- **Token.** With `--token` (or ORLOGSERVER_TOKEN) every request needs it: ingest as
  `Authorization: Bearer <token>`, the UI once as `/?token=<token>`, which it keeps in an
  HttpOnly, SameSite=Strict cookie (the answer is a redirect to the same page without it,
  so it leaves the address bar). Compared in constant time.
"""
from __future__ import annotations

import hmac
import ipaddress
import re
from collections.abc import Callable, Iterable
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode

from orproxy.logserver.web.replies import error_response

COOKIE = "orlogserver_token"
TOKEN_RE = re.compile(r"[A-Za-z0-9._~+/=-]{8,}")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
INGEST_PATHS = ("/ingest",)  # besides /{uuid}/{kind}


def token_problem(token: str) -> str | None:
    """What is wrong with a token (it travels in a header and a cookie), or None."""
    if not TOKEN_RE.fullmatch(token):
        return "use 8 or more of the characters A-Z a-z 0-9 . _ ~ + / = -"
    return None


def is_loopback(host: str) -> bool:
    """Whether a listen address serves this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Guard:
    def __init__(self, allowed_hosts: Iterable[str] = (), token: str | None = None) -> None:
        self.allowed = {h.lower() for h in allowed_hosts}  # on any port
        self.token = token or None

    def check(self, environ: dict[str, Any], start_response: Callable, path: str,
              local: tuple[str, int] | None) -> list[bytes] | None:
        """None if the request may go on; else the answer that refuses it (or, for the UI's
        `/?token=`, the redirect that keeps the token in a cookie)."""
        host = environ.get("HTTP_HOST", "")
        if not self._host_allowed(host, local):
            return error_response(start_response, "403 Forbidden",
                                  f"this server does not answer for Host {host[:100]!r}: start it with "
                                  "--allowed-host NAME to serve that name")
        origin = environ.get("HTTP_ORIGIN")
        ingest = path in INGEST_PATHS or _is_ingest_path(path)
        own = f"{_scheme(environ)}://{host}".lower()
        if origin is not None and (ingest or origin.lower() != own):
            return error_response(start_response, "403 Forbidden",
                                  f"requests from {origin[:100]!r} are refused: the log is readable "
                                  "only from its own pages")
        if environ.get("HTTP_SEC_FETCH_SITE", "").lower() == "cross-site":
            return error_response(start_response, "403 Forbidden", "cross-site requests are refused")
        if self.token is None:
            if local is not None and not is_loopback(local[0]):
                return error_response(start_response, "403 Forbidden",
                                      "this server listens beyond this machine without a token: set one "
                                      "(ORLOGSERVER_TOKEN) or listen on 127.0.0.1")
            return None
        if self._token_given(environ):
            return None
        query = environ.get("QUERY_STRING", "")
        if path in ("/", "/index.html") and "token=" in query:
            return self._take_token(environ, start_response, path, query)
        return error_response(start_response, "401 Unauthorized",
                              "a token is required: Authorization: Bearer <token>, or open /?token=<token> "
                              "once in the browser", [("WWW-Authenticate", 'Bearer realm="orlogserver"')])

    def _host_allowed(self, host: str, local: tuple[str, int] | None) -> bool:
        name, _, port = host.lower().rpartition(":") if not host.endswith("]") else (host.lower(), "", "")
        if not name:  # no port given: port 80
            name, port = host.lower(), "80"
        if name in self.allowed and port.isdigit():
            return True
        if local is not None:
            listen_host, listen_port = local
            if port != str(listen_port):
                return False
            listen = f"[{listen_host}]" if ":" in listen_host else listen_host
            if name == listen.lower():
                return True
        return name in LOOPBACK_NAMES

    def _token_given(self, environ: dict[str, Any]) -> bool:
        given = environ.get("HTTP_AUTHORIZATION", "")
        if given[:7].lower() == "bearer " and self._same(given[7:].strip()):
            return True
        cookie = environ.get("HTTP_COOKIE")
        if cookie:
            try:
                morsel = SimpleCookie(cookie).get(COOKIE)
            except Exception:  # noqa: BLE001 - a cookie header that does not parse gives no token
                morsel = None
            if morsel is not None and self._same(morsel.value):
                return True
        return False

    def _same(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self.token.encode())

    def _take_token(self, environ: dict[str, Any], start_response: Callable, path: str,
                    query: str) -> list[bytes]:
        pairs = parse_qsl(query, keep_blank_values=True)
        given = next((v for k, v in pairs if k == "token"), "")
        if not self._same(given):
            return error_response(start_response, "401 Unauthorized", "that token is not this server's")
        rest = urlencode([(k, v) for k, v in pairs if k != "token"])
        cookie = f"{COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/"
        start_response("303 See Other", [("Location", path + (f"?{rest}" if rest else "")),
                                         ("Set-Cookie", cookie), ("Cache-Control", "no-store"),
                                         ("Referrer-Policy", "no-referrer"), ("Content-Length", "0")])
        return []


def _scheme(environ: dict[str, Any]) -> str:
    """The scheme the browser used: a TLS front end says it in X-Forwarded-Proto (a page of
    another origin cannot send that header without a preflight, which is refused)."""
    forwarded = environ.get("HTTP_X_FORWARDED_PROTO", "").split(",")[0].strip().lower()  # the first front end's
    return forwarded if forwarded in ("http", "https") else environ.get("wsgi.url_scheme", "http")


def _is_ingest_path(path: str) -> bool:
    """`/{uuid}/{kind}`: two segments, the first not a route of its own (api, static)."""
    parts = path.strip("/").split("/")
    return len(parts) == 2 and parts[0] not in ("api", "static")
