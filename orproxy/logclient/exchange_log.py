"""ExchangeLog: everything logged of one exchange, owned in one place, for HTTP and WebSocket.

An exchange is logged as three parts (CONTRACT.md, "Logging stream"): its request (the
head as sent upstream, secrets masked, `X-Proxy-Path` last, then the body), its response
(the head as received, masked, then the body or a WebSocket session's message records)
and, once it is over, its metadata. The request stream opens at once; the response stream
with the response head, not before (its file is named by when that came).
`finish()` ends both and sends the metadata, once, whichever path ends it.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from orproxy.exchange import Exchange
from orproxy.headers import Headers, masked, masked_target
from orproxy.http1 import head
from orproxy.logclient.part import NULL_PART, NullPart, Part
from orproxy.logclient.sink import LogSink


class ExchangeLog:
    __slots__ = ("sink", "exchange", "secrets", "request", "_response", "finished", "on_finish")

    def __init__(self, sink: LogSink | None, exchange: Exchange, secrets: frozenset[str],
                 on_finish: Callable[[Exchange], None] | None = None) -> None:
        """`sink` None: the exchange is not logged (logging off, or its route's `logging: false`).
        `on_finish(exchange)` is called once, when it is over (the proxy's metrics count it)."""
        self.sink = sink
        self.on_finish = on_finish
        self.exchange = exchange
        self.secrets = secrets
        self.request: Part | NullPart = sink.open(exchange.id, "request", exchange.started_at) if sink else NULL_PART
        self._response: Part | NullPart | None = None
        self.finished = False

    @property
    def enabled(self) -> bool:
        return self.sink is not None

    @property
    def response(self) -> Part | NullPart:
        if self._response is None:
            self._response = self.sink.open(self.exchange.id, "response", self.exchange.started_at) \
                if self.sink else NULL_PART
        return self._response

    def request_head(self, target: str, headers: Headers, called: str) -> None:
        """The request line and headers as they went upstream (to `target`), secrets masked,
        then `X-Proxy-Path: <called>`, the URL the client called."""
        if self.sink is not None:
            self.request.write(head(f"{self.exchange.method} {masked_target(target)} HTTP/1.1",
                                    [*masked(headers, self.secrets), ("X-Proxy-Path", masked_target(called))]))

    def response_head(self, status_line: str, headers: Headers) -> None:
        """The response's status line and headers as received, secrets masked."""
        if self.sink is not None:
            self.response.write(head(status_line, masked(headers, self.secrets)))

    def end_request(self) -> None:
        """The request went upstream whole (or never will): its log part is complete."""
        self.request.close()

    def finish(self, **extra: Any) -> None:
        """The exchange is over: end both parts, count what they dropped, send the metadata
        (with `extra` entries, e.g. a WebSocket session's). Only the first call counts."""
        if self.finished:
            return
        self.finished = True
        exchange = self.exchange
        if exchange.ended_at is None:
            exchange.ended_at = time.time()
        self.request.close()
        if self._response is not None:
            self._response.close()
        exchange.log_dropped_bytes = self.request.dropped + (self._response.dropped if self._response else 0)
        if self.sink is not None:
            self.sink.send_json(exchange.id, exchange.started_at, {**exchange.metadata(), **extra})
        if self.on_finish is not None:
            self.on_finish(exchange)
