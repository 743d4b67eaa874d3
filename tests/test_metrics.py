"""Prometheus metrics through the real programs: the logging server's `GET /metrics` counts
what went through the real proxy, exactly once, under orlogserver and under gunicorn -w 2,
across a restart and a resent upload; the proxy's own listener is off by default, and on
when configured (its counts, errors, open streams, and its spool while the logging server
is away). Each test has a logging server of its own: its counters start at zero."""
import http.client
import json
import re
import socket
import time
import uuid
from pathlib import Path

import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from servers import STARTUP_TIMEOUT, LogServer
from helpers import free_port, http_request, socket_inodes, start_gunicorn, wait_until
from log_helpers import send

TOKEN = "metrics-token-123"
CHAT = {"model": "m-json", "messages": [{"role": "user", "content": "Say hi"}]}
STREAM = {"model": "m-sse", "stream": True, "stream_options": {"include_usage": True},
          "messages": [{"role": "user", "content": "Count"}]}


def samples(text):
    """{(sample name, sorted label items): value}, as prometheus_client's parser reads them."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape(url, token=None):
    headers = {"Authorization": "Bearer " + token} if token else {}
    status, response_headers, body = http_request("GET", url, headers=headers)
    assert status == 200, body
    assert dict(response_headers)["Content-Type"].startswith("text/plain; version=")
    return samples(body.decode())


def wait_scrape(url, predicate, timeout=20.0, token=None):
    """Scrape until ``predicate(samples)`` holds; return those samples."""
    box = {}

    def check():
        box["last"] = scrape(url, token)
        return box["last"] if predicate(box["last"]) else None
    try:
        return wait_until(check, timeout, 0.1, "metrics condition")
    except AssertionError as e:
        if "timed out" not in str(e):
            raise
        raise AssertionError("metrics never matched; last scrape: %s" % json.dumps(
            {"%s%s" % k: v for k, v in box.get("last", {}).items() if "bucket" not in k[0]}, indent=0)) from None


def total(got, name, **labels):
    """The sum of a metric's samples whose labels include ``labels``."""
    return sum(v for (n, items), v in got.items() if n == name and set(labels.items()) <= set(items))


def value(got, name, **labels):
    return got.get((name, tuple(sorted(labels.items()))))


def routes(fake_upstream):
    return [{"source": "/a/", "destination": fake_upstream.url + "/", "name": "a"},
            {"source": "/b/", "destination": fake_upstream.url + "/", "name": "b"}]


def post_json(url, path, payload):
    status, headers, body = http_request("POST", url + path, json.dumps(payload).encode(),
                                         {"Content-Type": "application/json"})
    return status, dict(headers)["X-Request-Id"], body


def send_traffic(proxy_url):
    """The traffic the tests count: route a 5 JSON chats and 2 streamed (200), 3 404s; route
    b 2 503s. Returns the request ids."""
    ids = []
    for _ in range(5):
        status, rid, _ = post_json(proxy_url, "/a/chat/completions", CHAT)
        assert status == 200
        ids.append(rid)
    for _ in range(2):
        status, rid, body = post_json(proxy_url, "/a/chat/completions?events=5", STREAM)
        assert status == 200 and b"[DONE]" in body
        ids.append(rid)
    for path, code, n in (("/a/status/404", 404, 3), ("/b/status/503", 503, 2)):
        for _ in range(n):
            status, _, _, rid = send(proxy_url, "GET", path)
            assert status == code
            ids.append(rid)
    return ids


def expect_traffic(got):
    """The counts of send_traffic's exchanges, exactly."""
    assert value(got, "orlogserver_exchanges_total", route="a", model="m-json", status="200") == 5
    assert value(got, "orlogserver_exchanges_total", route="a", model="m-sse", status="200") == 2
    assert value(got, "orlogserver_exchanges_total", route="a", model="(none)", status="404") == 3
    assert value(got, "orlogserver_exchanges_total", route="b", model="(none)", status="503") == 2
    assert total(got, "orlogserver_exchanges_total") == 12
    # the fake upstream's usage: 12 prompt + 150 completion tokens a JSON chat, 12 + 5 a stream
    assert value(got, "orlogserver_tokens_total", model="m-json", kind="prompt") == 60
    assert value(got, "orlogserver_tokens_total", model="m-json", kind="completion") == 750
    assert value(got, "orlogserver_tokens_total", model="m-sse", kind="prompt") == 24
    assert value(got, "orlogserver_tokens_total", model="m-sse", kind="completion") == 10
    for name in ("orlogserver_exchange_duration_seconds", "orlogserver_time_to_first_token_seconds"):
        assert value(got, name + "_count", route="a") == 10
        assert value(got, name + "_count", route="b") == 2
        assert value(got, name + "_bucket", route="a", le="+Inf") == 10
    assert value(got, "orlogserver_ingest_lag_seconds_count") == 12
    assert total(got, "orlogserver_exchange_errors_total") == 0


