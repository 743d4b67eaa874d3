"""Scenario latency (issue 2): a 1 KB JSON chat completion at concurrency 1, one
keep-alive connection, rounds interleaving the targets: p50/p99 and what each proxy adds.
"""
from bench import load
from bench.report import Row
from bench.scenarios.common import CHAT, added, figures
from bench.scenarios.registry import scenario


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
    p50, p99 = figures(per, "p50"), figures(per, "p99")
    ctx.rows += [
        Row(g, "latency p50", "ms", p50),
        Row(g, "latency p99", "ms", p99),
        Row(g, "added p50", "ms", added(p50), kind="added", goal=[("<=", 0.5, "#6")]),
        Row(g, "added p99", "ms", added(p99), kind="added", goal=[("<=", 1.5, "#6")]),
        Row(g, "requests/s (1/mean)", "req/s",
            {k: (1000 / v["mean"] if v.get("mean") else None) for k, v in per.items()}),
    ]
    ctx.error_row(g, per)
    ctx.log_files_row(g)
