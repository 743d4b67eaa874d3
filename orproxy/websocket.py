"""WebSocket upgrades: the tunnel to the upstream, and the log of its messages (issue 5).

A request with `Upgrade: websocket` on a route is replayed upstream (`ws://` for an
`http://` destination, `wss://` with certificate checks for `https://`) under HTTP's routing
and header rules, the upgrade headers kept. The upstream's answer goes back byte for byte
plus `X-Request-Id`. After a 101 the proxy owns the client connection: two greenlets copy
bytes both ways as they arrive, parsing nothing, so the tunnel adds no framing latency.

The log sits beside the tunnel, never in it: each pump hands the bytes it has just
forwarded to a wslog.MessageLog, which decodes them in its own time into message records on
the exchange's response stream, after the 101 head.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import gevent
import httptools
import requests
from gevent import socket, ssl

from orproxy.exchange import Exchange
from orproxy.headers import Headers, header_value, mask_secret, masked, serialize_head, strip_hop_by_hop
from orproxy.sink import LogSink
from orproxy.transport import open_connection, send_all, split_url
from orproxy.wslog import MessageLog

BLOCK = 256 * 1024                 # bytes a pump reads at once: fewer wake-ups for bulk data
MAX_HEAD = 65536                   # bytes of the upstream's answer head we accept
CLOSE_LINGER = 5.0                 # after one side closed, seconds the other gets to close
DRAIN_TIMEOUT = 5.0                # seconds the decoder gets to finish after the tunnel ended

# The same trust as the HTTP transport: certifi's CA bundle, hostnames checked. Built from
# gevent's SSLContext itself: create_default_context() gives the stdlib's (blocking) one
# when the process is not monkey-patched.
TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
TLS.load_verify_locations(requests.certs.where())

Tap = Callable[[str, bytes], None]


def is_websocket_upgrade(headers: Headers) -> bool:
    """RFC 6455 4.1: `Upgrade: websocket` (a token, any case) asks for the tunnel."""
    value = header_value(headers, "upgrade")
    return value is not None and any(t.strip().lower() == "websocket" for t in value.split(","))


class WebSocketProxy:
    """Serves upgrade requests for ProxyApp: handshake, tunnel, log, metadata."""

    def __init__(self, sink: LogSink | None, secret_names: frozenset[str]) -> None:
        self.sink = sink
        self.secret_names = secret_names

    def serve(self, exchange: Exchange, environ: dict[str, Any], headers: Headers, logs: Any,
              upstream_error: Callable[[BaseException], Any]) -> Any:
        """Tunnel one session; returns what the WSGI server must get back.

        Until the upstream has answered, failures go to `upstream_error` (ProxyApp's JSON
        errors). From then on the client connection is ours, and the server is told to
        leave it alone.
        """
        origin, netloc, target = split_url(exchange.upstream_url)
        forwarded = upstream_headers(headers, netloc)
        called = f"ws://{environ.get('HTTP_HOST', '')}{exchange.target}"
        logs.request.write(serialize_head(f"{exchange.method} {target} HTTP/1.1", [
            *_mask_subprotocols(masked(forwarded, self.secret_names)), ("X-Proxy-Path", called)]))
        logs.request.close()
        route = exchange.route
        try:
            upstream = open_connection(*origin, route.connect_timeout, TLS)
            try:
                answer, head, rest = _handshake(
                    upstream, serialize_head(f"{exchange.method} {target} HTTP/1.1", forwarded),
                    route.read_timeout)
            except BaseException:
                upstream.close()
                raise
        except (requests.exceptions.RequestException, OSError) as e:
            return upstream_error(e)

        exchange.upstream_headers_at = time.time()
        exchange.status = answer.status
        exchange.streamed = answer.status == 101
        logs.response.write(serialize_head(f"HTTP/{answer.version} {answer.status} {answer.reason}",
                                           masked(answer.headers, self.secret_names)))
        try:
            client, from_client = take_client(environ)
        except BaseException:
            upstream.close()
            raise
        session: dict[str, Any] = {}
        try:
            client.sendall(with_request_id(head, exchange.id))
            if answer.status == 101:
                self._tunnel(exchange, logs, client, upstream, answer, from_client, rest, session)
            else:
                _pass_refusal(exchange, logs, client, upstream, answer, rest)
        except OSError:
            exchange.fail("client_disconnected")
        finally:
            upstream.close()
            _shutdown(client, socket.SHUT_RDWR)  # the server closes it: it still holds it
            exchange.ended_at = time.time()
            logs.response.close()
            if logs.enabled:
                metadata = exchange.metadata()
                metadata["log_dropped_bytes"] = logs.request.dropped + logs.response.dropped
                if session:
                    metadata["websocket"] = session
                self.sink.send_json(exchange.id, "metadata", metadata)
        return _handled(environ)

    def _tunnel(self, exchange: Exchange, logs: Any, client: socket.socket, upstream: socket.socket,
                answer: "_Answer", from_client: bytes, from_upstream: bytes,
                session: dict[str, Any]) -> None:
        """Relay until the session ends; `session` gets its metadata, even when the server
        stops us midway."""
        extensions = ", ".join(v for n, v in answer.headers if n.lower() == "sec-websocket-extensions")
        log = MessageLog(logs.response, self.sink, extensions) if logs.enabled else None
        tunnel = Tunnel(client, upstream, exchange.route.read_timeout, log.tap if log else _no_tap)
        opened = time.time()
        try:
            tunnel.run(from_client, from_upstream)
        finally:
            if log is not None:
                log.finish(DRAIN_TIMEOUT)
            ended = tunnel.ended or "proxy stopped"
            if ended in _END_ERRORS:
                exchange.fail(_END_ERRORS[ended])
            exchange.request_bytes = tunnel.bytes["client"]
            exchange.response_bytes = tunnel.bytes["upstream"]
            session.update(ended=ended, duration=round(time.time() - opened, 6))
            for direction in ("client", "upstream"):
                session[direction] = {"bytes": tunnel.bytes[direction]}
                if log is not None:
                    session[direction].update(log.decoders[direction].counts())


_END_ERRORS = {"client failed": "client_disconnected", "upstream failed": "upstream_broken",
               "idle timeout": "idle_timeout"}


# --- the handshake ----------------------------------------------------------------------

def upstream_headers(headers: Headers, host: str) -> Headers:
    """The handshake as it goes upstream: HTTP's header rules with the upgrade kept.

    `Connection` is hop-by-hop (RFC 9110 7.6.1), so the proxy sends its own
    `Connection: Upgrade`, and drops what the client's named (`Keep-Alive`, ...).
    `Upgrade` and `Sec-WebSocket-*` (key, version, subprotocols, extensions) pass as sent:
    they are negotiated end to end, which is what lets the tunnel relay raw bytes.
    """
    forwarded: Headers = []
    seen = set()
    for name, value in strip_hop_by_hop(headers, keep=frozenset(("connection", "upgrade"))):
        lower = name.lower()
        if lower in ("connection", "host"):
            if lower in seen:
                continue
            value = "Upgrade" if lower == "connection" else host
        seen.add(lower)
        forwarded.append((name, value))
    if "host" not in seen:
        forwarded.insert(0, ("Host", host))
    if "connection" not in seen:
        forwarded.append(("Connection", "Upgrade"))
    return forwarded


def _mask_subprotocols(headers: Headers) -> Headers:
    """Browsers cannot set `Authorization` on a WebSocket, so OpenAI's Realtime API takes
    the key as a subprotocol `openai-insecure-api-key.<key>`: masked in the log the same way."""
    def mask(token: str) -> str:
        prefix, sep, key = token.strip().partition("api-key.")
        return f"{prefix}{sep}{mask_secret('', key)}" if sep else token.strip()
    return [(n, ", ".join(mask(t) for t in v.split(",")) if n.lower() == "sec-websocket-protocol"
             and "api-key." in v else v) for n, v in headers]


class _Answer:
    """The upstream's answer to the handshake, parsed by httptools as it arrives."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.headers: Headers = []
        self.status = 0
        self.version = "1.1"
        self.reason = ""
        self.body: list[bytes] = []  # de-chunked body blocks of a refusal, not yet logged
        self.head_done = False
        self.complete = False
        self._reason: list[bytes] = []

    def feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.complete = True  # a 101: what follows is the tunnel's
        except httptools.HttpParserError as e:
            raise requests.exceptions.ConnectionError(f"malformed answer from upstream: {e}") from e

    def on_status(self, status: bytes) -> None:
        self._reason.append(status)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.version = self.parser.get_http_version()
        self.reason = b"".join(self._reason).decode("latin-1")
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


