"""The proxy's own metrics, on a listener of their own (`server.metrics_port`, off by default).

What the logging server cannot see: log data queued in memory and in the spool, bytes
dropped, exchanges and WebSocket tunnels open now, the upstream connection pool, errors
by code (the refused heads included) and exchanges by route and status as the proxy
answered them, with the logging server up or not.

The hot path only adds to plain ints and dicts (`ProxyCounters`, a few hundred
nanoseconds an exchange, no allocation but a new status's key); everything else is
read from the proxy's own state when Prometheus asks (`ProxyCollector`). So the numbers
are this process's: under gunicorn each worker listens on a port of its own, the first
free one from `server.metrics_port` on (worker ports `metrics_port` to `metrics_port +
workers - 1`), and Prometheus scrapes each, as it would separate instances. A worker that
restarts starts from zero, which Prometheus' rate() takes as a counter reset.
"""
from __future__ import annotations

import errno
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from gevent.pywsgi import WSGIServer
from prometheus_client import ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from orproxy.config import ConfigError
from orproxy.errors import CODES
from orproxy.exchange import Exchange

if TYPE_CHECKING:
    from orproxy.proxy import ProxyApp

NONE = "(none)"  # the label value of an exchange without a route or a status


class ProxyCounters:
    """What the hot path counts: exchanges begun and ended, by route and status, and errors."""

    __slots__ = ("started", "ended", "by_route", "errors")

    def __init__(self) -> None:
        self.started = 0
        self.ended = 0
        self.by_route: dict[str | None, dict[int | None, int]] = {}
        self.errors = dict.fromkeys(CODES, 0)

    def exchange_ended(self, exchange: Exchange) -> None:
        """ExchangeLog.finish's callback: once per exchange, whichever path ended it."""
        self.ended += 1
        route = exchange.route.name if exchange.route is not None else None
        statuses = self.by_route.get(route)
        if statuses is None:
            statuses = self.by_route[route] = {}
        statuses[exchange.status] = statuses.get(exchange.status, 0) + 1
        if exchange.error is not None:
            self.errors[exchange.error] = self.errors.get(exchange.error, 0) + 1

    def refused(self, code: str) -> None:
        """A request refused before it became an exchange (a malformed or slow head)."""
        self.errors[code] = self.errors.get(code, 0) + 1


class ProxyCollector:
    """The metrics of one ProxyApp, read from its state at each scrape."""

    def __init__(self, app: "ProxyApp", counters: ProxyCounters) -> None:
        self.app, self.counters = app, counters

    def collect(self) -> Iterator[Metric]:
        counters, app = self.counters, self.app
        exchanges = CounterMetricFamily("orproxy_exchanges", "Exchanges ended, by route and the status the "
                                        "client got", labels=("route", "status"))
        for route, statuses in list(counters.by_route.items()):
            for status, count in list(statuses.items()):
                exchanges.add_metric((route or NONE, NONE if status is None else str(status)), count)
        yield exchanges
        errors = CounterMetricFamily("orproxy_errors", "Exchanges that ended with a proxy error code, and "
                                     "requests refused before they became one (CONTRACT.md's codes)",
                                     labels=("code",))
        for code, count in list(counters.errors.items()):
            errors.add_metric((code,), count)
        yield errors
        yield GaugeMetricFamily("orproxy_exchanges_in_flight", "Exchanges begun and not yet ended (streams, "
                                "tunnels included)", counters.started - counters.ended)
        yield GaugeMetricFamily("orproxy_websocket_tunnels_open", "WebSocket sessions being tunnelled now",
                                app.websockets.open_tunnels)
        pool = app.pool
        connections = GaugeMetricFamily("orproxy_upstream_connections", "Pooled client connections (to the "
                                        "upstreams and the logging server): idle, and in use", labels=("state",))
        connections.add_metric(("idle",), sum(len(idle) for idle in list(pool.idle.values())))
        connections.add_metric(("in_use",), pool.in_use)
        yield connections
        sink = app.sink
        if sink is None:
            return
        yield GaugeMetricFamily("orproxy_log_queued_bytes", "Log data waiting in memory for the logging server",
                                sink.budget.used)
        spool = sink.spool
        yield GaugeMetricFamily("orproxy_log_spooled_bytes", "Log data waiting on disk, in this process's spool "
                                "segments (its own and those it adopted)",
                                sum(segment.size for segment in spool.segments) if spool is not None else 0)
        yield CounterMetricFamily("orproxy_log_dropped_bytes", "Log bytes dropped: the spool was full (the logs "
                                  "are truncated with a marker)", sink.dropped_bytes)
        yield GaugeMetricFamily("orproxy_logging_server_up", "1 while the logging server takes the log data, "
                                "0 since a batch failed", 0 if sink.down else 1)


def registry_for(app: "ProxyApp", counters: ProxyCounters) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProxyCollector(app, counters))
    ProcessCollector(registry=registry)  # this process's CPU and memory
    return registry


class MetricsListener:
    """`GET /metrics` on its own address; `ports` consecutive ports are tried (gunicorn's
    workers take one each)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int, ports: int = 1) -> None:
        self.registry = registry
        self.server: WSGIServer | None = None
        for candidate in range(port, port + ports) if port else (0,):
            server = WSGIServer((host, candidate), self._app, log=None, error_log=sys.stderr)
            try:
                server.start()
            except OSError as e:
                if e.errno == errno.EADDRINUSE and candidate < port + ports - 1:
                    continue
                raise ConfigError(f"server.metrics_port: cannot listen on {host}:{candidate}: "
                                  f"{e.strerror or e}") from None
            self.server = server
            break
        bound = self.server.socket.getsockname()
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        self.url = f"http://{shown}:{bound[1]}/metrics"
        # Not "listening on": the tests' and scripts' word for the proxy's own port.
        print(f"orproxy: metrics at {self.url}", flush=True)

    def _app(self, environ: dict[str, Any], start_response: Callable) -> list[bytes]:
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "21")])
            return [b"only /metrics is here"]
        if environ["REQUEST_METHOD"] != "GET":
            start_response("405 Method Not Allowed", [("Allow", "GET"), ("Content-Length", "0")])
            return []
        body = generate_latest(self.registry)
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))])
        return [body]

    def close(self) -> None:
        if self.server is not None:
            self.server.stop(timeout=1)
