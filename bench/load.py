"""Client workloads: sequential latency, closed-loop requests/s (gevent or wrk), SSE
streams with per-event delays, bulk download and chunked upload. Each takes a host, port
and request, and returns plain numbers; loops are bounded by a count or a deadline.
"""
import json
import os
import re
import shutil
import subprocess
import tempfile
import time

import gevent

from bench.http1 import Connection, build_request

CHAT_BODY = json.dumps({
    "model": "bench-model",
    "messages": [{"role": "user", "content": "Say something about benchmarks."}],
    "max_tokens": 64,
}).encode()
# A realistic client sends a key; the proxy must mask it in its logs.
CHAT_HEADERS = (("Content-Type", "application/json"),
                ("Authorization", "Bearer sk-bench-0000000000000000abcd"))


def chat_request(host, port, path, body=CHAT_BODY):
    return build_request("POST", path, "%s:%d" % (host, port), body, CHAT_HEADERS)


def percentile(values, q):
    """Linear interpolation between closest ranks; values need not be sorted."""
    if not values:
        return None
    v = sorted(values)
    pos = (len(v) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def summarize_ms(samples_ns):
    ms = [s / 1e6 for s in samples_ns]
    if not ms:
        return {"n": 0}
    return {"n": len(ms), "p50": percentile(ms, 50), "p90": percentile(ms, 90),
            "p99": percentile(ms, 99), "mean": sum(ms) / len(ms), "max": max(ms)}


# -- concurrency 1 --------------------------------------------------------------------

def sequential(host, port, request, count, conn=None, time_limit=60.0):
    """`count` requests one after another on one keep-alive connection (stopping early
    after `time_limit` seconds: a hanging target must not hold the run); latencies in ns."""
    conn = conn or Connection(host, port, timeout=10)
    lat, errors, failing = [], 0, 0
    clock = time.perf_counter_ns
    stop = clock() + int(time_limit * 1e9)
    for _ in range(count):
        t0 = clock()
        if t0 > stop or failing >= 3:
            break
        try:
            r = conn.request(request)
            failing = 0
        except (OSError, ValueError):
            errors += 1
            failing += 1
            conn.close()
            continue
        t1 = clock()
        if 200 <= r.status < 300:
            lat.append(t1 - t0)
        else:
            errors += 1
    return conn, lat, errors


# -- requests/s -----------------------------------------------------------------------

def closed_loop(host, port, request, concurrency, duration, warmup):
    """`concurrency` keep-alive connections, each sending the next request as soon as the
    last is answered. Counts responses completed inside [warmup, warmup + duration]."""
    clock = time.monotonic
    t_start = clock()
    t_measure = t_start + warmup
    t_end = t_measure + duration
    lat, stats = [], {"ok": 0, "errors": 0, "non2xx": 0}

    def worker():
        conn = Connection(host, port, timeout=10)
        try:
            while True:
                t0 = clock()
                if t0 >= t_end:
                    return
                try:
                    r = conn.request(request)
                except (OSError, ValueError):
                    conn.close()
                    if t0 >= t_measure:
                        stats["errors"] += 1
                    gevent.sleep(0.001)  # no hot loop against a dead server
                    continue
                t1 = clock()
                if t_measure <= t1 <= t_end:
                    if 200 <= r.status < 300:
                        stats["ok"] += 1
                        lat.append(t1 - t0)
                    else:
                        stats["non2xx"] += 1
        finally:
            conn.close()

    workers = [gevent.spawn(worker) for _ in range(concurrency)]
    gevent.joinall(workers, timeout=warmup + duration + 15)
    gevent.killall(workers, timeout=2)
    lat_ms = [x * 1000 for x in lat]
    return {"rps": stats["ok"] / duration, "ok": stats["ok"], "errors": stats["errors"],
            "non2xx": stats["non2xx"], "duration_s": duration, "loadgen": "python-gevent",
            "p50_ms": percentile(lat_ms, 50), "p99_ms": percentile(lat_ms, 99)}


WRK_LUA = r"""
wrk.method = "POST"
wrk.body = %(body)s
%(headers)s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %%d, "duration_us": %%d, "connect": %%d, "read": %%d, ' ..
    '"write": %%d, "status": %%d, "timeout": %%d, "p50_us": %%d, "p99_us": %%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def wrk_path():
    return shutil.which("wrk")


def wrk_version():
    path = wrk_path()
    if not path:
        return None
    out = subprocess.run([path, "-v"], capture_output=True, text=True, timeout=5)
    m = re.search(r"wrk (\S+)", out.stdout + out.stderr)
    return m.group(1) if m else "?"


def lua_string(b):
    return '"' + "".join("\\%d" % c if c < 32 or c in (34, 92) or c > 126 else chr(c)
                         for c in b) + '"'


def wrk_loop(host, port, path, concurrency, duration, cpus=None, body=CHAT_BODY):
    """wrk with a POST script: -t1 (the load generator has one core), whole seconds."""
    seconds = max(1, int(round(duration)))
    headers = "\n".join("wrk.headers[%s] = %s" % (lua_string(k.encode()), lua_string(v.encode()))
                        for k, v in CHAT_HEADERS)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_LUA % {"body": lua_string(body), "headers": headers})
        script = f.name
    argv = [wrk_path(), "-t1", "-c%d" % concurrency, "-d%ds" % seconds, "--timeout", "10s",
            "-s", script, "http://%s:%d%s" % (host, port, path)]
    if cpus is not None and shutil.which("taskset"):
        argv = ["taskset", "-c", cpus] + argv
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    finally:
        os.unlink(script)
    m = re.search(r"^WRKJSON (.*)$", out.stdout, re.M)
    if not m:
        raise RuntimeError("wrk gave no result: %s" % (out.stdout + out.stderr)[-500:])
    w = json.loads(m.group(1))
    dur = w["duration_us"] / 1e6
    errors = w["connect"] + w["read"] + w["write"] + w["timeout"]
    ok = w["requests"] - w["status"]
    return {"rps": ok / dur, "ok": ok, "errors": errors, "non2xx": w["status"],
            "duration_s": dur, "loadgen": "wrk",
            "p50_ms": w["p50_us"] / 1000, "p99_ms": w["p99_us"] / 1000}


# -- SSE ----------------------------------------------------------------------------

class SSEParser:
    """Splits a byte stream into SSE events and returns each event's data."""

    SEP = re.compile(rb"\r?\n\r?\n")

    def __init__(self):
        self.buf = b""

    def feed(self, data):
        self.buf += data
        parts = self.SEP.split(self.buf)
        self.buf = parts.pop()
        out = []
        for block in parts:
            lines = [ln[5:].lstrip() for ln in block.splitlines() if ln.startswith(b"data:")]
            if lines:
                out.append(b"\n".join(lines))
        return out


STREAM_BODY = json.dumps({"model": "bench-model", "stream": True,
                          "messages": [{"role": "user", "content": "stream"}]}).encode()


def stream_once(conn, request):
    """One streaming request on `conn`. Returns status, events, whether [DONE] came,
    time to the response head and to the first event (from the send, ns), and each
    event's delay: receive time - the upstream's sent_ns (same machine, same clock)."""
    parser = SSEParser()
    out = {"status": None, "events": 0, "done": False, "ttfb_ns": None,
           "first_event_ns": None, "first_delay_ns": None, "delays": []}

    def sink(data, t_ns):
        for ev in parser.feed(data):
            if ev.strip() == b"[DONE]":
                out["done"] = True
                continue
            try:
                obj = json.loads(ev)
            except ValueError:
                continue
            sent = obj.get("orproxy_sent_ns") or obj.get("sent_ns")
            if out["events"] == 0:
                out["first_event_ns"] = t_ns - t0
                out["first_delay_ns"] = t_ns - sent if sent else None
            if sent:
                out["delays"].append(t_ns - sent)
            out["events"] += 1

    t0 = time.time_ns()
    try:
        r = conn.request(request, sink=sink)
        out["status"] = r.status
        out["ttfb_ns"] = r.t_head_ns - t0
    except (OSError, ValueError) as e:
        out["status"] = "error: %s" % e
        conn.close()
    return out


def sse_streams(host, port, path, streams, events, interval_ms):
    """`streams` concurrent streaming chat completions of `events` events each, one
    connection per stream; per-event delays, and time to first byte (from connect)."""
    url = "%s?events=%d&interval_ms=%d" % (path, events, interval_ms)
    request = chat_request(host, port, url, STREAM_BODY)
    results = []

    def one():
        conn = Connection(host, port, timeout=30)
        try:
            results.append(stream_once(conn, request))
        finally:
            conn.close()

    # Starts spread evenly over one interval, as independent clients would be: 20 streams
    # started in the same instant would measure a thundering herd on the shared CPU
    # rather than what the proxy adds to each event.
    spacing = interval_ms / 1000.0 / streams
    glets = [gevent.spawn_later(i * spacing, one) for i in range(streams)]
    gevent.joinall(glets, timeout=events * interval_ms / 1000 * 3 + 30)
    gevent.killall(glets, timeout=2)
    # The chat stream sends a role event and a finish event around its `events` content
    # events: intact = 200, at least `events` events, and the closing [DONE].
    intact = sum(1 for r in results
                 if r["status"] == 200 and r["events"] >= events and r["done"])
    return {"delay": summarize_ms([d for r in results for d in r["delays"]]),
            "ttfb": summarize_ms([r["ttfb_ns"] for r in results if r["ttfb_ns"] is not None]),
            "streams": streams, "intact": intact,
            "events": sum(r["events"] for r in results),
            "content_events_requested": streams * events,
            "failed": [r["status"] for r in results if r["status"] != 200]}


def first_byte_request(host, port, path, first_delay_ms):
    """A one-event stream whose upstream sends the head at once and the first event
    `first_delay_ms` later (an LLM thinking): a proxy that holds the head until the
    first body block, or sits on a small block (Nagle), shows up here."""
    url = "%s?events=1&interval_ms=0&first_delay_ms=%d" % (path, first_delay_ms)
    return chat_request(host, port, url, STREAM_BODY)


# -- bulk -------------------------------------------------------------------------

def time_limit(nbytes):
    """A bulk transfer slower than 10 MB/s (plus 30 s) is cut off, so the run ends."""
    return 30 + nbytes / 10e6


def download(host, port, path, nbytes, timeout=30):
    conn = Connection(host, port, timeout=timeout)
    req = build_request("GET", "%s?n=%d" % (path, nbytes), "%s:%d" % (host, port))
    t0 = time.perf_counter()
    try:
        with gevent.Timeout(time_limit(nbytes)):
            r = conn.request(req)
    except (OSError, ValueError, gevent.Timeout) as e:
        return {"ok": False, "status": "error: %s" % (e or type(e).__name__), "bytes": None,
                "seconds": time.perf_counter() - t0, "mb_s": None}
    finally:
        conn.close()
    secs = time.perf_counter() - t0
    ok = r.status == 200 and r.nbytes == nbytes
    return {"ok": ok, "status": r.status, "bytes": r.nbytes, "seconds": secs,
            "mb_s": r.nbytes / 1e6 / secs}


def upload(host, port, path, nbytes, block=256 * 1024, timeout=30):
    """A chunked PUT of nbytes, sent as fast as the connection takes it."""
    conn = Connection(host, port, timeout=timeout)
    head = build_request("PUT", path, "%s:%d" % (host, port),
                         headers=(("Content-Type", "application/octet-stream"),), chunked=True)
    frame = b"%x\r\n" % block + b"u" * block + b"\r\n"
    full, rest = divmod(nbytes, block)
    t0 = time.perf_counter()
    try:
        with gevent.Timeout(time_limit(nbytes)):
            conn.send(head)
            for _ in range(full):
                conn.sock.sendall(frame)
            if rest:
                conn.sock.sendall(b"%x\r\n" % rest + b"u" * rest + b"\r\n")
            conn.sock.sendall(b"0\r\n\r\n")
            r = conn.read_response(keep_body=True)
    except (OSError, ValueError, gevent.Timeout) as e:
        return {"ok": False, "status": "error: %s" % (e or type(e).__name__), "bytes": nbytes,
                "seconds": time.perf_counter() - t0, "mb_s": None}
    finally:
        conn.close()
    secs = time.perf_counter() - t0
    got = None
    try:
        answer = json.loads(r.body)
        got = answer.get("length", answer.get("bytes"))
    except (ValueError, AttributeError):
        pass
    ok = 200 <= r.status < 300 and got in (None, nbytes)
    return {"ok": ok, "status": r.status, "bytes": nbytes, "upstream_counted": got,
            "seconds": secs, "mb_s": nbytes / 1e6 / secs}
