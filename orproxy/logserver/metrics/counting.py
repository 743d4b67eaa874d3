"""The exchanges' metrics (`GET /metrics`): each exchange counted once, whichever worker
process rewrote it last, and however often it is rewritten.

When: once its state is final (complete, or incomplete) and its derived fields are known:
a small exchange in the rewrite that stores the proxy's metadata, a large one in the later
rewrite that stores its derived fields (ingest.DerivedAmended), an exchange that stopped
arriving in the sweeper's. That rewrite marks the document itself, `"counted": <its rev>`,
under the lock that serialises rewrites across processes (`mark`, run inside it); the
process that wrote it counts it right after (`count`, an ingest subscriber), into its own
metric files (files.py). A later rewrite (a batch sent again, derived fields stored twice
by two workers, a late part) finds the mark and counts nothing; a restart or a reindex
counts nothing again. Retention deletes exchanges, never counts.

Label values are bounded: `route` and `model` come from what clients send, so each
process admits at most MAX_ROUTES and MAX_MODELS of them (the rest are "other"), and the
histograms have `route` alone: buckets times models would multiply.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import gevent
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from orproxy.errors import CODES
from orproxy.logserver.llm.pricing import Pricing
from orproxy.logserver.metrics.files import Family, MetricFiles
from orproxy.logserver.store.record import ExchangeRecord

MAX_ROUTES = 100          # route names one process admits as label values
MAX_MODELS = 200          # model names one process admits as label values
LABEL_CHARS = 120         # a longer value is cut
NONE = "(none)"           # the label value of a field an exchange does not have
OTHER = "other"           # ... of one past the bounds
SYNC_EVERY = 2.0          # seconds between writes of this process's gauges and error counts

_SECONDS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
EXCHANGES = Family("orlogserver_exchanges", "Exchanges logged, each counted once when final (complete or "
                   "incomplete) with its derived fields; status is the HTTP status the client got",
                   "counter", ("route", "model", "status"))
ERRORS = Family("orlogserver_exchange_errors", "Exchanges the proxy recorded an error code for (its "
                "metadata's error: upstream_timeout, client_disconnected, ...)", "counter", ("route", "error"))
DURATION = Family("orlogserver_exchange_duration_seconds", "From the proxy receiving the request to the end "
                  "of the response", "histogram", ("route",), _SECONDS)
TTFT = Family("orlogserver_time_to_first_token_seconds", "From the proxy receiving the request to the first "
              "byte of the response body (a streamed answer's first event)", "histogram", ("route",), _SECONDS)
TOKENS = Family("orlogserver_tokens", "Tokens as the upstream reported them: prompt (cached included), "
                "completion (reasoning included), cached, reasoning", "counter", ("model", "kind"))
COST = Family("orlogserver_cost_usd", "Cost in USD (OpenRouter credits); source is the exchange's "
              "cost_source: reported by the upstream, or from the price table", "counter", ("model", "source"))
BYTES = Family("orlogserver_body_bytes", "Body bytes the proxy forwarded: request (to the upstream) and "
               "response (to the client)", "counter", ("route", "direction"))
DROPPED = Family("orlogserver_log_dropped_bytes", "Bytes proxied but not logged (the proxy's spool was full)",
                 "counter", ("route",))
INGEST_LAG = Family("orlogserver_ingest_lag_seconds", "From the proxy's end of an exchange to its final "
                    "rewrite here: delivery (memory, spool), queueing at idle priority, deriving", "histogram",
                    (), (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 3600))
INDEX_QUEUE = Family("orlogserver_index_queue_rows", "Exchanges whose newest metadata waits for the index "
                     "writer (how far the index is behind ingest)", "gauge")
DERIVING = Family("orlogserver_deriving_exchanges", "Exchanges whose fields are being derived in the "
                  "background (large bodies)", "gauge")
INDEX_ERRORS = Family("orlogserver_index_errors", "Index writes that failed (each a batch of rows)", "counter")
DERIVE_ERRORS = Family("orlogserver_derive_errors", "Exchanges whose fields could not be derived", "counter")
FAMILIES = (EXCHANGES, ERRORS, DURATION, TTFT, TOKENS, COST, BYTES, DROPPED, INGEST_LAG, INDEX_QUEUE, DERIVING,
            INDEX_ERRORS, DERIVE_ERRORS)
TOKEN_KINDS = ("prompt", "completion", "cached", "reasoning")


def settled(record: ExchangeRecord, deriving: bool = True) -> bool:
    """Final, with its derived fields: over (or given up on by the sweeper), nothing still
    arriving, and nothing left to derive (`deriving`: the server derives at all)."""
    if record.state == "in_flight":
        return False
    if not (record.ready or record.swept):
        return False  # a part still arriving, or none arrived yet
    return not (deriving and record.ready and record.needs_derive)


class Bounded:
    """A label's admitted values: those seen before (in this slot's file), then new ones up
    to `limit`; past it, OTHER."""

    __slots__ = ("seen", "limit")

    def __init__(self, seen: set[str], limit: int) -> None:
        self.seen, self.limit = seen, limit

    def __call__(self, value: Any) -> str:
        if value is None or value == "":
            return NONE
        text = str(value)[:LABEL_CHARS]
        if text in self.seen:
            return text
        if len(self.seen) >= self.limit:
            return OTHER
        self.seen.add(text)
        return text


def _seconds(start: Any, end: Any) -> float | None:
    if isinstance(start, (int, float)) and isinstance(end, (int, float)) and end >= start:
        return end - start
    return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class ExchangeMetrics:
    """`mark` and `count` hook into ingest (app.py); `serve` answers `GET /metrics`.
    `errors` and `queues` give this process's index and derive error counts and its queue
    lengths, written to its files every SYNC_EVERY seconds and before a scrape."""

    def __init__(self, directory: str, deriving: bool,
                 errors: Callable[[], tuple[int, int]] = lambda: (0, 0),
                 queues: Callable[[], tuple[int, int]] = lambda: (0, 0),
                 pricing: Pricing | None = None) -> None:
        self.files = MetricFiles(directory)
        self.pricing = pricing or Pricing()
        self.deriving = deriving
        self._errors, self._queues = errors, queues
        self._synced_errors = (0, 0)
        self.route = Bounded(self.files.label_values(EXCHANGES, "route"), MAX_ROUTES)
        self.model = Bounded(self.files.label_values(EXCHANGES, "model"), MAX_MODELS)
        for family in (INGEST_LAG, INDEX_QUEUE, DERIVING, INDEX_ERRORS, DERIVE_ERRORS):
            self.files.declare(family)  # listed from the first scrape on
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self.files)
        self._loop = gevent.spawn(self._sync_forever)

    # -- ingest's hooks --------------------------------------------------------------------

    def mark(self, record: ExchangeRecord, events: tuple[Any, ...]) -> None:
        """Inside a rewrite: mark the exchange counted in it, if it has just settled."""
        document = record.document
        if "counted" not in document and settled(record, self.deriving):
            document["counted"] = int(document.get("rev") or 0) + 1  # the rev this rewrite writes (logdir.py)

    def count(self, record: ExchangeRecord, events: tuple[Any, ...]) -> None:
        """After a rewrite: count the exchange if that rewrite marked it."""
        document = record.document
        if document.get("counted") != document.get("rev"):
            return
        proxy, derived = record.proxy, record.derived
        files = self.files
        route = self.route(proxy.get("route"))
        model = self.model(derived.get("model_answered") or derived.get("model_requested"))
        status = proxy.get("status") or record.head("response").get("status")
        files.inc(EXCHANGES, (route, model, str(status) if isinstance(status, int) else NONE))
        error = proxy.get("error")
        if error:
            files.inc(ERRORS, (route, error if error in CODES else OTHER))
        started = proxy.get("started_at")
        duration = _seconds(started, proxy.get("ended_at"))
        if duration is not None:
            files.observe(DURATION, (route,), duration)
        ttft = _seconds(started, proxy.get("first_byte_at"))
        if ttft is not None:
            files.observe(TTFT, (route,), ttft)
        for kind in TOKEN_KINDS:
            tokens = _number(derived.get(f"{kind}_tokens"))
            if tokens:
                files.inc(TOKENS, (model, kind), tokens)
        cost, source = self.pricing.cost({
            "cost": _number(derived.get("cost")), "upstream_url": proxy.get("upstream_url"), "started_at": started,
            "model": derived.get("model_answered") or derived.get("model_requested"),
            **{name: derived.get(name) for name in ("prompt_tokens", "completion_tokens", "cached_tokens",
                                                    "cache_write_tokens")}})
        if cost:
            files.inc(COST, (model, source), cost)
        for direction in ("request", "response"):
            size = _number(proxy.get(f"{direction}_bytes"))
            if size:
                files.inc(BYTES, (route, direction), size)
        dropped = _number(proxy.get("log_dropped_bytes"))
        if dropped:
            files.inc(DROPPED, (route,), dropped)
        lag = _seconds(proxy.get("ended_at"), time.time())
        if lag is not None:
            files.observe(INGEST_LAG, (), lag)

    # -- this process's state --------------------------------------------------------------

    def sync(self) -> None:
        """Write this process's queue lengths and error counts to its files."""
        index_queue, deriving = self._queues()
        self.files.set(INDEX_QUEUE, (), index_queue)
        self.files.set(DERIVING, (), deriving)
        errors = self._errors()
        for family, now, before in zip((INDEX_ERRORS, DERIVE_ERRORS), errors, self._synced_errors):
            if now > before:
                self.files.inc(family, (), now - before)
        self._synced_errors = errors

    def _sync_forever(self) -> None:
        while True:
            gevent.sleep(SYNC_EVERY)
            self.sync()

    # -- GET /metrics ----------------------------------------------------------------------

    def text(self) -> bytes:
        """Every worker's metrics, summed, in Prometheus' text format."""
        self.sync()
        return generate_latest(self._registry)

    def serve(self, environ: dict[str, Any], start_response: Callable) -> list[bytes]:
        body = self.text()
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body))),
                                  ("Cache-Control", "no-store")])
        return [body]

    def close(self) -> None:
        self._loop.kill()
        self.files.close()
