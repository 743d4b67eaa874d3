"""The scenarios (issue 2's list; issue 6 adds to it): each runs against every available
target in turn, stores raw results and appends table rows. Register a new one with
@scenario(name); `--only` picks by name, and default=False keeps it out of a plain run.
Goals are (op, threshold, issue) for the proxy targets: issue 2's and issue 6's targets.
"""
import os
import time

import gevent

from bench import load
from bench.procs import RssWatch, StartError
from bench.report import Row
from bench.targets import API

CHAT = API + "/chat/completions"


class Scenario:
    def __init__(self, name, func, default, help):
        self.name, self.func, self.default, self.help = name, func, default, help


SCENARIOS = {}


def scenario(name, default=True, help=""):
    def register(func):
        SCENARIOS[name] = Scenario(name, func, default, help)
        return func
    return register


FULL = {
    "lat_warmup": 200, "lat_requests": 2000, "lat_rounds": 4,
    "rps_conc": (16, 64), "rps_duration": 5, "rps_warmup": 1.0,
    "sse_streams": 20, "sse_events": 100, "sse_interval_ms": 20,
    "fb_count": 40, "fb_first_delay_ms": 20,
    "down_bytes": 1 << 30, "up_bytes": 256 << 20,
    "logdown_conc": 16, "logdown_duration": 5,
}
QUICK = dict(FULL, lat_warmup=20, lat_requests=200, lat_rounds=2, rps_duration=1,
             rps_warmup=0.3, sse_events=25, fb_count=10, down_bytes=64 << 20, up_bytes=16 << 20,
             logdown_duration=1)


def _vals(per, key, sub=None):
    out = {}
    for name, res in per.items():
        v = res.get(key) if isinstance(res, dict) else None
        if sub is not None:
            v = v.get(sub) if isinstance(v, dict) else None
        out[name] = v
    return out


def _added(values, ref="direct"):
    base = values.get(ref)
    if not isinstance(base, (int, float)):
        return {}
    return {k: (v - base if isinstance(v, (int, float)) else None)
            for k, v in values.items()}


# -- 1. latency at concurrency 1 -------------------------------------------------------

