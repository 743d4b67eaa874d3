"""The scenario registry: each scenario module registers its function with
@scenario(name); `--only` picks by name, and default=False keeps it out of a plain run. The
run's parameters (FULL, or QUICK for --quick) are one table, handed to every scenario as
ctx.p.
"""
import time


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
    "ws_rounds": 10, "ws_echoes": 1000,
    "idx_count": 100_000, "idx_queries": 300, "idx_rate": 500, "idx_seconds": 10.0,
    "idx_burst": 5000, "idx_concurrency": 32,
}
QUICK = dict(FULL, lat_warmup=20, lat_requests=200, lat_rounds=2, rps_duration=1,
             rps_warmup=0.3, sse_events=25, tok_events=25, fb_count=10, down_bytes=64 << 20, up_bytes=16 << 20,
             logdown_duration=1, held_streams=500, held_events=10, held_ramp_s=1.0, gu_rounds=1,
             ws_rounds=3, ws_echoes=300, idx_count=20_000, idx_queries=100, idx_seconds=5.0)


def run_all(ctx, names):
    for name in names:
        s = SCENARIOS[name]
        t0 = time.monotonic()
        ctx.progress("== %s: %s" % (name, s.help))
        ctx.scenario = name
        ctx.probe()
        try:
            s.func(ctx)
        except Exception as e:  # one broken scenario must not lose the others' figures
            ctx.note("scenario %s failed: %s: %s" % (name, type(e).__name__, e))
            ctx.results.setdefault("errors", {})[name] = repr(e)
        ctx.timings[name] = round(time.monotonic() - t0, 1)