def _handshake(sock: socket.socket, head: bytes, read_timeout: float) -> tuple[_Answer, bytes, bytes]:
    """Send the handshake; the parsed answer, its raw head, and the bytes that followed it."""
    sock.settimeout(read_timeout)
    answer, data = _Answer(), b""
    try:
        sock.sendall(head)
        while not answer.head_done:
            block = sock.recv(BLOCK)
            if not block:
                raise requests.exceptions.ConnectionError("the upstream closed the connection "
                                                          "without answering the upgrade")
            data += block
            answer.feed(block)
            if not answer.head_done and len(data) > MAX_HEAD:
                raise requests.exceptions.ConnectionError("the upstream's answer head is too large")
    except TimeoutError as e:
        raise requests.exceptions.ReadTimeout(f"no answer to the upgrade within {read_timeout} s") from e
    end = min(at + len(blank) for blank in (b"\r\n\r\n", b"\n\n") if (at := data.find(blank)) >= 0)
    return answer, data[:end], data[end:]


def with_request_id(head: bytes, request_id: str) -> bytes:
    """The upstream's raw head with `X-Request-Id` added as its last header."""
    eol = b"\r\n" if head.endswith(b"\r\n\r\n") else b"\n"
    return head[:-len(eol)] + b"X-Request-Id: " + request_id.encode() + eol + eol