@scenario("latency", help="1 KB JSON chat completion, concurrency 1: p50/p99 and added")
def latency(ctx):
    p = ctx.p
    state = {}
    for t in ctx.each_target("latency warm-up"):
        req = load.chat_request(t.host, t.port, CHAT)
        conn, _, errors = load.sequential(t.host, t.port, req, p["lat_warmup"])
        state[t.name] = {"conn": conn, "req": req, "lat": [], "errors": errors}
    # Rounds interleave the targets so that drift in machine load hits all of them.
    per_round = max(1, p["lat_requests"] // p["lat_rounds"])
    for _ in range(p["lat_rounds"]):
        for t in ctx.each_target("latency"):
            s = state.get(t.name)
            if s is None:
                continue
            _, lat, errors = load.sequential(t.host, t.port, s["req"], per_round, s["conn"])
            s["lat"] += lat
            s["errors"] += errors
    per = {}
    for name, s in state.items():
        s["conn"].close()
        per[name] = dict(load.summarize_ms(s["lat"]), errors=s["errors"])
    ctx.results["latency"] = per
    g = "1 KB JSON, c=1"
    p50, p99 = _vals(per, "p50"), _vals(per, "p99")
    ctx.rows += [
        Row(g, "latency p50", "ms", p50),
        Row(g, "latency p99", "ms", p99),
        Row(g, "added p50", "ms", _added(p50), kind="added", goal=[("<=", 0.5, "#6")]),
        Row(g, "added p99", "ms", _added(p99), kind="added", goal=[("<=", 1.5, "#6")]),
        Row(g, "requests/s (1/mean)", "req/s",
            {k: (1000 / v["mean"] if v.get("mean") else None) for k, v in per.items()}),
    ]
    ctx.error_row(g, per)
    ctx.log_files_row(g)


# -- 2. requests/s at concurrency 16 and 64 ----------------------------------------

@scenario("rps", help="1 KB JSON chat completions: requests/s at concurrency 16 and 64")
def rps(ctx):
    p = ctx.p
    per = {}
    for c in p["rps_conc"]:
        for t in ctx.each_target("rps c=%d" % c):
            per.setdefault(t.name, {})["c%d" % c] = ctx.load_loop(t, c, p["rps_duration"])
    ctx.results["rps"] = per
    g = "1 KB JSON, req/s (%s)" % ctx.loadgen_name
    for c in p["rps_conc"]:
        key = "c%d" % c
        vals = {k: v.get(key, {}).get("rps") for k, v in per.items()}
        goal = [(">=", 2000, "#6")] if c == 64 else None
        ctx.rows.append(Row(g, "c=%d" % c, "req/s", vals, goal=goal))
    # Latency under load stays in the JSON only: with the load generator and the Python
    # upstream sharing one core, its tail is the upstream's scheduling more than the proxy.
    ctx.error_row(g, {k: {"errors": sum(r.get("errors", 0) + r.get("non2xx", 0)
                                        for r in v.values())} for k, v in per.items()})


# -- 3. SSE ---------------------------------------------------------------------------

@scenario("sse", help="SSE: per-event delay (receive - sent_ns); time to head and first event")
def sse(ctx):
    p = ctx.p
    n, events, iv = p["sse_streams"], p["sse_events"], p["sse_interval_ms"]
    per = {}
    for t in ctx.each_target("sse streams"):
        per[t.name] = load.sse_streams(t.host, t.port, CHAT, n, events, iv)
    # Time to first byte, one stream at a time on a kept-alive connection per target,
    # the targets interleaved: a clean figure, free of the 20 streams' contention.
    fb = {}
    conns = {}
    stop = time.monotonic() + 60  # bounded even if a target hangs every stream
    for i in range(p["fb_count"]):
        if time.monotonic() > stop:
            ctx.note("first-byte measurements cut short after 60 s")
            break
        for t in ctx.each_target("first byte") if i == 0 else list(ctx.targets):
            if t.name not in conns:
                conns[t.name] = load.Connection(t.host, t.port, timeout=10)
                fb[t.name] = {"ttfb": [], "first_delay": [], "failed": 0}
            if fb[t.name]["failed"] >= 3:
                continue
            req = load.first_byte_request(t.host, t.port, CHAT, p["fb_first_delay_ms"])
            # Let the previous target's after-work (log writes) finish: it shares the CPU.
            gevent.sleep(0.01)
            r = load.stream_once(conns[t.name], req)
            if r["status"] != 200 or r["ttfb_ns"] is None or r["first_delay_ns"] is None:
                fb[t.name]["failed"] += 1
                continue
            fb[t.name]["ttfb"].append(r["ttfb_ns"])
            fb[t.name]["first_delay"].append(r["first_delay_ns"])
    for name, conn in conns.items():
        conn.close()
        f = fb[name]
        f["ttfb"], f["first_delay"] = load.summarize_ms(f["ttfb"]), load.summarize_ms(f["first_delay"])
        per.setdefault(name, {})["first_byte"] = f
    ctx.results["sse"] = per
    g = "SSE %d streams x %d @ %d ms" % (n, events, iv)
    d50, d99 = _vals(per, "delay", "p50"), _vals(per, "delay", "p99")
    ctx.rows += [
        Row(g, "event delay p50", "ms", d50),
        Row(g, "event delay p99", "ms", d99),
        Row(g, "added delay p50", "ms", _added(d50), kind="added"),
        Row(g, "added delay p99", "ms", _added(d99), kind="added",
            goal=[("<=", 2, "#2"), ("<=", 1, "#6")]),
        Row(g, "intact streams", "", {k: "%d/%d" % (v["intact"], v["streams"])
                                      for k, v in per.items() if "intact" in v}, kind="info"),
    ]
    g = "SSE first byte (head, then event %d ms later)" % p["fb_first_delay_ms"]
    ttfb = {k: v["first_byte"]["ttfb"].get("p50") for k, v in per.items() if "first_byte" in v}
    first = {k: v["first_byte"]["first_delay"].get("p50") for k, v in per.items()
             if "first_byte" in v}
    ctx.rows += [
        Row(g, "time to head p50", "ms", ttfb),
        Row(g, "added time to head p50", "ms", _added(ttfb), kind="added",
            goal=[("<=", 1, "#6")]),
        Row(g, "first event delay p50", "ms", first),
        Row(g, "added first event delay p50", "ms", _added(first), kind="added",
            goal=[("<=", 1, "#2")]),
    ]
    ctx.error_row(g, {k: {"errors": v["first_byte"]["failed"]} for k, v in per.items()
                      if "first_byte" in v})


# -- 4. bulk --------------------------------------------------------------------------

def _transfer(ctx, t, what, func):
    watches = {role: RssWatch(proc.pid).start()
               for role, proc in t.roles().items() if proc is not None and proc.alive()}
    logged_before = ctx.log_bytes(t)
    try:
        res = func()
    finally:
        for w in watches.values():
            w.stop()
    for role, w in watches.items():
        res["%s_rss_start_mb" % role] = w.start_kb / 1024
        res["%s_rss_peak_mb" % role] = w.peak_kb / 1024
        res["%s_rss_exact_peak" % role] = w.hwm_ok
    if t.has_logserver:
        res["logged_mb"] = (ctx.settle_logs(t) - logged_before) / 1e6
        ctx.clear_logs(t)
    if not res.get("ok"):
        ctx.note("%s %s through %s: incomplete (%s)" % (what, ctx.size(res.get("bytes")), t.name,
                                                     res.get("status")))
    return res


def _growth(per, role):
    """Peak minus start RSS: near 0 when memory is constant in body size."""
    out = {}
    for name, r in per.items():
        peak, start = r.get("%s_rss_peak_mb" % role), r.get("%s_rss_start_mb" % role)
        out[name] = peak - start if peak is not None and start is not None else None
    return out


@scenario("bulk", help="1 GiB download and 256 MiB chunked upload: MB/s, peak RSS")
def bulk(ctx):
    p = ctx.p
    down, up = {}, {}
    for t in ctx.each_target("download"):
        down[t.name] = _transfer(ctx, t, "download", lambda: load.download(
            t.host, t.port, API + "/bytes", p["down_bytes"]))
    for t in ctx.each_target("upload"):
        up[t.name] = _transfer(ctx, t, "upload", lambda: load.upload(
            t.host, t.port, API + "/sink?hash=0", p["up_bytes"]))
    ctx.results["bulk"] = {"download": down, "upload": up}
    for label, per, goal in (("download %s" % ctx.size(p["down_bytes"]), down, 600),
                             ("chunked upload %s" % ctx.size(p["up_bytes"]), up, 150)):
        ctx.rows += [
            Row(label, "throughput", "MB/s", _vals(per, "mb_s"), goal=[(">=", goal, "#6")]),
            Row(label, "proxy peak RSS", "MiB", _vals(per, "proxy_rss_peak_mb"),
                goal=[("<=", 80, "#2")]),
            Row(label, "  growth during transfer", "MiB", _growth(per, "proxy"), kind="info"),
        ]
        if any(t.has_logserver for t in ctx.targets):
            ctx.rows += [
                Row(label, "logserver peak RSS", "MiB", _vals(per, "logserver_rss_peak_mb"),
                    kind="info", goal=[("<=", 80, "#2")]),
                Row(label, "logged by logserver", "MB", _vals(per, "logged_mb"), kind="info"),
            ]


# -- 5. logging server down or stalled --------------------------------------------------

@scenario("logdown", help="requests/s with the logging server killed, restarted, stalled")
def logdown(ctx):
    p = ctx.p
    c, dur = p["logdown_conc"], p["logdown_duration"]
    per = {}
    for t in ctx.each_target("logdown", only=lambda t: t.has_logserver):
        r = per[t.name] = {}
        r["on"] = ctx.load_loop(t, c, dur)
        t.kill_logserver()
        r["killed"] = ctx.load_loop(t, c, dur)
        try:
            t.restart_logserver()
            files = ctx.log_count(t)
            r["restarted"] = ctx.load_loop(t, c, dur)
            r["files_after_restart"] = ctx.log_count(t) - files
        except StartError as e:
            ctx.note("logging server did not restart: %s" % e)
            continue
        watch = RssWatch(t.proxy.pid).start()
        t.stall_logserver()
        try:
            r["stalled"] = ctx.load_loop(t, c, dur)
        finally:
            t.resume_logserver()
            watch.stop()
        r["stalled_proxy_rss_peak_mb"] = watch.peak_kb / 1024
        r["stalled_proxy_rss_start_mb"] = watch.start_kb / 1024
        gevent.sleep(0.5)  # let the resumed logging server drain before anything else
    ctx.results["logdown"] = per
    if not per:
        return
    g = "logging server trouble, c=%d" % c

    def rps_of(state):
        return {k: v.get(state, {}).get("rps") for k, v in per.items()}

    def share(state):
        return {k: (v[state]["rps"] / v["on"]["rps"]
                    if v.get(state) and v.get("on", {}).get("rps") else None)
                for k, v in per.items()}
    ctx.rows += [
        Row(g, "logging on", "req/s", rps_of("on"), kind="info"),
        Row(g, "logserver killed", "req/s", rps_of("killed"), kind="info"),
        Row(g, "  killed / on", "", share("killed"), kind="info", goal=[(">=", 0.9, "#2")]),
        Row(g, "restarted", "req/s", rps_of("restarted"), kind="info"),
        Row(g, "  log files after restart", "", _vals(per, "files_after_restart"), kind="info"),
        Row(g, "logserver stalled (SIGSTOP)", "req/s", rps_of("stalled"), kind="info"),
        Row(g, "  stalled / on", "", share("stalled"), kind="info", goal=[(">=", 0.9, "#2")]),
        Row(g, "  proxy peak RSS while stalled", "MiB",
            _vals(per, "stalled_proxy_rss_peak_mb"), kind="info", goal=[("<=", 80, "#2")]),
        Row(g, "  failed requests (all states)", "", {
            k: sum(s.get("errors", 0) + s.get("non2xx", 0) for s in v.values()
                   if isinstance(s, dict)) for k, v in per.items()}, kind="info"),
    ]


def run_all(ctx, names):
    for name in names:
        s = SCENARIOS[name]
        t0 = time.monotonic()
        ctx.progress("== %s: %s" % (name, s.help))
        ctx.probe()
        try:
            s.func(ctx)
        except Exception as e:  # one broken scenario must not lose the others' figures
            ctx.note("scenario %s failed: %s: %s" % (name, type(e).__name__, e))
            ctx.results.setdefault("errors", {})[name] = repr(e)
        ctx.timings[name] = round(time.monotonic() - t0, 1)


def log_dir_size(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total
