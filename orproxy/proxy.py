"""The proxy's WSGI app: route, forward, stream back, and tee both directions to the log.

The data path reads top to bottom in `handle`: client -> route -> tee -> transport ->
upstream -> tee -> client, with the exchange's log (logclient.ExchangeLog) beside it.
Errors are decided at one boundary (errors.py): before the response head is sent they
become a JSON error; after it, the client connection is cut (never a clean end).
"""
from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import requests

from orproxy.clientwatch import ClientGone, ClientWatch
from orproxy.config import Config
from orproxy.console import ConsoleLog
from orproxy.errors import BY_STATUS, ClientBodyError, before_head, error_response, in_body
from orproxy.exchange import Exchange
from orproxy.headers import HeaderPairs, Headers, header_value, strip_hop_by_hop
from orproxy.hosting.framing import HeadLimits
from orproxy.hosting.handler import RawRequestHandler
from orproxy.hosting.incoming import Incoming
from orproxy.http1 import BLOCK, head
from orproxy.logclient.exchange_log import ExchangeLog
from orproxy.logclient.part import PART_BUDGET
from orproxy.logclient.sink import LogSink
from orproxy.logclient.spool import open_spool
from orproxy.logclient.tee import tee
from orproxy.proxymetrics import MetricsListener, ProxyCounters, registry_for
from orproxy.routes import Route
from orproxy.transport import StreamingAdapter
from orproxy.websocket import WebSocketProxy, is_websocket_upgrade

STREAMING_TYPES = ("text/event-stream", "application/stream+json", "application/x-ndjson")


