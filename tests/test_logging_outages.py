"""A logging server that is down, killed mid-stream, stalled or restarted never hurts proxied
requests, and still gets every exchange once it answers; the logging server runs at idle CPU
priority, and the proxy raises its open-files limit. Real processes (conftest.py)."""
import hashlib
import http.client
import json
import os
import resource
import signal
import time
from pathlib import Path

import pytest

from helpers import pattern_bytes, wait_until
from log_helpers import host_port, exchange_complete, logged, send


def _logging_resumes(proxy, logserver, target, timeout):
    """Send `target` through the proxy until one such exchange is logged whole; its id."""
    def logged_again():
        status, _, _, rid = send(proxy.url, "GET", target)
        assert status == 200
        try:
            logserver.wait_for_metadata(rid, predicate=exchange_complete, timeout=1.0)
        except AssertionError:
            return None
        return rid
    return wait_until(logged_again, timeout=timeout, interval=0.2, message="logging to resume")


def _mixed_request(url, i):
    """One of three kinds of exchange, each checked byte for byte."""
    kind = i % 3
    if kind == 0:
        body = pattern_bytes(20000 + i, offset=i)
        status, _, data, _ = send(url, "POST", "/v1/echo?i=%d" % i,
                                  [("Authorization", "Bearer sk-0123456789abcdef")], body)
        assert status == 200
        assert json.loads(data)["body_sha256"] == hashlib.sha256(body).hexdigest()
    elif kind == 1:
        n = 200000 + i
        status, _, data, _ = send(url, "GET", "/v1/bytes?n=%d" % n)
        assert status == 200 and data == pattern_bytes(n)
    else:
        status, _, data, _ = send(url, "GET", "/v1/sse?events=3&i=%d" % i)
        assert status == 200
        assert [json.loads(e[6:])["index"] for e in data.split(b"\n\n") if e] == [0, 1, 2]


def test_logging_server_killed_then_restarted(make_proxy, logserver):
    p = make_proxy()
    rid = send(p.url, "GET", "/v1/echo?before=1")[3]
    logged(logserver, rid)

    # Killed in the middle of a logged stream: the stream goes on to its end.
    host, port = host_port(p.url)
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", "/v1/sse?events=6&interval_ms=100")
        resp = conn.getresponse()
        first = resp.read1(65536)
        assert first.startswith(b"data: ")
        logserver.kill()
        rest = resp.read()
    finally:
        conn.close()
    assert (first + rest).count(b"\n\n") == 6

    # Down: every proxied request succeeds, byte for byte, and promptly.
    started = time.monotonic()
    for i in range(50):
        _mixed_request(p.url, i)
    assert time.monotonic() - started < 20

    # Back on the same port: logging resumes by itself within a few seconds.
    logserver.start()
    rid = _logging_resumes(p, logserver, "/v1/echo?after=1", timeout=10)
    request, _, _ = logged(logserver, rid)
    assert request.startswith(b"GET /v1/echo?after=1 HTTP/1.1\r\n")
    assert p.alive


def test_logging_server_stalled_never_delays_requests(make_proxy, logserver):
    p = make_proxy()
    rid = send(p.url, "GET", "/v1/echo")[3]
    logged(logserver, rid)
    pid = logserver.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        slowest = 0.0
        for i in range(20):
            started = time.monotonic()
            _mixed_request(p.url, i)
            if i % 10 == 0:      # bodies bigger than the socket buffers to the logger
                n = 16 * 1024 * 1024
                status, _, data, _ = send(p.url, "GET", "/v1/bytes?n=%d" % n)
                assert status == 200 and data == pattern_bytes(n)
            slowest = max(slowest, time.monotonic() - started)
        assert slowest < 2.0, "a request took %.2fs with the logging server stalled" % slowest
    finally:
        os.kill(pid, signal.SIGCONT)
    assert p.alive

    _logging_resumes(p, logserver, "/v1/echo?after=stall", timeout=20)


def test_a_logging_server_silent_for_longer_than_10_s_still_gets_every_exchange(make_proxy, logserver):
    """At idle CPU priority under a saturating load, the logging server may not run for many
    seconds. The proxy waits up to 60 s for its answers before it treats it as stalled and
    drops new exchanges' logs for a second; with a 10 s limit, the exchanges sent around
    the 10 s mark were not logged."""
    p = make_proxy()
    logged(logserver, send(p.url, "GET", "/v1/echo")[3])  # the logging server is known to answer
    pid = logserver.process.pid
    sent = []
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        while time.monotonic() - started < 12.5:
            status, _, _, rid = send(p.url, "GET", "/v1/echo?stalled=%d" % len(sent))
            assert status == 200
            sent.append(rid)
            time.sleep(0.25)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert len(sent) >= 40
    for rid in sent:
        request, _, metadata = logged(logserver, rid, timeout=20)
        assert request.startswith(b"GET /v1/echo?stalled=")
        assert metadata["proxy"]["log_dropped_bytes"] == 0


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_the_logging_server_runs_at_idle_cpu_priority(logserver):
    """So that on a shared machine a waking proxy preempts it at once (README, orlogserver
    --priority): nice levels only lowered its share, not the proxy's wait for the CPU."""
    assert os.sched_getscheduler(logserver.process.pid) == os.SCHED_IDLE


def _open_files_limit(pid):
    """(soft, hard) of the process's open-files limit, as /proc shows them."""
    for line in Path("/proc/%d/limits" % pid).read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-files line in /proc/%d/limits" % pid)


@pytest.mark.skipif(not Path("/proc/self/limits").exists(), reason="reads /proc/PID/limits")
@pytest.mark.parametrize("gunicorn", [False, True], ids=["orproxy", "gunicorn"])
def test_the_proxy_raises_its_open_files_limit_to_the_hard_one(make_proxy, gunicorn):
    """A shell's usual soft limit of 1,024 would cap held streams near 300 (3 descriptors
    each with logging); the proxy lifts it as Go programs do, and sizes its log streams
    by it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard <= 1024:
        pytest.skip("the hard open-files limit is too low to show a raise")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))  # the proxy inherits it
    try:
        proxy = make_proxy(gunicorn=gunicorn, workers=1)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    pids = [proxy.pid] if not gunicorn else [int(p) for p in wait_until(
        lambda: Path("/proc/%d/task/%d/children" % (proxy.pid, proxy.pid)).read_text().split(), 10)]
    for pid in pids:  # under gunicorn, its worker
        assert _open_files_limit(pid) == (hard, hard)
