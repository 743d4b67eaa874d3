"""WebSocket benchmark (issue 5): what the tunnel adds, against the upstream directly.

    .venv/bin/python bench/ws_bench.py            # about a minute
    .venv/bin/python bench/ws_bench.py --quick    # fewer round trips and transfers
    .venv/bin/python bench/ws_bench.py --pin --rounds 30   # pinned, steadier medians

Targets: the WebSocket upstream of the tests (orproxy.testing.ws_upstream) directly; orproxy with
logging on (its orlogserver writing to tmpfs), the default; orproxy with logging off; nginx
(when installed) as a plain WebSocket reverse proxy, one worker: what any proxy's extra hop
costs on this machine.
Measured: the round-trip time of a small echo (websocket-client, one connection, so the
client adds as little as possible) and the throughput of one 16 MiB binary message each
way (`websockets`, whose masking is in C): upload to `/sink` until its ack, download from
`/source`. Then, per message each way, the CPU time of each proxy and of the logging
server, and the proxy's page faults, read from /proc (the log's work included: it follows
the tunnel). The targets take turns, round by round, so a change in the machine's load
touches every column alike. Not pinned by default: pinned as in bench/run.py (`--pin`),
the direct column would squeeze client and upstream onto one core while the proxied ones
get a second, which flatters the proxy. Prints a table. Figures move ±30% between runs on a
shared machine, so compare columns of one run: a ratio to direct is the median of each
round's ratio, whose transfers ran moments apart.
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
from bench.procs import Proc, cpu_ticks, free_port, minor_faults, wait_idle  # noqa: E402
from bench.targets import nginx_binary  # noqa: E402

BIN = os.path.dirname(sys.executable)
SMALL = b"x" * 32
BIG = 16 * 1024 * 1024
COST_MESSAGES = 10  # messages each way whose CPU time is measured, per proxy


def start(name, argv, outdir, cpus):
    proc = Proc(name, argv, outdir, cpus=cpus).start()
    proc.wait_listening()
    return proc


def orproxy(name, outdir, upstream_port, logserver_port, logging, cpus):
    config = os.path.join(outdir, name + ".yaml")
    with open(config, "w") as f:
        f.write("server: {host: 127.0.0.1, port: 0}\n"
                "logging: {console: false, enabled: %s, server_url: 'http://127.0.0.1:%d'}\n"
                "routes:\n  - {source: /ws/, destination: 'http://127.0.0.1:%d/', name: ws}\n"
                % ("true" if logging else "false", logserver_port, upstream_port))
    return start(name, [os.path.join(BIN, "orproxy"), "--config", config], outdir, cpus)


NGINX_CONF = """\
daemon off;
master_process off;
pid %(dir)s/nginx.pid;
error_log %(dir)s/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path %(dir)s/client_body;
    proxy_temp_path %(dir)s/proxy_temp;
    fastcgi_temp_path %(dir)s/fastcgi_temp;
    uwsgi_temp_path %(dir)s/uwsgi_temp;
    scgi_temp_path %(dir)s/scgi_temp;
    server {
        listen 127.0.0.1:%(port)d;
        location /ws/ {
            proxy_pass http://127.0.0.1:%(upstream)d/;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_buffer_size 256k;       # what an upgraded tunnel reads at once, as orproxy
            proxy_buffers 4 256k;
            proxy_busy_buffers_size 256k;
            proxy_read_timeout 600s;
        }
    }
}
"""


def nginx(outdir, upstream_port, cpus):
    """nginx as a WebSocket reverse proxy, or None when it is not installed."""
    binary = nginx_binary()
    if not binary:
        return None
    d = os.path.join(outdir, "nginx")
    os.makedirs(d, exist_ok=True)
    port = free_port()
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF % {"dir": d, "port": port, "upstream": upstream_port})
    proc = Proc("nginx", [binary, "-p", d, "-c", conf, "-e", os.path.join(d, "error.log")],
                outdir, cpus=cpus, cwd=d).start()
    proc.wait_port(port)
    return proc


class Client:
    """One target's three connections: a small echo, an upload sink and a download source."""

    def __init__(self, url):
        self.echo = websocket.create_connection(url + "/echo")
        options = {"compression": None, "max_size": None, "ping_interval": None}
        self.up = connect(url + "/sink", **options)
        self.down = connect(url + "/source?n=%d" % BIG, **options)
        self.rtt, self.rates = [], {"up": [], "down": []}

    def echo_block(self, count, warmup=50):
        """Round-trip times (ms) of a 32-byte binary echo."""
        for i in range(warmup + count):
            t0 = time.perf_counter()
            self.echo.send_binary(SMALL)
            assert self.echo.recv() == SMALL
            if i >= warmup:
                self.rtt.append((time.perf_counter() - t0) * 1000)

    def transfer(self, data):
        """MB/s of one 16 MiB message each way: to /sink until its ack, from /source."""
        for way in ("up", "down"):
            t0 = time.perf_counter()
            self.send(way, data)
            self.rates[way].append(BIG / (time.perf_counter() - t0) / 1e6)

    def send(self, way, data):
        """One 16 MiB message: up to /sink until its ack, or down from /source."""
        if way == "up":
            self.up.send(data)
            assert self.up.recv() == str(BIG)
        else:
            self.down.send("go")
            assert len(self.down.recv()) == BIG

    def result(self):
        self.echo.close()
        self.up.close()
        self.down.close()
        rtt = sorted(self.rtt)
        return {"p50": statistics.median(rtt), "p99": rtt[int(len(rtt) * 0.99) - 1],
                "up": statistics.median(self.rates["up"]), "down": statistics.median(self.rates["down"]),
                "rates": self.rates}


