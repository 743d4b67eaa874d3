"""Scenario bulk (issue 2): a 1 GiB download and a 256 MiB chunked upload, one at a
time: throughput, and the peak RSS of the proxy and its logging server during each.
"""
from bench import load
from bench.procs import RssWatch
from bench.report import Row
from bench.scenarios.common import figures
from bench.scenarios.registry import scenario
from bench.targets import API


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
            Row(label, "throughput", "MB/s", figures(per, "mb_s"), goal=[(">=", goal, "#6")]),
            Row(label, "proxy peak RSS", "MiB", figures(per, "proxy_rss_peak_mb"),
                goal=[("<=", 80, "#2")]),
            Row(label, "  growth during transfer", "MiB", _growth(per, "proxy"), kind="info"),
        ]
        if any(t.has_logserver for t in ctx.targets):
            ctx.rows += [
                Row(label, "logserver peak RSS", "MiB", figures(per, "logserver_rss_peak_mb"),
                    kind="info", goal=[("<=", 80, "#2")]),
                Row(label, "logged by logserver", "MB", figures(per, "logged_mb"), kind="info"),
            ]