def expect_matches_the_index(got, url):
    """Durations and bytes sum to what the index lists for the same exchanges (once it
    lists them whole: the metrics count at ingest, the index writes a moment later)."""
    def listed():
        items = json.loads(http_request("GET", url + "/api/requests?limit=1000")[2])["items"]
        return items if len(items) == 12 and all(i["state"] == "complete" for i in items) else None
    items = wait_until(listed, 10, 0.05, "the 12 exchanges indexed whole")
    duration = sum(i["duration_ms"] for i in items if i["route"] == "a") / 1000
    assert value(got, "orlogserver_exchange_duration_seconds_sum", route="a") == pytest.approx(duration, abs=1e-3)
    for direction in ("request", "response"):
        for route in ("a", "b"):
            listed = sum(i[direction + "_bytes"] for i in items if i["route"] == route)
            assert value(got, "orlogserver_body_bytes_total", route=route, direction=direction) == (listed or None)


@pytest.fixture
def own_logserver(make_logserver):
    return make_logserver()


def test_metrics_count_what_the_proxy_sent_once_through_a_restart_and_a_resend(make_proxy, fake_upstream,
                                                                              own_logserver):
    proxy = make_proxy(routes=routes(fake_upstream), logging={"server_url": own_logserver.url})
    ids = send_traffic(proxy.url)
    url = own_logserver.url + "/metrics"
    got = wait_scrape(url, lambda s: total(s, "orlogserver_exchanges_total") >= 12)
    expect_traffic(got)
    expect_matches_the_index(got, own_logserver.url)
    assert value(got, "orlogserver_index_errors_total") == 0 and value(got, "orlogserver_derive_errors_total") == 0
    assert value(got, "orlogserver_index_queue_rows") is not None

    # the proxy's metadata sent again (a batch whose ack was lost), and a restart: nothing twice
    metadata = own_logserver.wait_for_metadata(ids[0])
    assert metadata["counted"] <= metadata["rev"]
    status, _, _ = http_request("PUT", "%s/%s/metadata" % (own_logserver.url, ids[0]),
                                json.dumps(metadata["proxy"]).encode())
    assert status == 201
    own_logserver.stop()
    own_logserver.start()
    time.sleep(0.5)
    after = scrape(url)
    expect_traffic(after)
    assert {k: v for k, v in after.items() if k[0].startswith("orlogserver_exchange")} == \
        {k: v for k, v in got.items() if k[0].startswith("orlogserver_exchange")}


def test_a_large_exchange_counts_once_its_fields_are_derived_with_its_cost(own_logserver):
    """A response over the inline limit gets its fields in a later rewrite (DerivedAmended):
    it is counted then, by its model, with its tokens and the cost the upstream reported."""
    rid = str(uuid.uuid4())
    chunk = ('data: {"id":"c","object":"chat.completion.chunk","model":"big-model","choices":[{"index":0,'
             '"delta":{"content":"token "},"finish_reason":null}]}\n\n')
    end = ('data: {"id":"c","object":"chat.completion.chunk","model":"big-model","choices":[],"usage":'
           '{"prompt_tokens":3,"completion_tokens":4000,"total_tokens":4003,"cost":0.5}}\n\ndata: [DONE]\n\n')
    body = (chunk * 4000 + end).encode()
    assert len(body) > 256 * 1024
    put = lambda kind, data: http_request("PUT", "%s/%s/%s" % (own_logserver.url, rid, kind), data)[0]  # noqa: E731
    assert put("request", b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n"
               + json.dumps(dict(CHAT, model="big-model", stream=True)).encode()) == 201
    assert put("response", b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + body) == 201
    t0 = time.time() - 3
    assert put("metadata", json.dumps({"route": "big", "status": 200, "started_at": t0, "first_byte_at": t0 + 1,
                                       "ended_at": t0 + 2, "streamed": True}).encode()) == 201
    got = wait_scrape(own_logserver.url + "/metrics", lambda s: total(s, "orlogserver_exchanges_total") >= 1)
    assert value(got, "orlogserver_exchanges_total", route="big", model="big-model", status="200") == 1
    assert value(got, "orlogserver_tokens_total", model="big-model", kind="completion") == 4000
    assert value(got, "orlogserver_cost_usd_total", model="big-model", source="reported") == 0.5
    assert value(got, "orlogserver_time_to_first_token_seconds_bucket", route="big", le="1.0") == 1
    assert value(got, "orlogserver_time_to_first_token_seconds_bucket", route="big", le="0.5") == 0