class ProxyApp:
    """A HostedApp (hosting/app.py): the `orproxy` command and gunicorn serve it."""

    handler_class = RawRequestHandler

    @property
    def limits(self) -> HeadLimits:
        return self.config.limits

    def __init__(self, config: Config, metrics_ports: int = 1) -> None:
        """`metrics_ports`: how many ports from server.metrics_port on the metrics listener
        may try (gunicorn's workers take one each: wsgi.py)."""
        self.config = config
        self.session = requests.Session()
        self.session.trust_env = False  # never proxy env variables: they cost 25% CPU (FACTS.md)
        adapter = StreamingAdapter()
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.pool = adapter.pool
        self.sink = LogSink(config.server_url, adapter, spool=open_spool(config), token=config.log_token) \
            if config.logging_enabled else None
        self.console = ConsoleLog(config.console, config.log_file)
        self.websockets = WebSocketProxy()
        if not len(config.routes):  # allowed only with logging.default (config.py)
            print("orproxy: no routes: every request is answered 404 and logged (logging.default)",
                  file=sys.stderr, flush=True)
        self.counters: ProxyCounters | None = None  # None: no metrics, nothing counted
        self.metrics: MetricsListener | None = None
        if config.metrics_port is not None:
            self.counters = ProxyCounters()
            self.metrics = MetricsListener(registry_for(self, self.counters), config.metrics_host,
                                           config.metrics_port, metrics_ports)

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Any:
        return self.handle(Incoming(environ), start_response)

    def handle(self, incoming: Incoming, start_response: Callable) -> Any:
        exchange = Exchange(incoming.method, incoming.target, incoming.client_addr)
        route = exchange.route = self.config.routes.match(incoming.path)
        self.console.request(exchange)
        logged = route.logging if route else self.config.log_unrouted
        counters = self.counters
        if counters is not None:
            counters.started += 1
        log = ExchangeLog(self.sink if logged else None, exchange, self.config.redact_headers,
                          counters.exchange_ended if counters is not None else None)
        called = f"http://{incoming.host}{exchange.target}"
        if route is None:
            log.request_head(exchange.target, incoming.headers, called)
            return self._error(exchange, log, None, start_response, "no_route",
                               f"no route matches {incoming.path}")
        exchange.upstream_url = route.origin + route.upstream_target(exchange.target)
        if is_websocket_upgrade(incoming.headers):  # issue 5: the tunnel and its message log
            return self.websockets.serve(exchange, incoming, log, lambda code, message:
                                         self._error(exchange, log, None, start_response, code, message))
        try:
            upstream_headers, body = upstream_request(route, incoming)
        except ValueError as e:
            return self._error(exchange, log, None, start_response, "bad_request", str(e))
        log.request_head(route.upstream_target(exchange.target), upstream_headers, called)

        watch = ClientWatch(incoming.socket)

        def request_sent() -> None:  # the whole body went upstream: its log is complete
            log.end_request()
            watch.start()

        if body is None:
            request_sent()
        else:
            body = _then(tee(body, log.request, exchange.count_request), request_sent)
        request = requests.PreparedRequest()
        request.method, request.url, request.headers, request.body = (
            exchange.method, exchange.upstream_url, HeaderPairs(upstream_headers), body)
        try:
            response = self.session.get_adapter(request.url).send(
                request, stream=True, timeout=(route.connect_timeout, route.read_timeout))
        except ClientGone:
            exchange.fail("client_disconnected")
            self._finish(log, watch)
            raise
        except BaseException as e:
            failure = before_head(e)
            if failure is None:
                self._finish(log, watch)
                raise
            if body is not None and failure[0] != "bad_request":
                self._read_rest(body)
            return self._error(exchange, log, watch, start_response, *failure)
        log.end_request()
        return self._respond(exchange, log, response, watch, incoming, start_response)

    # --- the HostedApp hooks ------------------------------------------------------------

    def malformed_request(self, message: str, status: str = "400 Bad Request") -> bytes:
        """The whole response to a request refused before it could be forwarded."""
        code = BY_STATUS.get(status, "bad_request")
        if self.counters is not None:
            self.counters.refused(code)
        status_line, headers, body = error_response(code, message, str(uuid.uuid4()))
        return head(f"HTTP/1.1 {status_line}", [*headers, ("Connection", "close")]) + body

    def begin_shutdown(self) -> None:
        """Nothing of the proxy runs for ever: in-flight exchanges finish on their own."""

    def drain(self, timeout: float) -> None:
        """Let queued log data reach the logging server (what cannot goes to the spool)."""
        if self.sink is not None:
            self.sink.drain(timeout)

    def close(self) -> None:
        """Stop the log's sender and close every connection (an app served in a test's own
        process; a process that exits needs none of it)."""
        if self.sink is not None:
            self.sink.close()
        if self.metrics is not None:
            self.metrics.close()
        self.session.close()

    # --- the response -------------------------------------------------------------------

    def _respond(self, exchange: Exchange, log: ExchangeLog, response: requests.Response,
                 watch: ClientWatch, incoming: Incoming, start_response: Callable) -> Iterator[bytes]:
        raw = response.raw
        exchange.upstream_headers_at = time.time()
        exchange.status = response.status_code
        pairs = list(raw.headers.items())
        content_type = (header_value(pairs, "content-type") or "").lower()
        exchange.streamed = content_type.startswith(STREAMING_TYPES) or (
            header_value(pairs, "content-length") is None and exchange.method != "HEAD"
            and response.status_code not in (204, 304))
        version = f"{raw.version // 10}.{raw.version % 10}"
        log.response_head(f"HTTP/{version} {response.status_code} {response.reason}", pairs)
        headers = strip_hop_by_hop(pairs)
        headers.append(("X-Request-Id", exchange.id))
        write = start_response(f"{response.status_code} {response.reason}", headers)
        # orproxy's transport says when body bytes are here already, so that the head goes
        # out with them in one write; with any other adapter, send the head at once: the
        # first body bytes may be a long way off.
        if not getattr(raw, "has_buffered", False):
            write(b"")
        return self._relay(exchange, log, raw, watch, incoming)

    def _relay(self, exchange: Exchange, log: ExchangeLog, raw: Any, watch: ClientWatch,
               incoming: Incoming) -> Iterator[bytes]:
        try:
            yield from tee(_upstream_blocks(raw), log.response, exchange.count_response)
        except ClientGone:
            exchange.fail("client_disconnected")
        except GeneratorExit:
            exchange.fail("client_disconnected")  # the server closed us: the client went away
            raise
        except Exception as e:
            code = in_body(e)
            if code is None:
                raise
            watch.stop()  # before the cut, which makes the client socket readable
            exchange.fail(code)
            incoming.cut()  # the client must see an incomplete response
        finally:
            raw.close()
            self._finish(log, watch)

    # --- errors and the end -------------------------------------------------------------

    def _read_rest(self, body: Iterator[bytes]) -> None:
        """The upstream failed before it took the request's body: read the rest from the
        client anyway, so that the log holds the request whole (CONTRACT.md), up to as much
        as the log could keep (the spool's bound). A body that breaks off ends it."""
        limit, read = max(PART_BUDGET, self.config.spool_max_bytes), 0
        try:
            for block in body:
                read += len(block)
                if read >= limit:
                    return
        except ClientBodyError:
            pass

    def _error(self, exchange: Exchange, log: ExchangeLog, watch: ClientWatch | None,
               start_response: Callable, code: str, message: str) -> list[bytes]:
        status_line, headers, body = error_response(code, message, exchange.id)
        if code == "bad_request":  # the body broke off: what follows on the connection is no request
            headers.append(("Connection", "close"))
        exchange.fail(code)
        exchange.status = int(status_line[:3])
        log.end_request()
        log.response_head(f"HTTP/1.1 {status_line}", headers)
        log.response.write(body)
        exchange.count_response(len(body))
        self._finish(log, watch)
        start_response(status_line, headers)
        return [body]

    @staticmethod
    def _finish(log: ExchangeLog, watch: ClientWatch | None) -> None:
        if watch is not None:
            watch.stop()
        log.finish()


def upstream_request(route: Route, incoming: Incoming) -> tuple[Headers, Iterator[bytes] | None]:
    """The headers and body to send upstream; ValueError for a malformed request."""
    headers = incoming.headers
    length_text = header_value(headers, "content-length")
    chunked = "chunked" in (header_value(headers, "transfer-encoding") or "").lower()
    length = None
    if length_text is not None:
        if not length_text.isdigit():
            raise ValueError(f"invalid Content-Length: {length_text!r}")
        length = int(length_text)
    forwarded = strip_hop_by_hop(headers)
    host_at = next((i for i, (n, _) in enumerate(forwarded) if n.lower() == "host"), None)
    if host_at is None:
        forwarded.insert(0, ("Host", route.netloc))
    else:
        forwarded[host_at] = (forwarded[host_at][0], route.netloc)
    if chunked:  # RFC 9112 6.3: chunked wins over a Content-Length sent with it
        forwarded = [(n, v) for n, v in forwarded if n.lower() != "content-length"]
        forwarded.append(("Transfer-Encoding", "chunked"))
        return forwarded, incoming.body(None)
    if length:
        return forwarded, incoming.body(length)
    return forwarded, None


def _upstream_blocks(raw: Any) -> Iterator[bytes]:
    while block := raw.read1(BLOCK, decode_content=False):
        yield block


def _then(blocks: Iterator[bytes], action: Callable[[], None]) -> Iterator[bytes]:
    """The blocks, then `action()` once they are exhausted."""
    yield from blocks
    action()
