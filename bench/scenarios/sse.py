"""Scenario sse (issue 2): concurrent streaming chat completions, per-event delay
(receive time - the upstream's orproxy_sent_ns); then time to head and to the first event,
one stream at a time.
"""
import time

import gevent

from bench import load
from bench.report import Row
from bench.scenarios.common import CHAT, added, figures
from bench.scenarios.registry import scenario


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
    d50, d99 = figures(per, "delay", "p50"), figures(per, "delay", "p99")
    ctx.rows += [
        Row(g, "event delay p50", "ms", d50),
        Row(g, "event delay p99", "ms", d99),
        Row(g, "added delay p50", "ms", added(d50), kind="added"),
        Row(g, "added delay p99", "ms", added(d99), kind="added",
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
        Row(g, "added time to head p50", "ms", added(ttfb), kind="added",
            goal=[("<=", 1, "#6")]),
        Row(g, "first event delay p50", "ms", first),
        Row(g, "added first event delay p50", "ms", added(first), kind="added",
            goal=[("<=", 1, "#2")]),
    ]
    ctx.error_row(g, {k: {"errors": v["first_byte"]["failed"]} for k, v in per.items()
                      if "first_byte" in v})
