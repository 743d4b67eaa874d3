"""Scenario tokens: a busy agent fleet, 100 token streams x 200 events @ 20 ms:
per-event delay and the CPU per event of the proxy and its logging server.
"""
import os

from bench import load
from bench.procs import cpu_ticks, wait_idle
from bench.report import Row
from bench.scenarios.common import CHAT, LOG_CATCHUP_S, added, figures
from bench.scenarios.registry import scenario


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
    d50, d99 = figures(per, "delay", "p50"), figures(per, "delay", "p99")
    cpu = {k: v["cpu_us_per_event"] for k, v in per.items() if v.get("cpu_us_per_event")}
    ctx.rows += [
        Row(g, "event delay p50", "ms", d50),
        Row(g, "event delay p99", "ms", d99),
        Row(g, "added delay p99", "ms", added(d99), kind="added"),
        Row(g, "intact streams", "", {k: "%d/%d" % (v["intact"], n) for k, v in per.items()},
            kind="info"),
        Row(g, "CPU per event: proxy (+ logging server), us", "",
            {k: ("%.0f + %.0f" % (c["proxy"], c["logserver"]) if "logserver" in c
                 else "%.0f" % c.get("proxy", 0)) for k, c in cpu.items() if "proxy" in c},
            kind="info"),
    ]