def measure(clients, data, rounds, echoes):
    """Rounds that take turns between the targets, so a change in the machine's load
    during the run touches every column alike."""
    for name, client in clients.items():  # warm-up
        client.transfer(data)
        client.rates = {"up": [], "down": []}
    for r in range(rounds):
        print("round %d/%d" % (r + 1, rounds), file=sys.stderr, flush=True)
        for client in clients.values():
            client.echo_block(echoes)
            client.transfer(data)


def message_costs(clients, procs, logserver, data):
    """{target: {way: (proxy CPU ms, logging server CPU ms, proxy page faults)}} per 16 MiB
    message, from /proc over COST_MESSAGES messages, each batch followed by a wait until
    both are idle: the log's decoding and writing follow the tunnel."""
    tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
    costs = {}
    for name, proc in procs.items():
        costs[name] = {}
        for way in ("up", "down"):
            wait_idle([proc.pid, logserver.pid], timeout=30)
            proxy0, log0, faults0 = cpu_ticks([proc.pid]), cpu_ticks([logserver.pid]), minor_faults(proc.pid)
            for _ in range(COST_MESSAGES):
                clients[name].send(way, data)
            wait_idle([proc.pid, logserver.pid], timeout=30)
            proxy1, log1, faults1 = cpu_ticks([proc.pid]), cpu_ticks([logserver.pid]), minor_faults(proc.pid)
            costs[name][way] = ((proxy1 - proxy0) * tick_ms / COST_MESSAGES,
                                (log1 - log0) * tick_ms / COST_MESSAGES,
                                (faults1 - faults0) / COST_MESSAGES)
    return costs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, about 20 s")
    parser.add_argument("--rounds", type=int, help="rounds of transfers (default 10, quick 3): "
                        "more give steadier medians")
    parser.add_argument("--pin", action="store_true",
                        help="orproxy and orlogserver on CPU 0, the upstream and client on CPU 1 "
                             "(direct then has one core for both ends: flatters the proxy)")
    args = parser.parse_args()
    cpus = (lambda c: c) if args.pin and shutil.which("taskset") else (lambda c: None)
    tmpfs = "/dev/shm" if os.path.isdir("/dev/shm") else None
    outdir = tempfile.mkdtemp(prefix="orproxy-wsbench-", dir=tmpfs)
    procs = []
    try:
        upstream = start("ws_upstream", [sys.executable, "-m", "orproxy.testing.ws_upstream",
                                         "--port", "0"], outdir, cpus("1"))
        procs.append(upstream)
        logserver = start("orlogserver", [os.path.join(BIN, "orlogserver"), "--port", "0", "--log-dir",
                                          os.path.join(outdir, "logs")], outdir, cpus("0"))
        procs.append(logserver)
        targets = [("direct", "ws://127.0.0.1:%d" % upstream.port)]
        proxies = {}
        for name, logging in (("orproxy", True), ("orproxy (log off)", False)):
            proxies[name] = orproxy(name.replace(" ", "_").replace("(", "").replace(")", ""), outdir,
                                    upstream.port, logserver.port, logging, cpus("0"))
        proc = nginx(outdir, upstream.port, cpus("0"))
        if proc is not None:
            proxies["nginx"] = proc
        for name, proc in proxies.items():
            procs.append(proc)
            targets.append((name, "ws://127.0.0.1:%d/ws" % proc.port))
        if cpus("1"):
            os.sched_setaffinity(0, {1})
        clients = {name: Client(url) for name, url in targets}
        data = os.urandom(BIG)
        measure(clients, data, args.rounds or (3 if args.quick else 10), 300 if args.quick else 1000)
        costs = message_costs(clients, proxies, logserver, data)
        report({name: client.result() for name, client in clients.items()}, costs, args.quick,
               bool(cpus("1")))
    finally:
        for proc in reversed(procs):
            proc.stop()
        shutil.rmtree(outdir, ignore_errors=True)


def report(results, costs, quick, pinned):
    names = list(results)
    direct = results["direct"]
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print("orproxy WebSocket benchmark, %s, %s run; %d cores, load avg %s; %s" % (
        time.strftime("%Y-%m-%d %H:%M:%S"), "quick" if quick else "full", os.cpu_count(), load,
        "orproxy + orlogserver on CPU 0, upstream + client on CPU 1" if pinned else "not pinned"))
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
            else:  # the median of each round's ratio: a round's transfers ran moments apart
                ratio = statistics.median(r / d for r, d in zip(results[name]["rates"][key],
                                                                 direct["rates"][key]))
                cells.append(("%s (%.0f%%)" % (fmt % value, 100 * ratio)).rjust(20))
        target = {"p50": "added < 1 ms", "up": ">= 80% of direct", "down": ">= 80% of direct"}
        print("".join([label.ljust(width)] + cells + [target.get(key, "").rjust(22)]))
    print("per 16 MiB message, from /proc over %d messages each way:" % COST_MESSAGES)
    for way in ("up", "down"):
        for label, cell in (("  %s: CPU ms, proxy + logserver" % way, lambda c: "%.0f + %.0f" % c[:2]),
                            ("  %s: page faults of the proxy" % way, lambda c: "%.0f" % c[2])):
            print("".join([label.ljust(width)] + [(cell(costs[n][way]) if n in costs else "").rjust(20)
                                                  for n in names]))


if __name__ == "__main__":
    main()