def _pass_refusal(exchange: Exchange, logs: Any, client: socket.socket, upstream: socket.socket,
                  answer: _Answer, rest: bytes) -> None:
    """A refused upgrade (401, 403, ...): its body goes on as it came, then the connection ends."""
    data = rest
    while True:
        if data:
            client.sendall(data)
        for block in answer.body:
            logs.response.write(block)
            exchange.count_response(len(block))
        answer.body.clear()
        if answer.complete:
            return
        try:
            data = upstream.recv(BLOCK)
            if not data:
                return  # a body delimited by the close, or cut short: either way, the end
            answer.feed(data)
        except (OSError, requests.exceptions.ConnectionError):
            exchange.fail("upstream_broken")
            return


# --- the client connection, taken from the server -----------------------------------------

def take_client(environ: dict[str, Any]) -> tuple[socket.socket, bytes]:
    """The client's socket, and the bytes its server had already read past the handshake.

    A client may send its first frames in the same packet as the handshake (FACTS.md):
    pywsgi holds them in its rfile (for an upgrade, `wsgi.input` is that rfile), gunicorn in
    its parser's unreader. Both are taken without waiting for more.
    """
    sock = environ.get("orproxy.socket")
    if sock is not None:  # pywsgi, through serving.RawRequestHandler
        rfile = getattr(environ["wsgi.input"], "rfile", environ["wsgi.input"])
        timeout = sock.gettimeout()
        sock.settimeout(0.0)  # read1 returns the buffered bytes, or b'' rather than wait
        try:
            buffered = rfile.read1(BLOCK)
        except OSError:
            buffered = b""
        finally:
            sock.settimeout(timeout)
        rfile.close()  # so pywsgi ends the connection instead of reading another request
        return sock, buffered
    reader = getattr(environ.get("wsgi.input"), "reader", None)
    take = getattr(getattr(reader, "unreader", None), "take_buffered", None)
    return environ["gunicorn.socket"], take() if take else b""


def _handled(environ: dict[str, Any]) -> Any:
    """What tells the server that the response was written by us: gunicorn's async workers
    know ALREADY_HANDLED; pywsgi, given no status and no body, writes nothing."""
    if "orproxy.socket" not in environ and "gunicorn.socket" in environ:
        from gunicorn.workers.base_async import ALREADY_HANDLED
        return ALREADY_HANDLED
    return []


def _shutdown(sock: socket.socket, how: int) -> None:
    try:
        sock.shutdown(how)
    except OSError:
        pass


# --- the tunnel -------------------------------------------------------------------------

def _no_tap(direction: str, data: bytes) -> None:
    pass


class Tunnel:
    """Two pumps copy bytes between the client and the upstream until the session ends.

    A clean close (EOF) on one side is passed on as a half-close to the other, which then
    gets CLOSE_LINGER seconds to close too (RFC 6455 7.1.1: the server closes TCP first, the
    client then closes its side). A failure, or no byte either way for `idle_timeout`, ends
    both at once. Either way nothing outlives `run`: no greenlet; the sockets are the
    caller's to close.
    """

    def __init__(self, client: socket.socket, upstream: socket.socket, idle_timeout: float,
                 tap: Tap = _no_tap) -> None:
        self.ends = {"client": client, "upstream": upstream}
        self.idle_timeout = idle_timeout
        self.tap = tap
        self.active_at = time.monotonic()
        self.bytes = {"client": 0, "upstream": 0}
        self.ended = ""

    def run(self, from_client: bytes = b"", from_upstream: bytes = b"") -> str:
        """Relay until the session ends; returns (and keeps in `ended`) how it ended."""
        for sock in self.ends.values():
            sock.settimeout(self.idle_timeout)
        pumps = {"client": gevent.spawn(self._pump, "client", "upstream", from_client),
                 "upstream": gevent.spawn(self._pump, "upstream", "client", from_upstream)}
        try:
            first = gevent.wait(list(pumps.values()), count=1)[0]
            self.ended = first.value or "proxy failed"
            source = "client" if first is pumps["client"] else "upstream"
            other = "upstream" if source == "client" else "client"
            # A half-close cannot be passed on over TLS: shutting down the socket under an
            # SSL object would end it; there the session just ends.
            if self.ended == f"{source} closed" and not isinstance(self.ends[other], ssl.SSLSocket):
                _shutdown(self.ends[other], socket.SHUT_WR)
                pumps[other].join(CLOSE_LINGER)
        finally:
            gevent.killall(list(pumps.values()))
        return self.ended

    def _pump(self, source: str, target: str, first: bytes) -> str:
        src, dst = self.ends[source], self.ends[target]
        data = first
        while True:
            if data:
                try:
                    send_all(dst, data)
                except OSError:
                    return f"{target} failed"
                self.active_at = time.monotonic()
                self.bytes[source] += len(data)
                self.tap(source, data)
            try:
                data = src.recv(BLOCK)
            except TimeoutError:
                if time.monotonic() - self.active_at >= self.idle_timeout:
                    return "idle timeout"
                data = b""  # the other direction was active: keep waiting
                continue
            except OSError:
                return f"{source} failed"
            if not data:
                return f"{source} closed"
