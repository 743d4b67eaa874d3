"""Scenario logdown (issue 2): orproxy's requests/s with its logging server on,
killed, restarted and stalled: logging trouble must not slow the proxy.
"""
import gevent

from bench.procs import RssWatch, StartError
from bench.report import Row
from bench.scenarios.common import figures
from bench.scenarios.registry import scenario


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
        Row(g, "  log files after restart", "", figures(per, "files_after_restart"), kind="info"),
        Row(g, "logserver stalled (SIGSTOP)", "req/s", rps_of("stalled"), kind="info"),
        Row(g, "  stalled / on", "", share("stalled"), kind="info", goal=[(">=", 0.9, "#2")]),
        Row(g, "  proxy peak RSS while stalled", "MiB",
            figures(per, "stalled_proxy_rss_peak_mb"), kind="info", goal=[("<=", 80, "#2")]),
        Row(g, "  failed requests (all states)", "", {
            k: sum(s.get("errors", 0) + s.get("non2xx", 0) for s in v.values()
                   if isinstance(s, dict)) for k, v in per.items()}, kind="info"),
    ]
