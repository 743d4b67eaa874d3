"""Nothing proxied is lost from the log (CONTRACT.md, "Logging stream"): every exchange
reaches the logging server once and byte for byte, whether the logging server is killed,
stalled or restarted, and whether the proxy itself is killed with log data in its spool.
Real processes throughout: orproxy, orlogserver, the fake upstream."""
import http.client
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from helpers import pattern_bytes, wait_until
from log_helpers import exchange, exchange_complete, host_port, logged_once, send, split_head
from orproxy import logwire
from orproxy.logclient.spool import FRAME

SPOOL = ".orproxy-spool"


class Traffic(threading.Thread):
    """A client sending exchanges one after another until stopped."""

    def __init__(self, url):
        super().__init__(daemon=True)
        self.url, self.sent, self.errors, self.stopping = url, [], [], threading.Event()

    def run(self):
        i = 0
        while not self.stopping.is_set():
            try:
                self.sent.append(exchange(self.url, i))
            except Exception as e:  # noqa: BLE001 - counted: the test fails on any
                self.errors.append(repr(e))
            i += 1
            time.sleep(0.02)

    def stop(self):
        self.stopping.set()
        self.join(30)
        return self.sent


def test_a_logging_server_killed_while_calls_flow_and_restarted_loses_nothing(make_proxy, logserver):
    p = make_proxy()
    traffic = Traffic(p.url)
    traffic.start()
    time.sleep(1.0)
    logserver.kill()  # SIGKILL: whatever batch it was taking is cut off
    time.sleep(1.5)
    logserver.start()  # the same port and log dir
    time.sleep(1.0)
    sent = traffic.stop()
    assert not traffic.errors and len(sent) > 20
    for rid, request_body, response_body in sent:
        logged_once(logserver, rid, request_body, response_body)


def test_a_download_through_a_stalled_logging_server_is_logged_whole_from_the_spool(make_proxy, logserver):
    """SIGSTOPped for the whole of a 100 MiB download, twelve times the memory a part may
    hold: the rest goes to the spool, and all of it reaches the logging server after."""
    p = make_proxy()
    logged_once(logserver, send(p.url, "GET", "/v1/echo")[3])  # it is known to answer
    n = 100 * 1024 * 1024
    os.kill(logserver.process.pid, signal.SIGSTOP)
    try:
        status, _, data, rid = send(p.url, "GET", "/v1/bytes?n=%d" % n, timeout=60)
        assert status == 200 and len(data) == n
        assert sum(f.stat().st_size for f in (p.workdir / SPOOL).iterdir()) > 50 * 1024 * 1024
    finally:
        os.kill(logserver.process.pid, signal.SIGCONT)
    logged_once(logserver, rid, b"", pattern_bytes(n), timeout=60)


def test_a_logging_server_killed_mid_stream_and_restarted_gets_the_stream_once(make_proxy, logserver):
    p = make_proxy()
    host, port = host_port(p.url)
    conn = http.client.HTTPConnection(host, port, timeout=20)
    try:
        conn.request("GET", "/v1/sse?events=30&interval_ms=100")
        response = conn.getresponse()
        rid = response.getheader("X-Request-Id")
        received = response.read1(65536)
        logserver.wait_for_file(rid, "response", min_size=200)  # part of it is written
        time.sleep(0.5)
        logserver.kill()
        time.sleep(1.0)
        logserver.start()
        received += response.read()
    finally:
        conn.close()
    assert received.count(b"\n\n") == 30
    logged_once(logserver, rid, b"", received)


def test_a_proxy_killed_with_log_data_in_its_spool_delivers_it_after_a_restart(make_proxy, logserver):
    """The logging server is down, so the log goes to the spool; the proxy is SIGKILLed;
    a new one on the same configuration (and so the same spool) delivers it once the
    logging server is back, started only then."""
    logserver.stop()
    p = make_proxy()
    sent = [exchange(p.url, i) for i in range(12)]
    spool = p.workdir / SPOOL
    wait_until(lambda: "unreachable" in p.stderr_text(), 10, message="the proxy noticing")
    wait_until(lambda: sum(f.stat().st_size for f in spool.iterdir()) > sum(
        len(b) + len(r) for _, b, r in sent), 10, message="the log in the spool")
    p.send_signal(signal.SIGKILL)
    wait_until(lambda: not p.alive, 5)
    again = make_proxy(config=p.config, workdir=p.workdir)
    assert "adopted" in wait_until(lambda: again.stderr_text() if "adopted" in again.stderr_text() else None, 10)
    logserver.start()
    for rid, request_body, response_body in sent:
        logged_once(logserver, rid, request_body, response_body)
    wait_until(lambda: not any(spool.iterdir()) or all(f.stat().st_size == 0 for f in spool.iterdir()), 10,
               message="the spool emptied once delivered")


def spool_records(segment):
    """(start, end, record) of every record in a spool segment file."""
    data, at, out = segment.read_bytes(), 0, []
    while at + FRAME.size <= len(data):
        _, length, _ = FRAME.unpack_from(data, at)
        payload = data[at + FRAME.size:at + FRAME.size + length]
        out.append((at, at + FRAME.size + length, next(logwire.records(payload))))
        at += FRAME.size + length
    return out