def test_with_a_token_a_scrape_needs_it(tmp_path):
    server = LogServer(tmp_path / "logs", tmp_path, ["--token", TOKEN]).start()
    try:
        status, _, body = http_request("GET", server.url + "/metrics")
        assert status == 401 and b"token" in body
        assert value(scrape(server.url + "/metrics", TOKEN), "orlogserver_index_errors_total") == 0
    finally:
        server.stop(timeout=5)


def test_the_route_is_in_the_openapi_document(own_logserver):
    status, _, body = http_request("GET", own_logserver.url + "/api/openapi.json")
    operation = json.loads(body)["paths"]["/metrics"]["get"]
    assert operation["operationId"] == "get_metrics" and "Bearer" in operation["description"]
    status, headers, _ = http_request("POST", own_logserver.url + "/metrics", b"")
    assert status == 405 and dict(headers)["Allow"] == "GET"


# -- several gunicorn workers --------------------------------------------------------------------


def put_parts_apart(url, rid, model, status):
    """One exchange uploaded as the original Go program does, each part on a connection of
    its own: its parts may reach different workers."""
    t0 = time.time() - 1
    request = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n" + json.dumps(dict(CHAT, model=model)).encode()
    answer = {"model": model, "choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 1, "completion_tokens": 2}}
    response = b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\n\r\n" % status + json.dumps(answer).encode()
    metadata = json.dumps({"route": "plain", "status": status, "started_at": t0, "ended_at": t0 + 0.5,
                           "first_byte_at": t0 + 0.1}).encode()
    for kind, data in (("request", request), ("response", response), ("metadata", metadata)):
        code, _, body = http_request("PUT", "%s/%s/%s" % (url, rid, kind), data)
        assert code == 201, body


def test_under_gunicorn_every_worker_answers_the_same_exact_counts(make_proxy, fake_upstream, tmp_path):
    log_dir = tmp_path / "logs"
    process = start_gunicorn("logserver-gunicorn", "orproxy.wsgi:logserver_app()", tmp_path / "work",
                             env={"ORLOGSERVER_LOG_DIR": log_dir}, timeout=STARTUP_TIMEOUT)
    try:
        proxy = make_proxy(routes=routes(fake_upstream), logging={"server_url": process.url})
        send_traffic(proxy.url)
        for i in range(20):
            put_parts_apart(process.url, str(uuid.uuid4()), "plain-model", 200 if i % 4 else 429)
        url = process.url + "/metrics"
        wait_scrape(url, lambda s: total(s, "orlogserver_exchanges_total") >= 32, timeout=30)
        time.sleep(0.5)
        scrapes = [scrape(url) for _ in range(12)]  # a fresh connection each: either worker answers
        for got in scrapes:
            assert value(got, "orlogserver_exchanges_total", route="plain", model="plain-model", status="200") == 15
            assert value(got, "orlogserver_exchanges_total", route="plain", model="plain-model", status="429") == 5
            assert value(got, "orlogserver_tokens_total", model="plain-model", kind="completion") == 40
            assert value(got, "orlogserver_exchanges_total", route="a", model="m-json", status="200") == 5
            assert value(got, "orlogserver_tokens_total", model="m-json", kind="completion") == 750
            assert total(got, "orlogserver_exchanges_total") == 32
            assert value(got, "orlogserver_ingest_lag_seconds_count") == 32
        # Both workers counted some: the totals above are sums over their files.
        metrics_dir = log_dir / ".ids" / "metrics"
        per_worker = []
        for path in sorted(metrics_dir.glob("counter_*.db")):
            merged = MultiProcessCollector.merge([str(path)])
            per_worker.append(sum(s.value for m in merged for s in m.samples
                                  if s.name == "orlogserver_exchanges_total"))
        assert sum(per_worker) == 32 and len([n for n in per_worker if n]) == 2, (per_worker, process.describe())
    finally:
        process.stop(timeout=10)


# -- the proxy's own listener ---------------------------------------------------------------------


def listening_ports(pid):
    """The TCP ports process ``pid`` listens on (from /proc: its sockets in state LISTEN)."""
    inodes = socket_inodes(pid)
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def metrics_url(proxy):
    return proxy.wait_for_stdout(r"metrics at (http://\S+/metrics)").group(1)


def test_the_proxy_listens_for_metrics_only_when_configured(make_proxy):
    plain = make_proxy()
    assert listening_ports(plain.pid) == {plain.port}
    assert "metrics" not in plain.stdout_text()
    with_metrics = make_proxy(extra={"server": {"metrics_port": 0}})
    url = metrics_url(with_metrics)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    assert listening_ports(with_metrics.pid) == {with_metrics.port, port}
    assert url.startswith("http://127.0.0.1:")  # not server.host: only this machine
    status, _, body = http_request("GET", url.replace("/metrics", "/other"))
    assert status == 404


def raw_head(url, head):
    host, port = url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head)
        return sock.recv(65536)


