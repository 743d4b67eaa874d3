"""Scenario streams10k (issue 6): 10,000 SSE streams held at once per target (or as
many as the open-files limit lets every process hold), one event per 500 ms for 20 s.
"""
import os
import time

from bench.held import held_streams
from bench.procs import RssWatch, cpu_ticks, nofile_limit, tcp_counters, tree, wait_idle
from bench.report import Row
from bench.scenarios.common import added, figures, log_completeness, metadata_files
from bench.scenarios.registry import scenario
from bench.targets import API


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
        meta_before = metadata_files(t.log_dir) if t.has_logserver else None
        tcp_before = tcp_counters()
        t0 = time.monotonic()

        def progress(state, name=t.name):
            ctx.progress("  %s: %d connected, %d open (peak %d), %d events, %d intact so far"
                         % (name, state["connected"], state["open"], state["peak_open"],
                            state["events"], state["intact"]))
        try:
            res = held_streams(t.host, t.port, API + "/sse", n, events, iv, ramp,
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
            res["log"] = log_completeness(t.log_dir, meta_before)
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
    d50, d99 = figures(per, "delay", "p50"), figures(per, "delay", "p99")
    ctx.rows += [
        Row(g, "intact streams", "", {k: "%d/%d" % (v["intact"], v["streams"])
                                      for k, v in per.items()}, kind="info"),
        Row(g, "  intact share", "%", {k: 100.0 * v["intact"] / v["streams"]
                                       for k, v in per.items()}, kind="info",
            goal=[(">=", 100, "#6")]),
        Row(g, "peak streams open at once", "", figures(per, "peak_open"), kind="info"),
        Row(g, "connect to response head p50", "ms", figures(per, "head", "p50")),
        Row(g, "connect to response head p99", "ms", figures(per, "head", "p99")),
        Row(g, "  listen queue overflows (whole machine)", "",
            {k: v["tcp"].get("ListenOverflows") for k, v in per.items()}, kind="info"),
        Row(g, "event delay p50", "ms", d50),
        Row(g, "event delay p99", "ms", d99, goal=[("<=", 50, "#6")]),
        Row(g, "added delay p50", "ms", added(d50), kind="added"),
        Row(g, "added delay p99", "ms", added(d99), kind="added"),
        Row(g, "proxy peak RSS", "MiB", figures(per, "proxy_rss_peak_mb"),
            goal=[("<=", 400, "#6")]),
    ]
    if any(t.has_logserver for t in ctx.targets):
        ctx.rows += [
            Row(g, "logserver peak RSS", "MiB", figures(per, "logserver_rss_peak_mb"), kind="info"),
            Row(g, "  log files written", "", figures(per, "log_files"), kind="info"),
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
        Row(g, "fake upstream peak RSS", "MiB", figures(per, "upstream_rss_peak_mb"), kind="info"),
        Row(g, "stream duration p50 (planned %.1f s)" % ((events - 1) * iv / 1000), "s",
            {k: (v["stream_duration"]["p50"] / 1000 if v["stream_duration"].get("p50")
                 else None) for k, v in per.items()}, kind="info"),
        Row(g, "  upstream lateness of last event p99", "ms",
            figures(per, "upstream_slip", "p99"), kind="info"),
        Row(g, "load generator loop lag p99", "ms", figures(per, "loadgen_lag_ms", "p99"),
            kind="info"),
    ]


def _held_capacity(ctx):
    """{who: (open-files limit, streams it can hold)}, and the smallest of those: a proxy
    holds a client and an upstream socket per stream (orproxy logs on one connection), the
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
                spare[who] = 100  # its log goes on one connection, whatever the streams
            else:
                spare[who] = None  # the logging server: one connection per proxy
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
