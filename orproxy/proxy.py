"""The proxy's WSGI app: route, forward, stream back, and tee both directions to the sink.

The data path reads top to bottom in `__call__`: client -> route -> tee -> transport ->
upstream -> tee -> client. Errors are decided at one boundary: before the response head is
sent they become a JSON error; after it, the client connection is cut (never a clean end).
"""
from __future__ import annotations

import json
import socket as _stdlib_socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import requests
from gevent import socket

from orproxy.config import Config
from orproxy.console import ConsoleLog
from orproxy.errors import error_response
from orproxy.exchange import Exchange
from orproxy.headers import Headers, header_value, masked, serialize_head, strip_hop_by_hop
from orproxy.incoming import ClientBodyError, body_blocks, client_socket, raw_target, request_headers
from orproxy.routes import Route
from orproxy.sink import LogSink, LogStream, NullStream
from orproxy.tee import tee
from orproxy.transport import BLOCK, StreamingAdapter, UpstreamBroken
from orproxy.websocket import WebSocketProxy, is_websocket_upgrade

STREAMING_TYPES = ("text/event-stream", "application/stream+json", "application/x-ndjson")


class ClientGone(gevent.GreenletExit):
    """Thrown into the greenlet serving a client that closed its connection."""


class ProxyApp:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.session = requests.Session()
        self.session.trust_env = False  # never proxy env variables: they cost 25% CPU (FACTS.md)
        adapter = StreamingAdapter()
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.sink = LogSink(config.server_url, adapter) if config.logging_enabled else None
        self.console = ConsoleLog(config.console, config.log_file)
        self.websockets = WebSocketProxy(self.sink, config.redact_headers)

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Any:
        exchange = Exchange(environ["REQUEST_METHOD"], raw_target(environ), environ.get("REMOTE_ADDR", ""))
        route = exchange.route = self.config.routes.match(exchange.target.partition("?")[0])
        self.console.request(exchange)
        logged = self.sink is not None and (route.logging if route else self.config.log_unrouted)
        logs = _Logs(self.sink, exchange.id, logged)
        headers = request_headers(environ)
        if route is None:
            if logs.enabled:
                logs.request.write(self._request_head(exchange, environ, headers))
            return self._error(exchange, logs, start_response, "no_route",
                               f"no route matches {exchange.target.partition('?')[0]}")
        exchange.upstream_url = route.origin + route.upstream_target(exchange.target)
        if is_websocket_upgrade(headers):  # issue 5: the tunnel and its message log
            return self.websockets.serve(exchange, environ, headers, logs, lambda error:
                                         self._upstream_error(exchange, logs, start_response, error))
        try:
            upstream_headers, body = self._upstream_request(route, environ, headers)
        except ValueError as e:
            return self._error(exchange, logs, start_response, "bad_request", str(e))
        if logs.enabled:
            logs.request.write(self._request_head(exchange, environ, upstream_headers))

        watch = ClientWatch(client_socket(environ))

        def request_sent() -> None:  # the whole body went upstream: its log is complete
            logs.request.close()
            watch.start()

        if body is None:
            request_sent()
        else:
            body = _then(tee(body, logs.request, exchange.count_request), request_sent)
        request = requests.PreparedRequest()
        request.method, request.url, request.headers, request.body = (
            exchange.method, exchange.upstream_url, upstream_headers, body)
        try:
            response = self.session.get_adapter(request.url).send(
                request, stream=True, timeout=(route.connect_timeout, route.read_timeout))
        except BaseException as e:
            watch.stop()
            logs.request.close()
            if isinstance(e, ClientGone):
                exchange.fail("client_disconnected")
                self._finish(exchange, logs)
                raise
            return self._upstream_error(exchange, logs, start_response, e)
        logs.request.close()
        return self._respond(exchange, logs, response, watch, environ, start_response)

    def drain_logs(self, timeout: float) -> None:
        """On stop (serving.py): let queued log data reach the logging server."""
        if self.sink is not None:
            self.sink.drain(timeout)

    # --- request ------------------------------------------------------------------------

    def _upstream_request(self, route: Route, environ: dict[str, Any],
                          headers: Headers) -> tuple[Headers, Iterator[bytes] | None]:
        """The headers and body to send upstream; ValueError for a malformed request."""
        length_text = header_value(headers, "content-length")
        chunked = "chunked" in (header_value(headers, "transfer-encoding") or "").lower()
        length = None
        if length_text is not None:
            if not length_text.isdigit():
                raise ValueError(f"invalid Content-Length: {length_text!r}")
            length = int(length_text)
        forwarded = strip_hop_by_hop(headers)
        host = route.netloc
        host_at = next((i for i, (n, _) in enumerate(forwarded) if n.lower() == "host"), None)
        if host_at is None:
            forwarded.insert(0, ("Host", host))
        else:
            forwarded[host_at] = (forwarded[host_at][0], host)
        if chunked:  # RFC 9112 6.3: chunked wins over a Content-Length sent with it
            forwarded = [(n, v) for n, v in forwarded if n.lower() != "content-length"]
            forwarded.append(("Transfer-Encoding", "chunked"))
            return forwarded, body_blocks(environ, None)
        if length:
            return forwarded, body_blocks(environ, length)
        return forwarded, None

    def _request_head(self, exchange: Exchange, environ: dict[str, Any], headers: Headers) -> bytes:
        called = f"http://{environ.get('HTTP_HOST', '')}{exchange.target}"
        target = exchange.route.upstream_target(exchange.target) if exchange.route else exchange.target
        return serialize_head(f"{exchange.method} {target} HTTP/1.1",
                              [*masked(headers, self.config.redact_headers), ("X-Proxy-Path", called)])

    # --- response -----------------------------------------------------------------------

    def _respond(self, exchange: Exchange, logs: "_Logs", response: requests.Response,
                 watch: "ClientWatch", environ: dict[str, Any], start_response: Callable) -> Iterator[bytes]:
        raw = response.raw
        exchange.upstream_headers_at = time.time()
        exchange.status = response.status_code
        content_type = (header_value(raw.headers_list, "content-type") or "").lower()
        exchange.streamed = content_type.startswith(STREAMING_TYPES) or (
            header_value(raw.headers_list, "content-length") is None)
        if logs.enabled:
            logs.response.write(serialize_head(
                f"HTTP/{raw.version} {response.status_code} {response.reason}",
                masked(raw.headers_list, self.config.redact_headers)))
        headers = strip_hop_by_hop(raw.headers_list)
        headers.append(("X-Request-Id", exchange.id))
        write = start_response(f"{response.status_code} {response.reason}", headers)
        if not raw.has_buffered:
            write(b"")  # send the head now: the first body bytes may be a long way off
        return self._relay(exchange, logs, raw, watch, environ)

    def _relay(self, exchange: Exchange, logs: "_Logs", raw: Any, watch: "ClientWatch",
               environ: dict[str, Any]) -> Iterator[bytes]:
        try:
            yield from tee(_upstream_blocks(raw), logs.response, exchange.count_response)
        except (UpstreamBroken, requests.exceptions.ReadTimeout) as e:
            watch.stop()
            exchange.fail("upstream_timeout" if isinstance(e, requests.exceptions.ReadTimeout)
                          else "upstream_broken")
            _cut(client_socket(environ))  # the client must see an incomplete response
        except ClientGone:
            exchange.fail("client_disconnected")
        except GeneratorExit:
            exchange.fail("client_disconnected")  # the server closed us: the client went away
            raise
        finally:
            watch.stop()
            raw.close()
            self._finish(exchange, logs)

    # --- errors and the end -------------------------------------------------------------

    def _upstream_error(self, exchange: Exchange, logs: "_Logs", start_response: Callable,
                        error: BaseException) -> list[bytes]:
        if isinstance(error, ClientBodyError):
            return self._error(exchange, logs, start_response, "bad_request", str(error))
        if isinstance(error, requests.exceptions.ConnectTimeout):
            return self._error(exchange, logs, start_response, "upstream_unreachable",
                               f"connecting to the upstream timed out: {error}")
        if isinstance(error, requests.exceptions.ReadTimeout):
            return self._error(exchange, logs, start_response, "upstream_timeout",
                               f"the upstream did not answer in time: {error}")
        if isinstance(error, (requests.exceptions.RequestException, OSError)):
            return self._error(exchange, logs, start_response, "upstream_unreachable",
                               f"the upstream could not be reached: {error}")
        raise error

    def _error(self, exchange: Exchange, logs: "_Logs", start_response: Callable, code: str,
               message: str) -> list[bytes]:
        status_line, headers, body = error_response(code, message, exchange.id)
        exchange.fail(code)
        exchange.status = int(status_line[:3])
        logs.request.close()
        logs.response.write(serialize_head(f"HTTP/1.1 {status_line}", headers))
        logs.response.write(body)
        exchange.count_response(len(body))
        self._finish(exchange, logs)
        start_response(status_line, headers)
        return [body]

    def malformed_request(self, message: str) -> bytes:
        """The whole response to a request the server could not even parse (serving.py)."""
        status_line, headers, body = error_response("bad_request", message, str(uuid.uuid4()))
        return serialize_head(f"HTTP/1.1 {status_line}", [*headers, ("Connection", "close")]) + body

    def _finish(self, exchange: Exchange, logs: "_Logs") -> None:
        exchange.ended_at = time.time()
        logs.close()
        exchange.log_dropped_bytes = logs.dropped
        if logs.enabled:
            self.sink.send_json(exchange.id, "metadata", exchange.metadata())


