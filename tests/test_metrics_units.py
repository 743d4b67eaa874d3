"""The metrics' pure parts, no sockets: the shared metric files (slots, sums, live gauges),
when an exchange counts and that it counts once (real ingest of logwire batches into a
log dir), the bounded labels, the proxy's collector, and the example Grafana dashboard."""
import json
import re
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from orproxy import logwire
from orproxy.logserver.llm import derive
from orproxy.logserver.metrics import counting
from orproxy.logserver.metrics.counting import ExchangeMetrics, settled
from orproxy.logserver.metrics.files import Family, MetricFiles
from orproxy.logserver.store.appends import Appends
from orproxy.logserver.store.deriving import Deriver
from orproxy.logserver.store.ingest import Ingest
from orproxy.logserver.store.logdir import LogDir
from orproxy.logserver.store.record import ExchangeRecord
from orproxy.proxymetrics import ProxyCollector, ProxyCounters

DASHBOARD = Path(__file__).resolve().parents[1] / "docs" / "grafana-dashboard.json"
HITS = Family("t_hits", "hits", "counter", ("route",))
QUEUE = Family("t_queue", "queue", "gauge")
WAIT = Family("t_wait_seconds", "wait", "histogram", (), (0.1, 1.0))


def samples(metrics):
    """{(sample name, sorted label items): value} of collected or scraped metric families."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for m in metrics for s in m.samples}


def scraped(text):
    return samples(text_string_to_metric_families(text.decode() if isinstance(text, bytes) else text))


# -- the shared files ---------------------------------------------------------------------------


def test_two_processes_take_two_slots_and_a_scrape_of_either_sums_both(tmp_path):
    a, b = MetricFiles(str(tmp_path)), MetricFiles(str(tmp_path))
    try:
        assert (a.slot, b.slot) == (0, 1)
        a.inc(HITS, ("x",), 3)
        b.inc(HITS, ("x",), 4)
        b.inc(HITS, ("y",))
        a.observe(WAIT, (), 0.5)
        b.observe(WAIT, (), 0.05)
        b.observe(WAIT, (), 7)
        for files in (a, b):
            got = samples(files.collect())
            assert got[("t_hits_total", (("route", "x"),))] == 7
            assert got[("t_hits_total", (("route", "y"),))] == 1
            assert got[("t_wait_seconds_count", ())] == 3
            assert [got[("t_wait_seconds_bucket", (("le", le),))] for le in ("0.1", "1.0", "+Inf")] == [1, 2, 3]
            assert got[("t_wait_seconds_sum", ())] == pytest.approx(7.55)
    finally:
        a.close()
        b.close()


def test_a_new_process_takes_a_free_slot_and_goes_on_from_its_counts(tmp_path):
    first = MetricFiles(str(tmp_path))
    first.inc(HITS, ("x",), 5)
    first.close()  # the worker died
    second = MetricFiles(str(tmp_path))
    try:
        assert second.slot == 0
        second.inc(HITS, ("x",), 1)
        assert samples(second.collect())[("t_hits_total", (("route", "x"),))] == 6
        assert second.label_values(HITS, "route") == {"x"}
    finally:
        second.close()


def test_gauges_of_a_dead_process_are_not_summed(tmp_path):
    live, dead = MetricFiles(str(tmp_path)), MetricFiles(str(tmp_path))
    try:
        live.set(QUEUE, (), 2)
        dead.set(QUEUE, (), 40)
        assert samples(live.collect())[("t_queue", ())] == 42
        dead.close()
        assert samples(live.collect())[("t_queue", ())] == 2
        reborn = MetricFiles(str(tmp_path))  # takes the dead one's slot: its gauges start at 0
        try:
            assert reborn.slot == dead.slot
            reborn.declare(QUEUE)
            assert samples(live.collect())[("t_queue", ())] == 2
        finally:
            reborn.close()
    finally:
        live.close()


def test_a_label_admits_a_bounded_number_of_values():
    model = counting.Bounded({"a"}, 2)
    assert [model("a"), model("b"), model("c"), model(None), model("b"), model("x" * 500)] == \
        ["a", "b", "other", "(none)", "b", "other"]


# -- when an exchange counts: real ingest of the proxy's batches ----------------------------------


def batch(exchange_id, model="m-1", status=200, usage=None, proxy=None, parts=("request", "response", "metadata")):
    """One exchange as the proxy sends it: its request, response and metadata records."""
    t0 = time.time() - 2
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: up\r\n\r\n"
               + json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode())
    answer = {"model": model, "choices": [{"message": {"role": "assistant", "content": "yo"}, "finish_reason": "stop"}],
              "usage": usage or {"prompt_tokens": 12, "completion_tokens": 150}}
    response = b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\n\r\n%s" % (status, json.dumps(answer).encode())
    metadata = json.dumps(dict({"route": "a", "status": status, "started_at": t0, "first_byte_at": t0 + 0.3,
                                "ended_at": t0 + 1.2, "request_bytes": 70, "response_bytes": 170},
                               **(proxy or {}))).encode()
    out = b""
    for kind, data in (("request", request), ("response", response)):
        if kind in parts:
            out += logwire.append_head(exchange_id, kind, t0, t0, 0, len(data), True) + data
    if "metadata" in parts:
        out += logwire.metadata_head(exchange_id, len(metadata)) + metadata
    return out


@pytest.fixture
def ingest(tmp_path):
    """Two 'worker processes' on one log dir: each its ingest, its metric slot."""
    log_dir = LogDir(str(tmp_path / "logs"))
    workers = []
    for _ in range(2):
        deriver = Deriver(log_dir)
        ing = Ingest(log_dir, deriver)
        metrics = ExchangeMetrics(str(tmp_path / "logs" / ".ids" / "metrics"), deriving=True)
        ing.mark_in_rewrite(metrics.mark)
        ing.subscribe(metrics.count)
        workers.append(SimpleNamespace(appends=Appends(ing), metrics=metrics, deriver=deriver))
    yield workers
    for w in workers:
        w.metrics.close()
        w.appends.close()
        w.deriver.pool.kill()
    log_dir.close()


def test_an_exchange_counts_once_whichever_worker_gets_its_parts_and_however_often_they_come(ingest):
    first, second = ingest
    ids = [str(uuid.uuid4()) for _ in range(3)]
    for rid in ids:
        body = batch(rid)
        first.appends.take(body)
        second.appends.take(body)  # the batch sent again (its ack was lost), to another worker
    split = str(uuid.uuid4())  # parts to one worker, the proxy's metadata to the other
    first.appends.take(batch(split, status=404, parts=("request", "response")))
    assert scraped(first.metrics.text()).get(("orlogserver_exchanges_total", (
        ("model", "m-1"), ("route", "a"), ("status", "404")))) is None  # not over yet: not counted
    second.appends.take(batch(split, status=404, parts=("metadata",)))
    for worker in ingest:
        got = scraped(worker.metrics.text())
        assert got[("orlogserver_exchanges_total", (("model", "m-1"), ("route", "a"), ("status", "200")))] == 3
        assert got[("orlogserver_exchanges_total", (("model", "m-1"), ("route", "a"), ("status", "404")))] == 1
        assert got[("orlogserver_tokens_total", (("kind", "completion"), ("model", "m-1")))] == 600
        assert got[("orlogserver_tokens_total", (("kind", "prompt"), ("model", "m-1")))] == 48
        assert got[("orlogserver_exchange_duration_seconds_count", (("route", "a"),))] == 4
        assert got[("orlogserver_exchange_duration_seconds_bucket", (("le", "1.0"), ("route", "a")))] == 0
        assert got[("orlogserver_exchange_duration_seconds_bucket", (("le", "2.5"), ("route", "a")))] == 4
        assert got[("orlogserver_time_to_first_token_seconds_bucket", (("le", "0.25"), ("route", "a")))] == 0
        assert got[("orlogserver_time_to_first_token_seconds_bucket", (("le", "0.5"), ("route", "a")))] == 4
        assert got[("orlogserver_body_bytes_total", (("direction", "response"), ("route", "a")))] == 4 * 170
        assert got[("orlogserver_ingest_lag_seconds_count", ())] == 4


def test_cost_follows_the_derived_fields_with_its_source(ingest):
    worker = ingest[0]
    worker.appends.take(batch(str(uuid.uuid4()), model="or/m", usage={"prompt_tokens": 1, "completion_tokens": 2,
                                                                        "cost": 0.125}))
    worker.appends.take(batch(str(uuid.uuid4()), model="or/m", usage={"prompt_tokens": 1, "completion_tokens": 2,
                                                                        "cost": 0.25}))
    got = scraped(worker.metrics.text())
    assert got[("orlogserver_cost_usd_total", (("model", "or/m"), ("source", "reported")))] == pytest.approx(0.375)


def test_a_cost_from_the_price_table_is_counted_with_that_source(ingest):
    worker = ingest[0]
    worker.appends.take(batch(str(uuid.uuid4()), model="gpt-4o", usage={"prompt_tokens": 1_000_000,
                                                                          "completion_tokens": 0}))
    got = scraped(worker.metrics.text())
    assert got[("orlogserver_cost_usd_total", (("model", "gpt-4o"), ("source", "price_table")))] > 0


def record(**document):
    return ExchangeRecord(dict({"id": str(uuid.uuid4()), "parts": {}}, **document))


def test_an_exchange_settles_when_final_with_its_derived_fields():
    ended = {"file": "x", "complete": True, "completed_at": 1.0}
    current = {"version": derive.VERSION, "parts": ["request", "response"]}
    both = {"request": dict(ended), "response": dict(ended)}
    assert not settled(record(parts=both))                                   # in flight: no proxy metadata
    assert settled(record(parts=both, proxy={}, derived=current))            # over, derived
    assert not settled(record(parts=both, proxy={}))                         # over, derived later (large)
    assert settled(record(parts=both, proxy={}), deriving=False)             # a server that derives nothing
    assert not settled(record(proxy={}))                                     # the proxy's word alone: parts to come
    arriving = {"request": dict(ended), "response": {"file": "y", "complete": False}}
    assert not settled(record(parts=arriving, proxy={}, derived=current))    # a part still arriving
    assert settled(record(parts=arriving, swept={"at": 1, "reason": "r"}))   # ... that the sweeper gave up on


# -- the proxy's collector ----------------------------------------------------------------------


def proxy_metric_names():
    counters = ProxyCounters()
    exchange = SimpleNamespace(route=SimpleNamespace(name="a"), status=502, error="upstream_unreachable")
    counters.started += 2
    counters.exchange_ended(exchange)
    counters.refused("headers_too_large")
    app = SimpleNamespace(websockets=SimpleNamespace(open_tunnels=1),
                          pool=SimpleNamespace(idle={("http", "x", 1): [object(), object()]}, in_use=3),
                          sink=SimpleNamespace(budget=SimpleNamespace(used=10), spool=SimpleNamespace(
                              segments=[SimpleNamespace(size=7), SimpleNamespace(size=5)]), dropped_bytes=4, down=True))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProxyCollector(app, counters))
    return scraped(generate_latest(registry))


def test_the_proxy_collector_reads_the_proxys_state():
    got = proxy_metric_names()
    assert got[("orproxy_exchanges_total", (("route", "a"), ("status", "502")))] == 1
    assert got[("orproxy_errors_total", (("code", "upstream_unreachable"),))] == 1
    assert got[("orproxy_errors_total", (("code", "headers_too_large"),))] == 1
    assert got[("orproxy_errors_total", (("code", "no_route"),))] == 0  # every code listed
    assert got[("orproxy_exchanges_in_flight", ())] == 1
    assert got[("orproxy_upstream_connections", (("state", "idle"),))] == 2
    assert got[("orproxy_upstream_connections", (("state", "in_use"),))] == 3
    assert (got[("orproxy_log_queued_bytes", ())], got[("orproxy_log_spooled_bytes", ())]) == (10, 12)
    assert (got[("orproxy_log_dropped_bytes_total", ())], got[("orproxy_logging_server_up", ())]) == (4, 0)


# -- the example dashboard ----------------------------------------------------------------------


def logserver_metric_names(tmp_path):
    metrics = ExchangeMetrics(str(tmp_path / "m"), deriving=False)
    try:
        for family in counting.FAMILIES:
            labels = tuple("x" for _ in family.labels)
            if family.kind == "histogram":
                metrics.files.observe(family, labels, 1.0)
            else:
                metrics.files.declare(family, labels)
        return {name for name, _ in scraped(metrics.text())}
    finally:
        metrics.close()


def test_the_grafana_dashboard_imports_and_queries_only_metrics_that_exist(tmp_path):
    dashboard = json.loads(DASHBOARD.read_text())
    variables = dashboard["templating"]["list"]
    assert {"name": "datasource", "type": "datasource", "query": "prometheus"}.items() <= variables[0].items()
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    exposed = logserver_metric_names(tmp_path) | {name for name, _ in proxy_metric_names()}
    queried = set()
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            queried |= set(re.findall(r"\b(?:orproxy|orlogserver)_[a-z_]+", target["expr"]))
    assert len(queried) >= 15
    assert queried <= exposed, queried - exposed
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("route", "latency", "first token", "tokens", "cost", "ingest lag", "spool", "errors"):
        assert topic in titles, topic
