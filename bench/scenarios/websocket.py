"""Scenario websocket (issue 5): what the WebSocket tunnel adds, against the upstream directly.

Targets: the WebSocket upstream of the tests (orproxy.testing.ws_upstream) directly; orproxy
with logging on (its orlogserver writing to tmpfs); orproxy with logging off (rows "logging
off", in the orproxy column); nginx (when installed and a target of the run) as a plain
WebSocket reverse proxy, one worker: what any proxy's extra hop costs on this machine.
Measured: the round-trip time of a small echo (websocket-client, one connection, so the
client adds as little as possible) and the throughput of one 16 MiB binary message each
way (`websockets`, whose masking is in C): upload to `/sink` until its ack, download from
`/source`. Then, per message each way, the CPU time of each proxy and of the logging
server, and the proxy's page faults, read from /proc (the log's work included: it follows
the tunnel). The targets take turns, round by round, so a change in the machine's load
touches every column alike. A ratio to direct is the median of each round's ratio, whose
transfers ran moments apart.

The scenario starts these processes itself, and its client runs in a child process
(main() below): not monkey-patched as the harness is, so that websockets' sync client keeps
its threads, and not pinned by default (--ws-pin pins as the rest of the run:
the direct column would then squeeze client and upstream onto one core while the proxied
ones get a second, which flatters the proxy).
"""
import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import gevent
import websocket  # websocket-client
from websockets.sync.client import connect

from bench.procs import Proc, cpu_ticks, free_port, minor_faults, wait_idle
from bench.report import Row
from bench.scenarios.registry import scenario
from bench.targets import nginx_binary

BIN = os.path.dirname(sys.executable)
SMALL = b"x" * 32
BIG = 16 * 1024 * 1024
COST_MESSAGES = 10  # messages each way whose CPU time is measured, per proxy
LOG_OFF = "orproxy (log off)"


# -- the scenario, in the harness: the client process, then the rows ---------------------

@scenario("websocket", default=False,
          help="WebSocket tunnel: added echo round trip, 16 MiB message each way, CPU per message")
def websocket_scenario(ctx):
    names = ctx.args.target_names
    if "orproxy" not in names and "nginx" not in names:
        ctx.note("scenario websocket needs the orproxy or the nginx target")
        return
    rounds = ctx.args.ws_rounds or ctx.p["ws_rounds"]
    out = os.path.join(ctx.run_dir, "websocket.json")
    argv = [sys.executable, "-c", "import sys; from bench.scenarios.websocket import main; sys.exit(main())",
            "--out", out, "--rounds", str(rounds), "--echoes", str(ctx.p["ws_echoes"])]
    argv += ["--pin"] if ctx.args.ws_pin else []
    argv += ["--no-" + name for name in ("orproxy", "nginx") if name not in names]
    if not wait_idle(ctx.server_pids()):
        ctx.overlaps += 1
    # on every CPU of the run, as when it was a program of its own (the harness is on CPU 1)
    proc = Proc("websocket-client", argv, ctx.workdir, cpus=ctx.cpus_all, cwd=ctx.repo).start()
    ctx.extra_procs.append(proc)
    deadline = time.monotonic() + 300 + 30 * rounds
    try:
        while proc.alive() and time.monotonic() < deadline:
            gevent.sleep(0.2)
    finally:
        proc.stop()
        ctx.extra_procs.remove(proc)
    if proc.popen.returncode != 0 or not os.path.exists(out):
        ctx.note("scenario websocket: its client exited with %s:\n%s" % (proc.popen.returncode, proc.tail()))
        return
    with open(out) as f:
        doc = json.load(f)
    ctx.results["websocket"] = doc
    ctx.rows += _rows(doc)