def test_the_proxys_metrics_count_exchanges_errors_and_open_streams(make_proxy, fake_upstream, own_logserver):
    proxy = make_proxy(routes=routes(fake_upstream), logging={"server_url": own_logserver.url},
                       extra={"server": {"metrics_port": 0}})
    url = metrics_url(proxy)
    send_traffic(proxy.url)
    assert send(proxy.url, "GET", "/nowhere")[0] == 404
    answer = raw_head(proxy.url, b"POST /a/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400")
    got = wait_scrape(url, lambda s: total(s, "orproxy_exchanges_total") >= 13)
    assert value(got, "orproxy_exchanges_total", route="a", status="200") == 7
    assert value(got, "orproxy_exchanges_total", route="a", status="404") == 3
    assert value(got, "orproxy_exchanges_total", route="b", status="503") == 2
    assert value(got, "orproxy_exchanges_total", route="(none)", status="404") == 1
    assert value(got, "orproxy_errors_total", code="no_route") == 1
    assert value(got, "orproxy_errors_total", code="bad_request") == 1
    assert value(got, "orproxy_errors_total", code="upstream_timeout") == 0
    assert value(got, "orproxy_exchanges_in_flight") == 0
    assert value(got, "orproxy_upstream_connections", state="idle") >= 1
    assert value(got, "orproxy_logging_server_up") == 1
    assert value(got, "process_cpu_seconds_total") > 0

    host, port = proxy.url.split("//")[1].split(":")
    held = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        held.request("GET", "/a/hang")
        response = held.getresponse()
        response.read1(100)  # the head and the first event: the stream is open
        got = scrape(url)
        assert value(got, "orproxy_exchanges_in_flight") == 1
        assert value(got, "orproxy_upstream_connections", state="in_use") >= 2  # the upstream's, the log's
    finally:
        held.close()
    got = wait_scrape(url, lambda s: value(s, "orproxy_exchanges_in_flight") == 0)
    assert value(got, "orproxy_exchanges_total", route="a", status="200") == 8


def test_the_spool_grows_while_the_logging_server_is_away_and_empties_when_it_is_back(make_proxy, own_logserver):
    proxy = make_proxy(logging={"server_url": own_logserver.url}, extra={"server": {"metrics_port": 0}})
    url = metrics_url(proxy)
    assert send(proxy.url, "GET", "/v1/echo")[0] == 200
    wait_scrape(own_logserver.url + "/metrics", lambda s: total(s, "orlogserver_exchanges_total") == 1)
    own_logserver.kill()
    sizes = []
    for _ in range(3):
        assert send(proxy.url, "GET", "/v1/bytes?n=200000")[0] == 200
        got = wait_scrape(url, lambda s: value(s, "orproxy_log_spooled_bytes") > (sizes[-1] if sizes else 0))
        sizes.append(value(got, "orproxy_log_spooled_bytes"))
    assert value(got, "orproxy_logging_server_up") == 0
    assert sizes[0] > 200000 and sizes[0] < sizes[1] < sizes[2], sizes
    own_logserver.start()
    got = wait_scrape(url, lambda s: value(s, "orproxy_log_spooled_bytes") == 0
                      and value(s, "orproxy_logging_server_up") == 1, timeout=30)
    assert value(got, "orproxy_log_dropped_bytes_total") == 0
    counted = wait_scrape(own_logserver.url + "/metrics", lambda s: total(s, "orlogserver_exchanges_total") >= 4)
    assert total(counted, "orlogserver_exchanges_total") == 4


def test_under_gunicorn_each_worker_listens_on_a_port_of_its_own(make_proxy, fake_upstream, own_logserver):
    base = next(p for p in iter(free_port, None) if p < 65000 and _free(p + 1))
    proxy = make_proxy(routes=routes(fake_upstream), logging={"server_url": own_logserver.url},
                       extra={"server": {"metrics_port": base}}, gunicorn=True, workers=2)
    urls = wait_until(lambda: sorted(set(re.findall(r"metrics at (http://\S+/metrics)", proxy.stdout_text())))
                      if proxy.stdout_text().count("metrics at") >= 2 else None, 10, 0.05, "two listeners")
    assert urls == ["http://127.0.0.1:%d/metrics" % base, "http://127.0.0.1:%d/metrics" % (base + 1)]
    for i in range(12):
        assert send(proxy.url, "GET", "/a/echo?i=%d" % i)[0] == 200

    def summed():
        scrapes = [scrape(u) for u in urls]
        return scrapes if sum(value(s, "orproxy_exchanges_total", route="a", status="200") or 0
                              for s in scrapes) == 12 else None
    scrapes = wait_until(summed, 10, 0.1, "12 exchanges over both workers")
    assert all(value(s, "orproxy_exchanges_in_flight") == 0 for s in scrapes)


def _free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False
