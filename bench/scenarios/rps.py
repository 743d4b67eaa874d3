"""Scenario rps (issue 2): requests/s of 1 KB JSON chat completions in a closed loop
at concurrency 16 and 64, and for orproxy how much of that load its logging server then
holds in full, how fast, and at what CPU per exchange.
"""
import os
import time

from bench.procs import cpu_ticks, wait_idle
from bench.report import Row
from bench.scenarios.common import LOG_CATCHUP_S, log_completeness, metadata_files
from bench.scenarios.registry import scenario


@scenario("rps", help="1 KB JSON chat completions: requests/s at concurrency 16 and 64")
def rps(ctx):
    p = ctx.p
    per = {}
    for c in p["rps_conc"]:
        for t in ctx.each_target("rps c=%d" % c):
            before = metadata_files(t.log_dir) if t.has_logserver else None
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
    logs = log_completeness(t.log_dir, before, window=window)
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