@pytest.mark.parametrize("damage", ["torn tail", "corrupt record"])
def test_a_damaged_spool_is_cut_or_skipped_and_the_good_records_still_sent(make_proxy, logserver, damage):
    """A torn last record (the proxy killed while writing it) is cut; a corrupt one (a
    flipped byte) is skipped: a line on stderr says which, and every other exchange is
    delivered. The damaged record is the metadata of one exchange: its parts still come."""
    logserver.stop()
    p = make_proxy()
    sent = [exchange(p.url, i) for i in range(6)]
    spool = p.workdir / SPOOL
    wait_until(lambda: "unreachable" in p.stderr_text(), 10, message="the proxy noticing")
    last_id = sent[-1][0]
    segment = wait_until(lambda: next((f for f in spool.iterdir() if any(
        isinstance(r, logwire.Metadata) and r.exchange_id == last_id for _, _, r in spool_records(f))), None),
        10, message="every exchange's metadata in the spool")
    p.send_signal(signal.SIGKILL)
    wait_until(lambda: not p.alive, 5)
    records = spool_records(segment)
    victim = sent[-1][0] if damage == "torn tail" else sent[2][0]
    start, end, _ = next(r for r in records if isinstance(r[2], logwire.Metadata) and r[2].exchange_id == victim)
    data = bytearray(segment.read_bytes())
    if damage == "torn tail":
        assert end == len(data)               # the last record
        segment.write_bytes(bytes(data[:end - 7]))
    else:
        data[end - 3] ^= 0xFF                 # a flipped byte in its JSON
        segment.write_bytes(bytes(data))
    again = make_proxy(config=p.config, workdir=p.workdir)
    said = "torn record" if damage == "torn tail" else "corrupt record"
    wait_until(lambda: said in again.stderr_text(), 10, message="a line about the damage")
    logserver.start()
    for rid, request_body, response_body in sent:
        if rid != victim:
            logged_once(logserver, rid, request_body, response_body)
    parts = logserver.wait_for_metadata(victim, predicate=lambda m: all(
        m["parts"].get(k, {}).get("complete") for k in ("request", "response")))
    assert "proxy" not in parts  # its metadata was the damaged record
    assert again.alive and "Traceback" not in again.stderr_text()


def test_a_dead_upstream_is_logged_with_the_whole_request_body(make_proxy, logserver):
    p = make_proxy(routes=[{"source": "/dead/", "destination": "http://127.0.0.1:9/", "name": "dead"}])
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 300000}]}).encode()
    status, _, data, rid = send(p.url, "POST", "/dead/v1/chat/completions", [("Content-Type", "application/json")], body)
    assert status == 502 and json.loads(data)["error"]["code"] == "upstream_unreachable"
    metadata = logserver.wait_for_metadata(rid, predicate=lambda m: exchange_complete(m) and "response" in (
        m.get("derived") or {}).get("parts", []))
    _, _, logged = split_head(logserver.file(rid, "request").read_bytes())
    assert logged == body and metadata["proxy"]["request_bytes"] == len(body)
    assert metadata["derived"]["model_requested"] == "m"


def test_past_the_spool_bound_a_log_is_truncated_with_the_marker_and_said_once(make_proxy, logserver):
    p = make_proxy(logging={"spool_max_bytes": 2 * 1024 * 1024})
    logged_once(logserver, send(p.url, "GET", "/v1/echo")[3])
    n = 32 * 1024 * 1024
    os.kill(logserver.process.pid, signal.SIGSTOP)
    try:
        status, _, data, rid = send(p.url, "GET", "/v1/bytes?n=%d" % n)
        status2, _, data2, _ = send(p.url, "GET", "/v1/bytes?n=%d" % n)
    finally:
        os.kill(logserver.process.pid, signal.SIGCONT)
    assert status == status2 == 200 and data == data2 == pattern_bytes(n)
    metadata = logserver.wait_for_metadata(rid, predicate=exchange_complete, timeout=30)
    dropped = metadata["proxy"]["log_dropped_bytes"]
    assert 0 < dropped < n
    _, _, body = split_head(logserver.file(rid, "response").read_bytes())
    marker = ("\r\n[orproxy: log truncated here; %d bytes were proxied but not logged because the "
              "logging server was slow or unreachable and the spool was full]\r\n" % dropped).encode()
    assert body.endswith(marker)
    prefix = body[:-len(marker)]
    assert len(prefix) + dropped == n and prefix == pattern_bytes(len(prefix))
    assert p.stderr_text().count("log data dropped") == 1


def test_gunicorn_workers_spool_apart_and_a_new_worker_adopts_a_dead_ones_spool(make_proxy, logserver):
    """Each worker writes segments of its own; one SIGKILLed with log data in them leaves
    them to the worker gunicorn starts in its place, which delivers them."""
    logserver.stop()
    p = make_proxy(gunicorn="orproxy.worker.GeventWorker", workers=2)
    sent = [exchange(p.url, i) for i in range(24)]
    spool = p.workdir / SPOOL
    wait_until(lambda: len({f.name.split("-")[-2] for f in spool.iterdir()}) == 2, 10,
               message="a segment from each worker")
    workers = [int(pid) for pid in (Path("/proc/%d/task/%d/children" % (p.pid, p.pid)).read_text().split())]
    time.sleep(0.5)  # what they were writing is written
    os.kill(workers[0], signal.SIGKILL)
    wait_until(lambda: "adopted" in p.stderr_text(), 20, message="the new worker adopting the segments")
    logserver.start()
    for rid, request_body, response_body in sent:
        logged_once(logserver, rid, request_body, response_body)
