"""orproxy benchmark: direct vs orproxy (logging on) vs nginx, side by side in one run.

    .venv/bin/python bench/run.py [--quick] [--json OUT] [--only latency,rps,...] [--install]
                                  [--peers] [--install-peers]

Starts the fake upstream, orproxy with its logging server, and nginx (when installed),
pins the proxies to CPU 0 and the upstream and load generator to CPU 1, runs the
scenarios of bench/scenarios/, prints a table and saves JSON. With --peers also
claude-tap and mitmdump (from their own venv, bench/.peers-venv). See bench/README.md.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench import load, report  # noqa: E402
from bench.context import Bench  # noqa: E402
from bench.procs import StartError, raise_nofile  # noqa: E402
from bench.scenarios import SCENARIOS, run_all  # noqa: E402
from bench.scenarios.index import OPTIONS as INDEX_OPTIONS  # noqa: E402
from bench.targets import PEERS_VENV, ClaudeTap, Direct, Mitmdump, Nginx, Orproxy, Upstream  # noqa: E402

DEFAULT_JSON = os.path.join(REPO, "bench", "results", "latest.json")
TARGETS = ("direct", "orproxy", "nginx")
PEERS = ("claude-tap", "mitmdump")  # with --peers
# Pinned so that runs compare (mitmproxy 12 needs Python 3.12: 11.0.2 is the last for 3.11).
PEER_PACKAGES = ("claude-tap==0.1.146", "mitmproxy==11.0.2")
NOISY_CORES = 0.3  # other work above this during a measurement is named in the notes
# The fake upstream's listen queue (the kernel caps it at net.core.somaxconn). With gevent's
# default of 128, a proxy that opens upstream connections faster than the upstream accepts
# them (scenario streams10k: hundreds per second) overflows it, and each dropped connection
# waits for the SYN retry (1, 3, 7, 15 s): that would be charged to the proxy.
UPSTREAM_BACKLOG = 4096


def install_tools(need):
    """apt-get install nginx/wrk from Debian, without letting the package start nginx."""
    if os.geteuid() != 0:
        return "cannot install %s: not root" % " ".join(need)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    policy = "/usr/sbin/policy-rc.d"
    made_policy = False
    if not os.path.exists(policy):
        # exit 101 = "action forbidden": the package's postinst must not start a system
        # nginx on port 80 that would outlive the benchmark.
        with open(policy, "w") as f:
            f.write("#!/bin/sh\nexit 101\n")
        os.chmod(policy, 0o755)
        made_policy = True
    try:
        cmd = ["apt-get", "install", "-y", "--no-install-recommends"] + need
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600)
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            return "apt-get install %s failed: %s" % (" ".join(need), r.stderr.strip()[-300:])
    finally:
        if made_policy:
            os.unlink(policy)
    return None


def install_peers():
    """pip install the peers into a venv of their own, bench/.peers-venv: their
    dependencies (aiohttp, mitmproxy's pinned cryptography...) must not touch the project's."""
    pip = os.path.join(PEERS_VENV, "bin", "pip")
    try:
        if not os.path.exists(pip):
            subprocess.run([sys.executable, "-m", "venv", PEERS_VENV], check=True,
                           capture_output=True, text=True, timeout=300)
        subprocess.run([pip, "install", "-q", "--disable-pip-version-check"] + list(PEER_PACKAGES),
                       check=True, capture_output=True, text=True, timeout=900)
    except subprocess.CalledProcessError as e:
        return "installing the peers failed: %s" % (e.stderr or "").strip()[-300:]
    except (OSError, subprocess.SubprocessError) as e:
        return "installing the peers failed: %s" % e
    return None


def fs_type(path):
    best, kind = "", "?"
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            mnt = parts[1]
            if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, kind = mnt, parts[2]
    return kind


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="scenarios:\n" + "\n".join(
                                     "  %-10s %s%s" % (s.name, s.help, "" if s.default else " (not in a plain run)")
                                     for s in SCENARIOS.values()))
    ap.add_argument("--quick", action="store_true", help="small sizes and counts: a smoke run of about 1.5 minutes")
    ap.add_argument("--json", default=DEFAULT_JSON, metavar="PATH", help="where to save results (default bench/results/latest.json)")
    ap.add_argument("--only", metavar="LIST", help="comma-separated scenarios to run")
    ap.add_argument("--targets", default=",".join(TARGETS), metavar="LIST",
                    help="comma-separated subset of " + ",".join(TARGETS + PEERS))
    ap.add_argument("--peers", action="store_true",
                    help="also the peer proxies %s, in scenarios latency and rps" % " and ".join(PEERS))
    ap.add_argument("--install-peers", action="store_true",
                    help="pip install the peers into bench/.peers-venv first (%s); implies --peers"
                    % ", ".join(PEER_PACKAGES))
    ap.add_argument("--held-streams", type=int, metavar="N",
                    help="streams of scenario streams10k (default 10,000, quick 500; by default "
                    "lowered to what the open-files limit lets every process hold; given, it is not)")
    ap.add_argument("--held-ramp", type=float, metavar="S",
                    help="seconds over which scenario streams10k starts its streams (default 10, quick 1)")
    ap.add_argument("--ws-rounds", type=int, metavar="N",
                    help="rounds of transfers of scenario websocket (default 10, quick 3): more give steadier medians")
    ap.add_argument("--ws-pin", action="store_true",
                    help="scenario websocket: orproxy and orlogserver on CPU 0, the upstream and client on CPU 1 "
                    "(direct then has one core for both ends: flatters the proxy); by default not pinned")
    for key, kind, what in INDEX_OPTIONS:
        ap.add_argument("--index-" + key, type=kind, metavar="N", help="scenario index: " + what)
    ap.add_argument("--install", action="store_true", help="apt-get install nginx and wrk when missing (needs root)")
    ap.add_argument("--no-wrk", action="store_true", help="use the Python load generator even when wrk is installed")
    ap.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    ap.add_argument("--log-dir", default="/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir(),
                    metavar="DIR", help="parent of the run's temporary dir (logs, configs, process output); default /dev/shm (tmpfs)")
    ap.add_argument("--keep", action="store_true", help="keep the run's temporary dir (logs, process output)")
    ap.add_argument("--upstream-cmd", default="%s -m orproxy.testing.fake_upstream --backlog %d" % (
                        shlex.quote(sys.executable), UPSTREAM_BACKLOG),
                    help="command of the fake upstream (gets --port 0); default: orproxy.testing.fake_upstream "
                    "with a listen backlog of %d" % UPSTREAM_BACKLOG)
    bindir = os.path.dirname(sys.executable)
    ap.add_argument("--gunicorn-cmd", default=os.path.join(bindir, "gunicorn"),
                    help="gunicorn, for scenario gunicorn (gets -k gevent -w 2 -b ... 'orproxy.wsgi:proxy_app()')")
    ap.add_argument("--proxy-cmd", default=os.path.join(bindir, "orproxy"), help="command of the proxy (gets --config, --port 0)")
    ap.add_argument("--logserver-cmd", default=os.path.join(bindir, "orlogserver"), help="command of the logging server (gets --host, --port, --log-dir)")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.only.split(",")] if args.only else [
        s.name for s in SCENARIOS.values() if s.default]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        ap.error("unknown scenario(s): %s (known: %s)" % (", ".join(unknown), ", ".join(SCENARIOS)))
    args.scenarios = names
    for name in ("upstream_cmd", "proxy_cmd", "logserver_cmd", "gunicorn_cmd"):
        setattr(args, name + "_argv", command(getattr(args, name)))
    args.target_names = [n.strip() for n in args.targets.split(",") if n.strip()]
    if args.peers or args.install_peers:
        args.target_names += [n for n in PEERS if n not in args.target_names]
    bad = [n for n in args.target_names if n not in TARGETS + PEERS]
    if bad:
        ap.error("unknown target(s): %s" % ", ".join(bad))
    return args


def command(text):
    """Split a command line; make relative paths absolute (children run in the run dir)."""
    return [os.path.abspath(a) if "/" in a and not a.startswith("/") and os.path.exists(a) else a
            for a in shlex.split(text)]


def main(argv=None):
    args = parse_args(argv)
    install_notes = []
    if args.install:
        need = [p for p in ("nginx", "wrk") if not shutil.which(p) and not os.path.exists("/usr/sbin/" + p)]
        if need:
            print("installing %s from Debian packages..." % " ".join(need), file=sys.stderr, flush=True)
            install_notes.append(install_tools(need))
    if args.install_peers:
        print("installing %s into %s..." % (" ".join(PEER_PACKAGES), os.path.relpath(PEERS_VENV)),
              file=sys.stderr, flush=True)
        install_notes.append(install_peers())
    # Children inherit the open-file limit: 10,000 streams need some 20,000 sockets in a
    # proxy (client and upstream side) and 10,000 in the upstream and in this process.
    nofile = raise_nofile()
    ctx = Bench(args)
    ctx.nofile = nofile
    for n in filter(None, install_notes):
        ctx.note(n)
    if ctx.pinned:
        os.sched_setaffinity(0, {1})  # this process is the load generator
    load_start = loadavg()
    ctx.start_work = ctx.work.snapshot()
    crashed = True
    try:
        rc = run(ctx, args, load_start)
        crashed = False
        return rc
    except (BrokenPipeError, KeyboardInterrupt):
        crashed = False
        return 1
    finally:
        # The run dir may hold a lot on tmpfs: removed unless asked for, or needed to see
        # what went wrong (a scenario or the harness failed; each process's output is there).
        if args.keep or crashed or ctx.results.get("errors"):
            print("run dir kept: %s" % ctx.run_dir, file=sys.stderr)
        else:
            shutil.rmtree(ctx.run_dir, ignore_errors=True)


def run(ctx, args, load_start):
    ok = False
    upstream = None
    try:
        upstream = ctx.upstream = Upstream(args.upstream_cmd_argv, ctx)
        try:
            upstream.start()
        except StartError as e:
            print("bench: the fake upstream did not start: %s" % e, file=sys.stderr)
            return 1
        makers = {"direct": lambda: Direct(ctx),
                  "orproxy": lambda: Orproxy(ctx, args.proxy_cmd_argv, args.logserver_cmd_argv),
                  "nginx": lambda: Nginx(ctx),
                  "claude-tap": lambda: ClaudeTap(ctx), "mitmdump": lambda: Mitmdump(ctx)}
        for name in TARGETS + PEERS:
            if name in args.target_names:
                t = makers[name]()
                ctx.all_targets.append(t)
                t.start(upstream)
                t.started = t.available  # keeps its column even if dropped later
                ctx.progress("target %s: %s" % (name, "up on port %s" % t.port if t.available else t.note))
        run_all(ctx, args.scenarios)
        ok = True
    finally:
        for t in ctx.all_targets:
            t.stop()
        if upstream is not None:
            upstream.proc.stop()
    return finish(ctx, args, upstream, load_start) if ok else 1


def finish(ctx, args, upstream, load_start):
    elapsed = time.monotonic() - ctx.t0
    started = [t for t in ctx.all_targets if getattr(t, "started", False)]
    names = [t.name for t in started]
    # the peers, like nginx, are references: no ratio columns of their own
    proxies = [t.name for t in started if t.is_proxy and t.name != "nginx"]
    pin = ("proxies + logging server on CPU 0, upstream + load generator on CPU 1 (taskset)"
           if ctx.pinned else "not pinned")
    wrk = load.wrk_version() if ctx.use_wrk else None
    share = ctx.work.between(ctx.start_work, ctx.work.snapshot())
    header = [
        "orproxy benchmark, %s, %s run, %.0f s" % (time.strftime("%Y-%m-%d %H:%M:%S"),
                                                   "quick" if args.quick else "full", elapsed),
        "conditions: %d cores; %s; log dir %s (%s)" % (
            os.cpu_count(), pin, args.log_dir, fs_type(args.log_dir)),
        "other work on the machine during the run: %.2f cores on average (steal %.2f); "
        "load avg %s -> %s" % (share["other_cores"] or 0, share["steal_cores"] or 0,
                               load_start, loadavg()),
        "load generator: %s for requests/s; Python raw-socket client (gevent) for the rest"
        % ("wrk %s" % wrk if wrk else "Python gevent closed loop (--no-wrk)" if args.no_wrk
           else "Python gevent closed loop (wrk not installed: --install)"),
        "open files limit (RLIMIT_NOFILE, inherited by every process started): %d (was %d, hard %d)"
        % (ctx.nofile[0], ctx.nofile[2][0], ctx.nofile[2][1]),
    ]
    for t in ctx.all_targets:
        note = (t.note or "").splitlines()[0] if t.note else ""
        header.append("%-8s %s%s" % (t.name + ":", note, " [%s]" % t.version if t.version else ""))
    if ctx.overlaps:
        ctx.notes.append("%d measurements started before the proxies had gone idle "
                         "(5 s wait): the previous one's after-work overlapped" % ctx.overlaps)
    # (windows under 0.5 s are left out: /proc/stat counts 10 ms ticks)
    noisy = ["%s/%s %.1f" % (label, name, cores) for label, name, cores, wall in ctx.disturbed
             if cores is not None and cores >= NOISY_CORES and wall >= 0.5]
    if noisy:
        ctx.notes.append("other work over %.2f cores during (measurement/target cores): %s"
                         % (NOISY_CORES, ", ".join(noisy)))
    for n in ctx.notes:
        header += textwrap.wrap("note: " + n.splitlines()[0], 110, subsequent_indent="      ")
    for row in ctx.rows:
        row.check(proxies)
    meta = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "quick": args.quick,
            "elapsed_s": round(elapsed, 1), "cores": os.cpu_count(), "pinned": ctx.pinned,
            "cpus_proxy": ctx.cpus_proxy, "cpus_client": ctx.cpus_client,
            "log_dir": args.log_dir, "log_dir_fs": fs_type(args.log_dir),
            "loadavg_start": load_start, "loadavg_end": loadavg(), "other_work": share,
            "loadgen_rps": "wrk %s" % wrk if wrk else "python-gevent",
            "python": platform.python_version(), "kernel": platform.release(),
            "params": ctx.p, "scenarios": args.scenarios, "timings_s": ctx.timings, "not_idle_before": ctx.overlaps,
            "other_work_per_measurement": ctx.disturbed,
            "notes": ctx.notes, "upstream_cmd": args.upstream_cmd,
            "proxy_cmd": args.proxy_cmd, "logserver_cmd": args.logserver_cmd,
            "gunicorn_cmd": args.gunicorn_cmd,
            "nofile": {"soft": ctx.nofile[0], "hard": ctx.nofile[1],
                       "before": list(ctx.nofile[2])}}
    report.save_json(args.json, meta, {t.name: t.describe() for t in ctx.all_targets},
                     ctx.results, ctx.rows)
    print(report.table(ctx.rows, names, proxies, header), flush=True)
    print("\nsaved %s" % os.path.relpath(args.json), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
