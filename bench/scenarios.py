"""The scenarios (issue 2's list; issue 6 adds to it): each runs against every available
target in turn, stores raw results and appends table rows. Register a new one with
@scenario(name); `--only` picks by name, and default=False keeps it out of a plain run.
Goals are (op, threshold, issue) for the proxy targets: issue 2's and issue 6's targets.
"""
import json
import os
import time

import gevent

from bench import load
from bench.procs import (RssWatch, StartError, cpu_ticks, nofile_limit, set_affinity,
                         tcp_counters, tree, wait_idle)
from bench.report import Row
from bench.targets import API, Gunicorn, Nginx
from orproxy.sink import max_log_streams

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
    "tok_streams": 100, "tok_events": 200, "tok_interval_ms": 20,
    "fb_count": 40, "fb_first_delay_ms": 20,
    "down_bytes": 1 << 30, "up_bytes": 256 << 20,
    "logdown_conc": 16, "logdown_duration": 5,
    "held_streams": 10000, "held_events": 40, "held_interval_ms": 500, "held_ramp_s": 10.0,
    "gu_conc": 64, "gu_workers": 2, "gu_rounds": 2,
}
QUICK = dict(FULL, lat_warmup=20, lat_requests=200, lat_rounds=2, rps_duration=1,
             rps_warmup=0.3, sse_events=25, tok_events=25, fb_count=10, down_bytes=64 << 20, up_bytes=16 << 20,
             logdown_duration=1, held_streams=500, held_events=10, held_ramp_s=1.0, gu_rounds=1)


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
            before = _metadata_files(t.log_dir) if t.has_logserver else None
            window, ticks = [], []  # when the measured load began and ended (not its warm-up)

            def started(t=t):
                window.append(time.time())
                if t.has_logserver:
                    ticks.extend((cpu_ticks([t.proxy.pid]), cpu_ticks([t.logserver.pid])))
            res = per.setdefault(t.name, {})["c%d" % c] = ctx.load_loop(
                t, c, p["rps_duration"], after_warmup=started)
            window.append(time.time())
            if before is not None:
                res.update(_logged_in_full(ctx, t, before, window, ticks, res))
    ctx.results["rps"] = per
    g = "1 KB JSON, req/s (%s)" % ctx.loadgen_name
    for c in p["rps_conc"]:
        key = "c%d" % c
        vals = {k: v.get(key, {}).get("rps") for k, v in per.items()}
        goal = [(">=", 2000, "#6")] if c == 64 else None
        ctx.rows.append(Row(g, "c=%d" % c, "req/s", vals, goal=goal))
        logged = {k: v[key] for k, v in per.items() if "logged_share" in v.get(key, {})}
        if logged:
            ctx.rows += [
                Row(g, "  c=%d: logging server busy after the load, s" % c, "",
                    {k: ("\u2265%.0f" if r["catchup_capped"] else "%.1f") % r["catchup_s"]
                     for k, r in logged.items()}, kind="info"),
                Row(g, "  c=%d: exchanges logged in full, %%" % c, "",
                    {k: 100 * r["logged_share"] for k, r in logged.items()}, kind="info"),
                Row(g, "  c=%d: logged in full per second of load + catch-up" % c, "req/s",
                    {k: r["sustained_rps"] for k, r in logged.items()}, kind="info"),
                Row(g, "  c=%d: CPU per exchange, proxy + logging server (catch-up too), ms" % c, "",
                    {k: "%.2f + %.2f" % (r["cpu_ms"]["proxy"], r["cpu_ms"]["logserver"])
                     for k, r in logged.items() if r.get("cpu_ms")}, kind="info"),
            ]
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


# -- 3b. many token streams --------------------------------------------------------------