class _Logs:
    """The request and response log streams of one exchange (null ones when not logged).

    The response stream opens with the response head, not before: a stream complete when
    it starts goes to the lane (sink.py), and a response is complete far more often than
    an exchange's first wait would suggest.
    """

    __slots__ = ("sink", "exchange_id", "enabled", "request", "_response")

    def __init__(self, sink: LogSink | None, exchange_id: str, enabled: bool) -> None:
        self.sink, self.exchange_id, self.enabled = sink, exchange_id, enabled
        self.request = sink.open(exchange_id, "request") if enabled else NullStream()
        self._response: LogStream | NullStream | None = None

    @property
    def response(self) -> "LogStream | NullStream":
        if self._response is None:
            self._response = self.sink.open(self.exchange_id, "response") if self.enabled else NullStream()
        return self._response

    def close(self) -> None:
        self.request.close()
        if self._response is not None:
            self._response.close()

    @property
    def dropped(self) -> int:
        return self.request.dropped + (self._response.dropped if self._response else 0)


class ClientWatch:
    """Notices a client that closes its connection while we wait on the upstream.

    Servers notice only when a write fails, which never happens while the upstream is
    silent (FACTS.md, "Client disconnect"): an LLM thinking for a minute would keep
    generating, and billing, tokens. An event-loop watcher on the client socket fires when
    it becomes readable; a peek then tells a close (b'') from a pipelined request. A loop
    watcher, not a greenlet reading the socket: the server reads the same socket next.
    """

    __slots__ = ("sock", "served", "watcher")

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.served = gevent.getcurrent()
        self.watcher = None

    def start(self) -> None:
        if self.sock is not None and self.watcher is None:
            self.watcher = gevent.get_hub().loop.io(self.sock.fileno(), 1)
            self.watcher.start(self._readable)

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.close()
            self.watcher = None

    def _readable(self) -> None:
        self.stop()
        if _peer_closed(self.sock.fileno()):
            gevent.kill(self.served, ClientGone)


def _peer_closed(fd: int) -> bool:
    """Peek without consuming or blocking, on a duplicate of the descriptor."""
    try:
        with _stdlib_socket.fromfd(fd, _stdlib_socket.AF_INET, _stdlib_socket.SOCK_STREAM) as dup:
            return dup.recv(1, _stdlib_socket.MSG_PEEK | _stdlib_socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _upstream_blocks(raw: Any) -> Iterator[bytes]:
    while block := raw.read1(BLOCK):
        yield block


def _then(blocks: Iterator[bytes], action: Callable[[], None]) -> Iterator[bytes]:
    """The blocks, then `action()` once they are exhausted."""
    yield from blocks
    action()


def _cut(sock: Any) -> None:
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

