"""The run's shared state, handed to every scenario as `ctx`: parameters, targets, results,
rows and notes; how to wait for, probe and load each target; and how much CPU other work
on the machine took meanwhile.
"""
import os
import subprocess
import sys
import tempfile
import time

import gevent

from bench import load
from bench.procs import cpu_ticks, wait_idle
from bench.report import Row
from bench.scenarios import CHAT, FULL, QUICK, log_dir_size

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Bench:
    """The run's shared state, handed to every scenario."""

    def __init__(self, args):
        self.args = args
        self.p = dict(QUICK if args.quick else FULL)
        self.repo = REPO
        self.t0 = time.monotonic()
        self.results, self.rows, self.notes, self.timings = {}, [], [], {}
        self.all_targets = []
        self.scenario = None  # the one running now (run_all sets it)
        self.overlaps = 0  # measurements started before the proxies were idle
        self.upstream = None
        self.extra_procs = []  # processes a scenario starts itself (gunicorn and its logserver)
        self.work = OtherWork(lambda: self.server_pids() + (
            [self.upstream.proc.pid] if self.upstream and self.upstream.proc.alive() else []) + [
            p.pid for p in self.extra_procs if p.alive()])
        self.disturbed = []  # [label, target, cores of other work during it, seconds]
        ncpu = len(os.sched_getaffinity(0))
        # every CPU this run may use (children inherit the harness's pinning to CPU 1,
        # so a process meant to use all of them is started with taskset -c <these>)
        self.cpus_all = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
        self.nofile = None  # (soft, hard, (soft, hard) before raising): see main()
        self.pinned = ncpu >= 2 and not args.no_pin
        self.cpus_proxy = "0" if self.pinned else None
        self.cpus_client = "1" if self.pinned else None
        self.run_dir = tempfile.mkdtemp(prefix="orproxy-bench-", dir=args.log_dir)
        self.workdir = self.run_dir
        self.log_root = self.run_dir
        self.use_wrk = bool(load.wrk_path()) and not args.no_wrk
        self.loadgen_name = "wrk" if self.use_wrk else "python-gevent"

    @property
    def targets(self):
        """The available targets that take part in the scenario running now."""
        return [t for t in self.all_targets if t.available
                and (t.scenarios is None or self.scenario in t.scenarios)]

    # -- output ------------------------------------------------------------------------
    def progress(self, msg):
        print("[%6.1fs] %s" % (time.monotonic() - self.t0, msg), file=sys.stderr, flush=True)

    def note(self, msg):
        self.notes.append(msg)
        self.progress("note: " + msg)

    @staticmethod
    def size(n):
        if not isinstance(n, int):
            return str(n)
        for unit, k in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if n >= k and n % k == 0:
                return "%d %s" % (n // k, unit)
        return "%d B" % n

    # -- targets -----------------------------------------------------------------------
    def each_target(self, label, only=None):
        """The available targets, skipping (and noting) any whose process has died."""
        for t in list(self.targets):
            if only is not None and not only(t):
                continue
            dead = [(role, proc) for role, proc in t.roles().items()
                    if proc is not None and not proc.alive()]
            if dead:
                role, proc = dead[0]
                t.available = False
                t.note = "%s died (exit %s) before %s" % (role, proc.popen.returncode, label)
                self.note("%s: %s\n%s" % (t.name, t.note, proc.tail()))
                continue
            if not wait_idle(self.server_pids()):
                self.overlaps += 1
            self.progress("%s: %s" % (label, t.name))
            before = self.work.snapshot()
            yield t
            share = self.work.between(before, self.work.snapshot())
            self.disturbed.append([label, t.name, share["other_cores"], share["wall_s"]])

    def probe(self):
        """Before each scenario: one chat completion per target, 5 s at most. A target
        that does not answer is dropped for the rest of the run (else every request of
        every scenario would wait for its timeout)."""
        for t in self.targets:
            conn = load.Connection(t.host, t.port, timeout=5)
            try:
                with gevent.Timeout(6):
                    r = conn.request(load.chat_request(t.host, t.port, CHAT))
                if r.status == 200:
                    continue
                why = "answered %d" % r.status
            except (OSError, ValueError, gevent.Timeout) as e:
                why = "%s: %s" % (type(e).__name__, e)
            finally:
                conn.close()
            t.available = False
            t.note = "dropped: a 1 KB chat completion failed (%s)" % why
            self.note("%s %s" % (t.name, t.note))

    def server_pids(self):
        """Every running target's processes, those sitting a scenario out too (their CPU
        is the run's, not other work's)."""
        return [proc.pid for t in self.all_targets if t.available for proc in t.roles().values()
                if proc is not None and proc.alive()]

    def load_loop(self, t, concurrency, duration, after_warmup=lambda: None):
        """requests/s of 1 KB JSON chat completions at `concurrency`, after a warm-up."""
        path = CHAT
        req = load.chat_request(t.host, t.port, path)
        load.closed_loop(t.host, t.port, req, concurrency, self.p["rps_warmup"], 0)
        after_warmup()
        if not self.use_wrk:
            return load.closed_loop(t.host, t.port, req, concurrency, duration, 0)
        try:
            return load.wrk_loop(t.host, t.port, path, concurrency, duration, self.cpus_client)
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            self.note("wrk against %s failed (%s); Python load generator instead" % (t.name, e))
            return load.closed_loop(t.host, t.port, req, concurrency, duration, 0)

    # -- the logging server's files ------------------------------------------------------
    def log_count(self, t):
        return sum(len(files) for _, _, files in os.walk(t.log_dir)) if t.has_logserver else None

    def log_bytes(self, t):
        return log_dir_size(t.log_dir) if t.has_logserver else None

    def settle_logs(self, t, timeout=60.0):
        """Wait (bounded) until the logging server stops writing; return the dir's size."""
        deadline = time.monotonic() + timeout
        last, stable_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            size = log_dir_size(t.log_dir)
            if size != last:
                last, stable_since = size, time.monotonic()
            elif time.monotonic() - stable_since >= 0.5:
                break
            gevent.sleep(0.1)
        return last

    def clear_logs(self, t):
        """Bulk scenarios log gigabytes to tmpfs: free them before the next one."""
        for root, _, files in os.walk(t.log_dir):
            for f in files:
                if f.endswith(".bin"):
                    try:
                        os.unlink(os.path.join(root, f))
                    except OSError:
                        pass

    # -- common rows ---------------------------------------------------------------------
    def error_row(self, group, per):
        errors = {k: v.get("errors", 0) for k, v in per.items()}
        if any(errors.values()):
            self.rows.append(Row(group, "failed requests", "", errors, kind="info"))

    def log_files_row(self, group):
        counts = {t.name: self.log_count(t) for t in self.targets if t.has_logserver}
        if counts:
            self.rows.append(Row(group, "files in log dir so far", "", counts, kind="info"))


# -- set-up ------------------------------------------------------------------------------


class OtherWork:
    """How much CPU other processes on the machine used over an interval: the busy time of
    all CPUs (/proc/stat) minus this process's, its reaped children's and its live
    children's. The machine is shared; this says which figures other work disturbed."""

    def __init__(self, live_pids):
        self.hz = os.sysconf("SC_CLK_TCK")
        self.live_pids = live_pids

    def snapshot(self):
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        t = os.times()
        ours = t.user + t.system + t.children_user + t.children_system
        ours += cpu_ticks(self.live_pids()) / self.hz
        # user nice system idle iowait irq softirq steal
        return (time.monotonic(), (v[0] + v[1] + v[2] + v[5] + v[6]) / self.hz,
                v[7] / self.hz, ours)

    @staticmethod
    def between(a, b):
        wall = b[0] - a[0]
        other = max(0.0, (b[1] - a[1]) - (b[3] - a[3]))
        return {"wall_s": round(wall, 2), "other_cpu_s": round(other, 2),
                "other_cores": round(other / wall, 2) if wall > 0 else None,
                "steal_cores": round((b[2] - a[2]) / wall, 2) if wall > 0 else None}