@scenario("tokens", help="100 token streams x 200 events @ 20 ms: delay, CPU per event")
def tokens(ctx):
    """A busy agent fleet: many streams whose events come fast, so each log stream gathers
    its events (sink.BUSY_GATHER). CPU per event of the proxy and, catch-up included, of
    its logging server, from /proc."""
    p = ctx.p
    n, events, iv = p["tok_streams"], p["tok_events"], p["tok_interval_ms"]
    per = {}
    for t in ctx.each_target("token streams"):
        pids = {role: proc.pid for role, proc in t.roles().items() if proc is not None and proc.alive()}
        before = {role: cpu_ticks([pid]) for role, pid in pids.items()}
        per[t.name] = r = load.sse_streams(t.host, t.port, CHAT, n, events, iv)
        if "logserver" in pids:
            wait_idle([pids["logserver"]], window=0.5, timeout=LOG_CATCHUP_S * 3)
        tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
        r["cpu_us_per_event"] = {role: (cpu_ticks([pid]) - before[role]) * tick_us / max(r["events"], 1)
                                 for role, pid in pids.items()}
    ctx.results["tokens"] = per
    g = "%d token streams x %d @ %d ms" % (n, events, iv)
    d50, d99 = _vals(per, "delay", "p50"), _vals(per, "delay", "p99")
    cpu = {k: v["cpu_us_per_event"] for k, v in per.items() if v.get("cpu_us_per_event")}
    ctx.rows += [
        Row(g, "event delay p50", "ms", d50),
        Row(g, "event delay p99", "ms", d99),
        Row(g, "added delay p99", "ms", _added(d99), kind="added"),
        Row(g, "intact streams", "", {k: "%d/%d" % (v["intact"], n) for k, v in per.items()},
            kind="info"),
        Row(g, "CPU per event: proxy (+ logging server), us", "",
            {k: ("%.0f + %.0f" % (c["proxy"], c["logserver"]) if "logserver" in c
                 else "%.0f" % c.get("proxy", 0)) for k, c in cpu.items() if "proxy" in c},
            kind="info"),
    ]


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


# -- 6. 10,000 SSE streams held at once --------------------------------------------------

