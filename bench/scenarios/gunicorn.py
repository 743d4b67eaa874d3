"""Scenario gunicorn (issue 6): orproxy under gunicorn -w 2 (orproxy's worker, then
-k gevent) on both cores against one orproxy process on one core, with nginx moved the same
way as the control of what the layouts allow.
"""
import os
import time

from bench import load
from bench.procs import StartError, cpu_ticks, set_affinity, tree, wait_idle
from bench.report import Row
from bench.scenarios.common import CHAT, LOG_CATCHUP_S
from bench.scenarios.registry import scenario
from bench.targets import Gunicorn, Nginx


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