def _rows(doc):
    """The table rows: each orproxy row followed by the same with logging off."""
    res, costs = doc["results"], doc["costs"]
    g = "WebSocket (%s, %d rounds)" % (
        "pinned" if doc["pinned"] else "not pinned", doc["rounds"])

    def pair(metric, unit, value, kind="abs", goal=None, names=("direct", "orproxy", "nginx")):
        rows = [Row(g, metric, unit, {n: value(n) for n in names if n in res}, kind=kind, goal=goal)]
        if LOG_OFF in res:
            rows.append(Row(g, "  logging off", unit, {"orproxy": value(LOG_OFF)}, kind=kind))
        return rows

    def share(way):
        """orproxy's (or nginx's) rate over direct's, the median of the rounds' ratios, %"""
        return lambda n: 100 * statistics.median(
            r / d for r, d in zip(res[n]["rates"][way], res["direct"]["rates"][way]))
    proxies = ("orproxy", "nginx")
    rows = [Row(g, "echo round trip p50", "ms", {n: res[n]["p50"] for n in res if n != LOG_OFF}),
            Row(g, "echo round trip p99", "ms", {n: res[n]["p99"] for n in res if n != LOG_OFF})]
    rows += pair("added echo p50", "ms", lambda n: res[n]["p50"] - res["direct"]["p50"], "added",
                 [("<=", 1, "#5")], proxies)
    rows += pair("added echo p99", "ms", lambda n: res[n]["p99"] - res["direct"]["p99"], "added",
                 names=proxies)
    for way in ("up", "down"):
        rows.append(Row(g, "16 MiB message %s" % way, "MB/s", {n: res[n][way] for n in res if n != LOG_OFF}))
        rows += pair("  %s / direct, median of the rounds" % way, "%", share(way), "info",
                     [(">=", 80, "#5")], proxies)
    for way in ("up", "down"):
        rows += pair("%s: CPU ms per message, proxy + logserver" % way, "",
                     lambda n: "%.0f + %.0f" % tuple(costs[n][way][:2]), "info", names=proxies)
        rows += pair("%s: page faults of the proxy per message" % way, "",
                     lambda n: "%.0f" % costs[n][way][2], "info", names=proxies)
    return rows


# -- the client process ------------------------------------------------------------------

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
        # entered, as websockets (17.1 on) wants its sync connections; closed in result()
        self.connections = contextlib.ExitStack()
        self.up = self.connections.enter_context(connect(url + "/sink", **options))
        self.down = self.connections.enter_context(connect(url + "/source?n=%d" % BIG, **options))
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
        self.connections.close()
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


def main(argv=None):
    parser = argparse.ArgumentParser(description="The websocket scenario's client (bench/run.py --only websocket runs it)")
    parser.add_argument("--out", required=True, help="where to write the figures (JSON)")
    parser.add_argument("--rounds", type=int, default=10, help="rounds of transfers")
    parser.add_argument("--echoes", type=int, default=1000, help="echo round trips per round")
    parser.add_argument("--pin", action="store_true",
                        help="orproxy and orlogserver on CPU 0, the upstream and client on CPU 1")
    parser.add_argument("--no-orproxy", action="store_true")
    parser.add_argument("--no-nginx", action="store_true")
    args = parser.parse_args(argv)
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
        for name, logging in (("orproxy", True), (LOG_OFF, False)) if not args.no_orproxy else ():
            proxies[name] = orproxy(name.replace(" ", "_").replace("(", "").replace(")", ""), outdir,
                                    upstream.port, logserver.port, logging, cpus("0"))
        proc = nginx(outdir, upstream.port, cpus("0")) if not args.no_nginx else None
        if proc is not None:
            proxies["nginx"] = proc
        for name, proc in proxies.items():
            procs.append(proc)
            targets.append((name, "ws://127.0.0.1:%d/ws" % proc.port))
        if cpus("1"):
            os.sched_setaffinity(0, {1})
        clients = {name: Client(url) for name, url in targets}
        data = os.urandom(BIG)
        measure(clients, data, args.rounds, args.echoes)
        costs = message_costs(clients, proxies, logserver, data)
        doc = {"pinned": bool(cpus("1")), "rounds": args.rounds, "echoes": args.echoes,
               "cost_messages": COST_MESSAGES,
               "results": {name: client.result() for name, client in clients.items()}, "costs": costs}
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1)
    finally:
        for proc in reversed(procs):
            proc.stop()
        shutil.rmtree(outdir, ignore_errors=True)