@scenario("streams10k", help="10,000 SSE streams held at once, one event per 500 ms for 20 s")
def streams10k(ctx):
    p = ctx.p
    events, iv = p["held_events"], p["held_interval_ms"]
    ramp = ctx.args.held_ramp if ctx.args.held_ramp is not None else p["held_ramp_s"]
    asked = ctx.args.held_streams or p["held_streams"]
    hz = os.sysconf("SC_CLK_TCK")
    upstream = ctx.upstream.proc
    limits, fits = _held_capacity(ctx)
    n = asked
    if fits is not None and fits < asked:
        if ctx.args.held_streams:
            ctx.note("streams10k: %d streams asked for, but the open-files limit lets every "
                     "process hold only %d (%s); running %d anyway" % (
                         asked, fits, _limits_text(limits), asked))
        else:
            n = max(100, fits // 100 * 100)
            ctx.note("streams10k: %d streams instead of %d: the open-files limit (%s) cannot be "
                     "raised here and a proxy needs 2 sockets per stream (orproxy also one log "
                     "stream each, up to a third of its limit); --held-streams %d forces it" % (
                         n, asked, _limits_text(limits), asked))
    per = {}
    for t in ctx.each_target("%d streams" % n):
        watches = {role: RssWatch(proc.pid, every=0.5).start()
                   for role, proc in t.roles().items() if proc is not None and proc.alive()}
        watches["upstream"] = RssWatch(upstream.pid, every=0.5).start()
        pids = {role: proc.pid for role, proc in t.roles().items()
                if proc is not None and proc.alive()}
        pids["upstream"] = upstream.pid
        ticks = {role: cpu_ticks([pid]) for role, pid in pids.items()}
        files_before = ctx.log_count(t)
        meta_before = _metadata_files(t.log_dir) if t.has_logserver else None
        tcp_before = tcp_counters()
        t0 = time.monotonic()

        def progress(state, name=t.name):
            ctx.progress("  %s: %d connected, %d open (peak %d), %d events, %d intact so far"
                         % (name, state["connected"], state["open"], state["peak_open"],
                            state["events"], state["intact"]))
        try:
            res = load.held_streams(t.host, t.port, API + "/sse", n, events, iv, ramp,
                                    progress=progress)
        finally:
            for w in watches.values():
                w.stop()
        wall = time.monotonic() - t0
        tcp_after = tcp_counters()
        res["tcp"] = {k: tcp_after[k] - tcp_before.get(k, 0) for k in tcp_after}
        for role, w in watches.items():
            res["%s_rss_start_mb" % role] = w.start_kb / 1024
            res["%s_rss_peak_mb" % role] = w.peak_kb / 1024
        res["cores"] = {role: round((cpu_ticks([pid]) - ticks[role]) / hz / wall, 2)
                        for role, pid in pids.items()}
        res["cores"]["loadgen"] = res["loadgen_cores"]
        if t.has_logserver:
            wait_idle([t.logserver.pid], timeout=30)
            res["logged_mb"] = ctx.settle_logs(t) / 1e6
            res["log_files"] = ctx.log_count(t) - files_before
            res["log"] = _log_completeness(t.log_dir, meta_before)
            ctx.clear_logs(t)
        per[t.name] = res
        if res["intact"] < n:
            ctx.note("%d streams through %s: %d intact (%d short, %d out of order, %d "
                     "incomplete; errors %s; statuses %s)" % (
                         n, t.name, res["intact"], res["short"], res["out_of_order"],
                         res["incomplete"], res["errors"] or "none", res["statuses"]))
        # Let the closed connections' after-work (log writes, pool trimming) finish.
        wait_idle(ctx.server_pids() + [upstream.pid], timeout=15)
    ctx.results["streams10k"] = {"params": {"streams": n, "asked": asked, "fits": fits,
                                            "events": events, "interval_ms": iv,
                                            "ramp_s": ramp},
                                 "nofile": {k: v[0] for k, v in limits.items()},
                                 "per_target": per}
    if not per:
        return
    g = "%d SSE streams held, %d x %d ms, ramp %g s" % (n, events, iv, ramp)
    d50, d99 = _vals(per, "delay", "p50"), _vals(per, "delay", "p99")
    ctx.rows += [
        Row(g, "intact streams", "", {k: "%d/%d" % (v["intact"], v["streams"])
                                      for k, v in per.items()}, kind="info"),
        Row(g, "  intact share", "%", {k: 100.0 * v["intact"] / v["streams"]
                                       for k, v in per.items()}, kind="info",
            goal=[(">=", 100, "#6")]),
        Row(g, "peak streams open at once", "", _vals(per, "peak_open"), kind="info"),
        Row(g, "connect to response head p50", "ms", _vals(per, "head", "p50")),
        Row(g, "connect to response head p99", "ms", _vals(per, "head", "p99")),
        Row(g, "  listen queue overflows (whole machine)", "",
            {k: v["tcp"].get("ListenOverflows") for k, v in per.items()}, kind="info"),
        Row(g, "event delay p50", "ms", d50),
        Row(g, "event delay p99", "ms", d99, goal=[("<=", 50, "#6")]),
        Row(g, "added delay p50", "ms", _added(d50), kind="added"),
        Row(g, "added delay p99", "ms", _added(d99), kind="added"),
        Row(g, "proxy peak RSS", "MiB", _vals(per, "proxy_rss_peak_mb"),
            goal=[("<=", 400, "#6")]),
    ]
    if any(t.has_logserver for t in ctx.targets):
        ctx.rows += [
            Row(g, "logserver peak RSS", "MiB", _vals(per, "logserver_rss_peak_mb"), kind="info"),
            Row(g, "  log files written", "", _vals(per, "log_files"), kind="info"),
            Row(g, "  exchanges fully logged (request, response, metadata)", "", {
                k: "%d/%d" % (v["log"]["complete"], v["streams"])
                for k, v in per.items() if "log" in v}, kind="info"),
            Row(g, "  bytes not logged (metadata's log_dropped_bytes)", "MB", {
                k: v["log"]["dropped_bytes"] / 1e6 for k, v in per.items() if "log" in v},
                kind="info"),
        ]
    ctx.rows += [
        Row(g, "CPU: proxy (+ logserver), cores", "", {
            k: ("%.2f + %.2f" % (v["cores"]["proxy"], v["cores"]["logserver"])
                if "logserver" in v["cores"] else "%.2f" % v["cores"]["proxy"])
            if "proxy" in v["cores"] else None for k, v in per.items()}, kind="info"),
        Row(g, "CPU 1: upstream + load generator, cores", "", {
            k: "%.2f + %.2f" % (v["cores"]["upstream"], v["cores"]["loadgen"])
            for k, v in per.items()}, kind="info"),
        Row(g, "fake upstream peak RSS", "MiB", _vals(per, "upstream_rss_peak_mb"), kind="info"),
        Row(g, "stream duration p50 (planned %.1f s)" % ((events - 1) * iv / 1000), "s",
            {k: (v["stream_duration"]["p50"] / 1000 if v["stream_duration"].get("p50")
                 else None) for k, v in per.items()}, kind="info"),
        Row(g, "  upstream lateness of last event p99", "ms",
            _vals(per, "upstream_slip", "p99"), kind="info"),
        Row(g, "load generator loop lag p99", "ms", _vals(per, "loadgen_lag_ms", "p99"),
            kind="info"),
    ]


def _metadata_files(log_dir):
    out = set()
    for root, _, files in os.walk(log_dir):
        out.update(os.path.join(root, f) for f in files if f.endswith("_metadata.json"))
    return out


def _logged_in_full(ctx, t, before, window, ticks, res):
    """After a requests/s run: how long the logging server worked on (it runs at idle
    priority, so on a shared core it logs mostly after the load), the share of the run's
    exchanges it holds in full, the rate at which exchanges were both proxied and
    logged (those logged in full over the load's duration plus the catch-up), and the CPU
    the proxy and the logging server spent per exchange from the load's start to the end
    of the catch-up."""
    t0 = time.monotonic()
    capped = not wait_idle([t.logserver.pid], window=0.5, timeout=LOG_CATCHUP_S * 6)
    catchup = time.monotonic() - t0
    logs = _log_completeness(t.log_dir, before, window=window)
    made = (res.get("ok") or 0) + (res.get("non2xx") or 0)
    duration = res.get("duration_s") or ctx.p["rps_duration"]
    cpu_ms = None
    if ticks and made:
        tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
        cpu_ms = {"proxy": (cpu_ticks([t.proxy.pid]) - ticks[0]) * tick_ms / made,
                  "logserver": (cpu_ticks([t.logserver.pid]) - ticks[1]) * tick_ms / made}
    return {"catchup_s": round(catchup, 1), "catchup_capped": capped, "cpu_ms": cpu_ms,
            "logged_share": logs["complete"] / made if made else None,
            "sustained_rps": logs["complete"] / (duration + catchup),
            "log_dropped_bytes": logs["dropped_bytes"]}


def _log_completeness(log_dir, before, window=None):
    """What the logging server holds for the exchanges since `before`: how many have
    their request and response parts complete and the proxy's metadata with nothing
    dropped; the bytes the proxy reports it could not log. With `window` (start, end):
    only the exchanges the proxy started within it, probes included."""
    out = {"exchanges": 0, "complete": 0, "with_response": 0, "with_proxy_meta": 0,
           "dropped_bytes": 0, "unreadable": 0}
    for path in sorted(_metadata_files(log_dir) - before)[:100000]:
        try:
            with open(path, "rb") as f:
                doc = json.loads(f.read())
        except (OSError, ValueError):
            out["unreadable"] += 1
            continue
        proxy = doc.get("proxy") or {}
        if window is None and proxy.get("path", "").endswith("/chat/completions"):
            continue  # the probe before the scenario
        if window is not None and not window[0] <= (proxy.get("started_at") or 0) <= window[1]:
            continue  # only the exchanges of the measured load, not its warm-up

        out["exchanges"] += 1
        parts = doc.get("parts") or {}
        response = (parts.get("response") or {}).get("complete") is True
        request = (parts.get("request") or {}).get("complete") is True
        dropped = proxy.get("log_dropped_bytes") or 0
        out["dropped_bytes"] += dropped
        out["with_response"] += response
        out["with_proxy_meta"] += bool(proxy)
        out["complete"] += bool(request and response and proxy and not dropped)
    return out


def _held_capacity(ctx):
    """{who: (open-files limit, streams it can hold)}, and the smallest of those: a proxy
    holds a client and an upstream socket per stream (orproxy also its log streams), the
    upstream and this load generator one socket per stream; ~100 files kept spare each
    (listening sockets, logs, epoll), the upstream also the proxies' idle keep-alive pools."""
    limits = {"load generator": nofile_limit(os.getpid())}
    limits["upstream"] = nofile_limit(ctx.upstream.proc.pid)
    spare = {"load generator": 100, "upstream": 100 + 256 + 128}
    for t in ctx.targets:
        for role, proc in t.roles().items():
            if proc is None or not proc.alive():
                continue
            # nginx's worker may differ from its master (worker_rlimit_nofile)
            lims = [nofile_limit(pid) for pid in tree(proc.pid)]
            lims = [x for x in lims if x is not None]
            who = "%s %s" % (t.name, role)
            limits[who] = min(lims) if lims else None
            if role == "proxy":
                spare[who] = 100 + (max_log_streams(limits[who]) if t.has_logserver and limits[who] else 0)
            else:
                spare[who] = None  # the logging server: at most the proxy's log streams
    out = {}
    for who, lim in limits.items():
        if lim is None or spare.get(who) is None:
            out[who] = (lim, None)
        elif who.endswith("proxy"):
            out[who] = (lim, (lim - spare[who]) // 2)
        else:
            out[who] = (lim, lim - spare[who])
    caps = [v[1] for v in out.values() if v[1] is not None]
    return out, (min(caps) if caps else None)


def _limits_text(limits):
    return ", ".join("%s %s" % (who, lim) for who, (lim, _) in limits.items()
                     if who in ("load generator", "upstream") or who.endswith("proxy"))


# -- 7. gunicorn -k gevent -w 2 on both cores vs one process on one core ------------------

LOG_CATCHUP_S = 20  # how long scenario gunicorn waits for a logging server to go idle


def _rps_with_cpu(ctx, host, port, cpus, pids):
    """requests/s at concurrency gu_conc (warm-up, then wrk on `cpus`), and the CPU cores
    each group of `pids` used during the measurement itself."""
    p = ctx.p
    c, dur = p["gu_conc"], p["rps_duration"]
    req = load.chat_request(host, port, CHAT)
    load.closed_loop(host, port, req, c, p["rps_warmup"], 0)
    hz = os.sysconf("SC_CLK_TCK")
    before = {k: cpu_ticks(v) for k, v in pids.items()}
    t0 = time.monotonic()
    own0 = os.times()
    work0 = ctx.work.snapshot()
    res = None
    if ctx.use_wrk:
        try:
            res = load.wrk_loop(host, port, CHAT, c, dur, cpus)
        except (RuntimeError, OSError) as e:
            ctx.note("wrk failed (%s); Python load generator instead" % e)
    if res is None:
        res = load.closed_loop(host, port, req, c, dur, 0)
    wall = time.monotonic() - t0
    own1 = os.times()
    res["other_cores"] = ctx.work.between(work0, ctx.work.snapshot())["other_cores"]
    res["cores"] = {k: round((cpu_ticks(v) - before[k]) / hz / wall, 2) for k, v in pids.items()}
    # the load generator: wrk (a reaped child) or this process
    res["cores"]["loadgen"] = round((own1.children_user + own1.children_system + own1.user
                                     + own1.system - own0.children_user - own0.children_system
                                     - own0.user - own0.system) / wall, 2)
    if pids.get("logserver"):
        # A logging server that fell behind (it runs at a lower priority) works on after
        # the load stops: a requests/s figure that leaves work for later.
        t1 = time.monotonic()
        res["logserver_after_capped"] = not wait_idle(pids["logserver"], timeout=LOG_CATCHUP_S)
        res["logserver_after_s"] = round(time.monotonic() - t1, 2)
    return res


GUNICORN_WORKERS = ("orproxy.worker.GeventWorker", "gevent")


@scenario("gunicorn", help="gunicorn -w 2 (orproxy's worker, then -k gevent) on both cores vs one "
                           "orproxy process on one core")
def gunicorn(ctx):
    p = ctx.p
    one = [t for t in ctx.targets if t.name == "orproxy"]
    if not one:
        ctx.note("scenario gunicorn needs the orproxy target (one process) to compare with")
        return
    one = one[0]
    direct = [t for t in ctx.targets if t.name == "direct"]
    upstream = ctx.upstream.proc
    all_cpus = {int(c) for c in ctx.cpus_all.split(",")}
    client_cpus = {int(c) for c in ctx.cpus_client.split(",")} if ctx.cpus_client else all_cpus
    # orproxy's own worker (the recommended setting), then gunicorn's -k gevent
    gus = [gu for gu in (_start_gunicorn(ctx, k) for k in GUNICORN_WORKERS) if gu is not None]
    if not gus:
        return
    gu = gus[0]
    # The control: what the same layouts give nginx, one worker on CPU 0 against a worker
    # per core on every CPU.
    nginx = Nginx(ctx, workers=len(all_cpus), cpus=ctx.cpus_all)
    if any(t.name == "nginx" for t in ctx.targets):
        nginx.start(ctx.upstream)
    rounds = {"direct_1": [], "one_process": [], "direct_2": [], "nginx_1": [], "nginx_2": [],
              **{g.worker_class: [] for g in gus}}
    phase_a = {"direct": "direct_1", "orproxy": "one_process", "nginx": "nginx_1"}
    try:
        for r in range(p["gu_rounds"]):
            # (a) the usual layout: proxy + logserver on CPU 0, upstream + wrk on CPU 1
            for t in ctx.each_target("gunicorn: one process, round %d" % (r + 1),
                                     only=lambda t: t.name in phase_a):
                pids = {"proxy": [t.proxy.pid], "logserver": [t.logserver.pid]} \
                    if t is one else {}
                pids["upstream"] = [upstream.pid]
                rounds[phase_a[t.name]].append(_rps_with_cpu(ctx, t.host, t.port, ctx.cpus_client, pids))
            # (b) everything on every CPU: gunicorn's workers, its logserver, upstream, wrk
            set_affinity(upstream.pid, all_cpus)
            try:
                if not wait_idle(ctx.server_pids() + [pr.pid for g in gus for pr in g.procs()]):
                    ctx.overlaps += 1
                if direct:
                    ctx.progress("gunicorn: direct on both cores, round %d" % (r + 1))
                    before = ctx.work.snapshot()
                    rounds["direct_2"].append(_rps_with_cpu(
                        ctx, direct[0].host, direct[0].port, ctx.cpus_all,
                        {"upstream": [upstream.pid]}))
                    ctx.disturbed.append(["gunicorn both cores", "direct"] + _share(ctx, before))
                for g in gus:
                    ctx.progress("gunicorn: -k %s -w %d on both cores, round %d"
                                 % (g.worker_class, g.workers, r + 1))
                    before = ctx.work.snapshot()
                    rounds[g.worker_class].append(_rps_with_cpu(
                        ctx, g.host, g.port, ctx.cpus_all,
                        {"proxy": g.worker_pids(), "logserver": [g.logserver.pid],
                         "upstream": [upstream.pid]}))
                    ctx.disturbed.append(["gunicorn both cores", g.name] + _share(ctx, before))
                if nginx.available:
                    ctx.progress("gunicorn: nginx, %d workers on both cores, round %d"
                                 % (nginx.workers, r + 1))
                    rounds["nginx_2"].append(_rps_with_cpu(
                        ctx, nginx.host, nginx.port, ctx.cpus_all,
                        {"proxy": tree(nginx.proc.pid), "upstream": [upstream.pid]}))
            finally:
                set_affinity(upstream.pid, client_cpus)
        files = sum(len(f) for _, _, f in os.walk(gu.log_dir))
    finally:
        for g in gus:
            _stop_gunicorn(ctx, g)
        nginx.stop()

    def mean(key, field="rps"):
        vals = [x.get(field) for x in rounds[key] if isinstance(x.get(field), (int, float))]
        return sum(vals) / len(vals) if vals else None

    def cores(key, who):
        vals = [x["cores"].get(who) for x in rounds[key] if who in x.get("cores", {})]
        return sum(vals) / len(vals) if vals else None

    one_rps, gu_rps = mean("one_process"), mean(gu.worker_class)

    def versus_one(key):
        """requests/s of a gunicorn layout over the one process's."""
        return mean(key) / one_rps if one_rps and mean(key) else None
    ratio = versus_one(gu.worker_class)
    nginx_1, nginx_2 = mean("nginx_1"), mean("nginx_2")
    nginx_ratio = nginx_2 / nginx_1 if nginx_1 and nginx_2 else None

    def per_core(key, rps):
        c = (cores(key, "proxy") or 0) + (cores(key, "logserver") or 0)
        return rps / c if rps and c else None
    one_pc, gu_pc = per_core("one_process", one_rps), per_core(gu.worker_class, gu_rps)
    # If the workers and their logserver had both cores to themselves (upstream and load
    # generator elsewhere), and the one process its core, at the per-core rates they
    # showed: a projection, not a measurement.
    projected = 2 * gu_pc / one_pc if gu_pc and one_pc else None
    ncpu = len(all_cpus)
    shared = sum(cores(gu.worker_class, k) or 0 for k in ("upstream", "loadgen"))
    if ratio is not None:
        ctx.note("gunicorn -w %d: the workers and their logging server share the %d cores with "
                 "the fake upstream and the load generator (%.2f cores of them during it), "
                 "while the one process has CPU 0 alone and leaves them CPU 1: the ratio "
                 "%.2f is bounded by that" % (gu.workers, ncpu, shared, ratio))
    ctx.results["gunicorn"] = {"rounds": rounds, "workers": gu.workers, "worker_class": gu.worker_class,
                               "concurrency": p["gu_conc"], "ratio": ratio, "nginx_ratio": nginx_ratio,
                               "log_files": files, "cpus": ctx.cpus_all}
    g = "gunicorn -w %d, 1 KB JSON c=%d (%s)" % (gu.workers, p["gu_conc"], ctx.loadgen_name)

    def side(key):
        if cores(key, "proxy") is None:
            return None
        return "%.2f + %.2f" % (cores(key, "proxy"), cores(key, "logserver"))
    other_rows = []
    for other in gus[1:]:
        other_rows += [
            Row(g, "gunicorn -k %s: all on both cores" % other.worker_class, "req/s",
                {"orproxy": mean(other.worker_class)}),
            Row(g, "  gunicorn -k %s / 1 process" % other.worker_class, "",
                {"orproxy": versus_one(other.worker_class)}, kind="info")]
    ctx.rows += [
        Row(g, "1 process: proxy+logserver CPU 0, upstream+wrk CPU 1", "req/s",
            {"direct": mean("direct_1"), "orproxy": one_rps, "nginx": nginx_1}),
        Row(g, "gunicorn -k %s (nginx: %d workers): all on both cores (shared with upstream, "
            "wrk)" % (gu.worker_class, nginx.workers), "req/s",
            {"direct": mean("direct_2"), "orproxy": gu_rps, "nginx": nginx_2}),
        Row(g, "  gunicorn / 1 process (nginx: its workers / 1 worker)", "",
            {"orproxy": ratio, "nginx": nginx_ratio}, kind="info", goal=[(">=", 1.8, "#6")]),
        *other_rows,
        Row(g, "  CPU 1 process: proxy + logserver, cores", "",
            {"orproxy": side("one_process")}, kind="info"),
        Row(g, "  CPU gunicorn -k %s: workers + logserver, cores" % gu.worker_class, "",
            {"orproxy": side(gu.worker_class)}, kind="info"),
        Row(g, "  CPU upstream + load generator, cores (1 process / gunicorn)", "", {
            k: _pair(*[(cores(key, "upstream") or 0) + (cores(key, "loadgen") or 0)
                       if rounds[key] else None for key in keys])
            for k, keys in (("direct", ("direct_1", "direct_2")),
                            ("orproxy", ("one_process", gu.worker_class)))}, kind="info"),
        Row(g, "  other work on the machine, cores (1 process / gunicorn)", "", {
            k: _pair(*[mean(key, "other_cores") for key in keys])
            for k, keys in (("direct", ("direct_1", "direct_2")),
                            ("orproxy", ("one_process", gu.worker_class)))}, kind="info"),
        Row(g, "  req/s per core of proxy + logserver (1 process / gunicorn)", "",
            {"orproxy": _pair(one_pc, gu_pc, "%.0f")}, kind="info"),
        Row(g, "  projected ratio: 2 cores for gunicorn alone vs 1 (2 x per-core ratio)", "",
            {"orproxy": projected}, kind="info"),
        Row(g, "  logserver busy after the load, s (1 process / gunicorn)", "", {
            "orproxy": " / ".join(_catchup(rounds[key]) for key in ("one_process", gu.worker_class))},
            kind="info"),
        Row(g, "  log files written under gunicorn", "", {"orproxy": files}, kind="info"),
    ]
    errors = sum(x.get("errors", 0) + x.get("non2xx", 0)
                 for key in ("one_process", *(g.worker_class for g in gus)) for x in rounds[key])
    ctx.error_row(g, {"orproxy": {"errors": errors}})


def _catchup(results):
    """Mean seconds a logging server stayed busy after the load ('>=N' if it was still
    busy when the wait gave up)."""
    vals = [r["logserver_after_s"] for r in results if "logserver_after_s" in r]
    if not vals:
        return "\u2014"
    capped = any(r.get("logserver_after_capped") for r in results)
    return ("\u2265%.0f" if capped else "%.1f") % (sum(vals) / len(vals))


def _start_gunicorn(ctx, worker_class):
    """orproxy under gunicorn with that worker class, once it answers and has settled; None
    (with a note) when it does not start."""
    gu = Gunicorn(ctx, ctx.args.gunicorn_cmd_argv, ctx.args.logserver_cmd_argv,
                  ctx.p["gu_workers"], worker_class)
    try:
        gu.start(ctx.upstream)
        # one chat completion answered, then the workers' start-up work done (bounded)
        conn = load.Connection(gu.host, gu.port, timeout=10)
        try:
            for _ in range(50):
                try:
                    if conn.request(load.chat_request(gu.host, gu.port, CHAT)).status == 200:
                        break
                except (OSError, ValueError):
                    conn.close()
                time.sleep(0.2)
            else:
                raise StartError("gunicorn answers no chat completion:\n%s" % gu.proc.tail())
        finally:
            conn.close()
        wait_idle([pr.pid for pr in gu.procs()], timeout=15)
    except StartError as e:
        ctx.note("gunicorn -k %s did not start: %s" % (worker_class, e))
        _stop_gunicorn(ctx, gu)
        return None
    return gu


def _stop_gunicorn(ctx, gu):
    gu.stop()
    for pr in gu.procs():
        if pr in ctx.extra_procs:
            ctx.extra_procs.remove(pr)


def _pair(a, b, form="%.2f"):
    if a is None and b is None:
        return None
    return "%s / %s" % tuple("\u2014" if v is None else form % v for v in (a, b))


def _share(ctx, before):
    share = ctx.work.between(before, ctx.work.snapshot())
    return [share["other_cores"], share["wall_s"]]


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
