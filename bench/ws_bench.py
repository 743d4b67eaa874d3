"""WebSocket benchmark (issue 5): what the tunnel adds, against the upstream directly.

    .venv/bin/python bench/ws_bench.py            # about a minute
    .venv/bin/python bench/ws_bench.py --quick    # fewer round trips and transfers

Targets: the WebSocket upstream of the tests (tests/ws_upstream.py) directly; orproxy with
logging on (its orlogserver writing to tmpfs), the default; orproxy with logging off.
Measured: the round-trip time of a small echo (websocket-client, one connection, so the
client adds as little as possible) and the throughput of one 16 MiB binary message each
way (`websockets`, whose masking is in C): upload to `/sink` until its ack, download from
`/source`. As in bench/run.py, orproxy and its logging server share CPU 0 and the upstream
and this client CPU 1, when `taskset` is there. Prints a table; figures move ±30% between
runs on a shared machine, so compare columns of one run.
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import websocket  # websocket-client
from websockets.sync.client import connect

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.procs import Proc  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
SMALL = b"x" * 32
BIG = 16 * 1024 * 1024


def start(name, argv, outdir, cpus):
    proc = Proc(name, argv, outdir, cpus=cpus if shutil.which("taskset") else None).start()
    proc.wait_listening()
    return proc


def orproxy(name, outdir, upstream_port, logserver_port, logging):
    config = os.path.join(outdir, name + ".yaml")
    with open(config, "w") as f:
        f.write("server: {host: 127.0.0.1, port: 0}\n"
                "logging: {console: false, enabled: %s, server_url: 'http://127.0.0.1:%d'}\n"
                "routes:\n  - {source: /ws/, destination: 'http://127.0.0.1:%d/', name: ws}\n"
                % ("true" if logging else "false", logserver_port, upstream_port))
    return start(name, [os.path.join(BIN, "orproxy"), "--config", config], outdir, "0")


def echo_rtt(url, count):
    """Round-trip times (ms) of a 32-byte binary echo on one connection."""
    ws = websocket.create_connection(url)
    try:
        for _ in range(min(200, count)):
            ws.send_binary(SMALL)
            ws.recv()
        times = []
        for _ in range(count):
            t0 = time.perf_counter()
            ws.send_binary(SMALL)
            assert ws.recv() == SMALL
            times.append((time.perf_counter() - t0) * 1000)
        return times
    finally:
        ws.close()


def transfer(url, direction, repeat):
    """Median MB/s of one 16 MiB message, client -> upstream ("up") or back ("down")."""
    data = os.urandom(BIG)
    rates = []
    path = "/sink" if direction == "up" else "/source?n=%d" % BIG
    with connect(url + path, compression=None, max_size=None, ping_interval=None) as ws:
        for i in range(repeat + 1):
            t0 = time.perf_counter()
            if direction == "up":
                ws.send(data)
                assert ws.recv() == str(BIG)
            else:
                ws.send("go")
                assert len(ws.recv()) == BIG
            if i:  # the first is a warm-up
                rates.append(BIG / (time.perf_counter() - t0) / 1e6)
    return statistics.median(rates)


def measure(url, quick):
    rtt = echo_rtt(url, 500 if quick else 3000)
    rtt.sort()
    return {"p50": statistics.median(rtt), "p99": rtt[int(len(rtt) * 0.99) - 1],
            "up": transfer(url, "up", 2 if quick else 5),
            "down": transfer(url, "down", 2 if quick else 5)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, about 20 s")
    args = parser.parse_args()
    outdir = tempfile.mkdtemp(prefix="orproxy-wsbench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    procs = []
    try:
        upstream = start("ws_upstream", [sys.executable, os.path.join(ROOT, "tests", "ws_upstream.py"),
                                         "--port", "0"], outdir, "1")
        procs.append(upstream)
        logserver = start("orlogserver", [os.path.join(BIN, "orlogserver"), "--port", "0", "--log-dir",
                                          os.path.join(outdir, "logs")], outdir, "0")
        procs.append(logserver)
        targets = [("direct", "ws://127.0.0.1:%d" % upstream.port)]
        for name, logging in (("orproxy", True), ("orproxy (log off)", False)):
            proc = orproxy(name.replace(" ", "_").replace("(", "").replace(")", ""), outdir,
                           upstream.port, logserver.port, logging)
            procs.append(proc)
            targets.append((name, "ws://127.0.0.1:%d/ws" % proc.port))
        if shutil.which("taskset"):
            os.sched_setaffinity(0, {1})
        results = {}
        for name, url in targets:
            print("measuring %s ..." % name, file=sys.stderr, flush=True)
            results[name] = measure(url, args.quick)
        report(results, args.quick)
    finally:
        for proc in reversed(procs):
            proc.stop()
        shutil.rmtree(outdir, ignore_errors=True)


def report(results, quick):
    names = list(results)
    direct = results["direct"]
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print("orproxy WebSocket benchmark, %s, %s run; %d cores, load avg %s; %s" % (
        time.strftime("%Y-%m-%d %H:%M:%S"), "quick" if quick else "full", os.cpu_count(), load,
        "orproxy + orlogserver on CPU 0, upstream + client on CPU 1" if shutil.which("taskset")
        else "not pinned"))
    rows = [("small echo round trip p50 (ms)", "p50", "%.3f"),
            ("small echo round trip p99 (ms)", "p99", "%.3f"),
            ("16 MiB message up (MB/s)", "up", "%.0f"),
            ("16 MiB message down (MB/s)", "down", "%.0f")]
    width = max(len(r[0]) for r in rows) + 2
    print("".join(["".ljust(width)] + [n.rjust(20) for n in names] + ["target".rjust(22)]))
    for label, key, fmt in rows:
        cells = []
        for name in names:
            value = results[name][key]
            if name == "direct":
                cells.append((fmt % value).rjust(20))
            elif key in ("p50", "p99"):
                cells.append(("%s (+%.3f)" % (fmt % value, value - direct[key])).rjust(20))
            else:
                cells.append(("%s (%.0f%%)" % (fmt % value, 100 * value / direct[key])).rjust(20))
        target = {"p50": "added < 1 ms", "up": ">= 80% of direct", "down": ">= 80% of direct"}
        print("".join([label.ljust(width)] + cells + [target.get(key, "").rjust(22)]))


if __name__ == "__main__":
    main()
