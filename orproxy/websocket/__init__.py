"""WebSocket upgrades: the tunnel to the upstream, and the log of its messages (issue 5).

A request with `Upgrade: websocket` on a route is replayed upstream (`ws://` for an
`http://` destination, `wss://` with certificate checks for `https://`) under HTTP's routing
and header rules, the upgrade headers kept (handshake.py). The upstream's answer goes back
byte for byte plus `X-Request-Id`. After a 101 the proxy owns the client connection: two
greenlets copy bytes both ways as they arrive, parsing nothing (tunnel.py), so the tunnel
adds no framing latency.

The log sits beside the tunnel, never in it: each pump hands the bytes it has just
forwarded to a MessageLog (messagelog.py), which decodes them in its own time into message
records on the exchange's response stream, after the 101 head.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import requests
from gevent import socket

from orproxy.connections import open_connection, tls_context
from orproxy.errors import TUNNEL_ENDS, before_head
from orproxy.exchange import Exchange
from orproxy.hosting.incoming import Incoming
from orproxy.http1 import ResponseParser, head, split_url
from orproxy.logclient.exchange_log import ExchangeLog
from orproxy.websocket.handshake import (handshake, is_websocket_upgrade, pass_refusal, upstream_headers,
                                         with_request_id)
from orproxy.websocket.messagelog import MessageLog
from orproxy.websocket.tunnel import Tunnel, shutdown

__all__ = ["WebSocketProxy", "is_websocket_upgrade"]

DRAIN_TIMEOUT = 5.0                # seconds the decoder gets to finish after the tunnel ended


class WebSocketProxy:
    """Serves upgrade requests for ProxyApp: handshake, tunnel, log, metadata."""

    def __init__(self) -> None:
        self.tls = tls_context()  # the same trust as the HTTP transport
        self.open_tunnels = 0     # sessions being relayed now (the proxy's metrics)

    def serve(self, exchange: Exchange, incoming: Incoming, log: ExchangeLog,
              error: Callable[[str, str], Any]) -> Any:
        """Tunnel one session; returns what the WSGI server must get back.

        Until the upstream has answered, failures go to `error(code, message)` (ProxyApp's
        JSON errors). From then on the client connection is ours, and the server is told to
        leave it alone.
        """
        origin, netloc, target = split_url(exchange.upstream_url)
        forwarded = upstream_headers(incoming.headers, netloc)
        log.request_head(target, forwarded, f"ws://{incoming.host}{exchange.target}")
        log.end_request()
        route = exchange.route
        try:
            upstream = open_connection(*origin, route.connect_timeout, self.tls)
            try:
                answer, raw_head, rest = handshake(
                    upstream, head(f"{exchange.method} {target} HTTP/1.1", forwarded), route.read_timeout)
            except BaseException:
                upstream.close()
                raise
        except (requests.exceptions.RequestException, OSError) as e:
            return error(*before_head(e))

        exchange.upstream_headers_at = time.time()
        exchange.status = answer.status
        exchange.streamed = answer.status == 101
        log.response_head(f"HTTP/{answer.version} {answer.status} {answer.reason}", answer.headers)
        try:
            client, from_client = incoming.take_connection()
        except BaseException:
            upstream.close()
            raise
        session: dict[str, Any] = {}
        try:
            client.sendall(with_request_id(raw_head, exchange.id))
            if answer.status == 101:
                self._tunnel(exchange, log, client, upstream, answer, from_client, rest, session)
            else:
                pass_refusal(exchange, log, client, upstream, answer, rest)
        except OSError:
            exchange.fail("client_disconnected")
        finally:
            upstream.close()
            shutdown(client, socket.SHUT_RDWR)  # the server closes it: it still holds it
            log.finish(**({"websocket": session} if session else {}))
        return incoming.handed_over()

    def _tunnel(self, exchange: Exchange, log: ExchangeLog, client: socket.socket, upstream: socket.socket,
                answer: ResponseParser, from_client: bytes, from_upstream: bytes,
                session: dict[str, Any]) -> None:
        """Relay until the session ends; `session` gets its metadata, even when the server
        stops us midway."""
        extensions = ", ".join(v for n, v in answer.headers if n.lower() == "sec-websocket-extensions")
        messages = MessageLog(log.response, log.sink.budget, extensions) if log.enabled else None
        tunnel = Tunnel(client, upstream, exchange.route.read_timeout, messages.tap if messages else None)
        opened = time.time()
        self.open_tunnels += 1
        try:
            tunnel.run(from_client, from_upstream)
        finally:
            self.open_tunnels -= 1
            if messages is not None:
                messages.finish(DRAIN_TIMEOUT)
            ended = tunnel.ended or "proxy stopped"
            if ended in TUNNEL_ENDS:
                exchange.fail(TUNNEL_ENDS[ended])
            exchange.request_bytes = tunnel.bytes["client"]
            exchange.response_bytes = tunnel.bytes["upstream"]
            session.update(ended=ended, duration=round(time.time() - opened, 6))
            for direction in ("client", "upstream"):
                session[direction] = {"bytes": tunnel.bytes[direction]}
                if messages is not None:
                    session[direction].update(messages.decoders[direction].counts())
