"""What the metrics cost: CPU per small exchange with them and without, in one process.

    .venv/bin/python bench/metrics_overhead.py [--exchanges 3000] [--rounds 7]

1. The logging server: LogServerApp on a tmpfs log dir takes one orproxy batch per
   exchange (request, response, metadata of a 1 KB chat completion, as `POST /ingest`
   brings it), its index written on its thread; CPU time of the process (all threads)
   per exchange, with the metrics' two ingest hooks and with them removed.
2. The proxy: ProxyApp in this process in front of the fake upstream (also in this
   process), a keep-alive client sending GET /v1/models; CPU per exchange (proxy, upstream
   and client together: only the difference is the proxy's) with `server.metrics_port`
   set and not. Logging off, so that only the proxy's own path is measured.
3. The proxy's hook alone: what the hot path adds per exchange (timeit).

Rounds alternate between the two settings; the medians are printed.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import timeit  # noqa: E402
import uuid  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from gevent import socket  # noqa: E402

from orproxy import logwire  # noqa: E402
from orproxy.config import parse_config  # noqa: E402
from orproxy.hosting.server import GracefulWSGIServer  # noqa: E402
from orproxy.logserver.app import LogServerApp  # noqa: E402
from orproxy.proxy import ProxyApp  # noqa: E402
from orproxy.proxymetrics import ProxyCounters  # noqa: E402
from orproxy.testing import fake_upstream  # noqa: E402

CHAT = {"model": "m", "messages": [{"role": "user", "content": "x" * 900}]}
ANSWER = {"model": "m", "choices": [{"message": {"role": "assistant", "content": "y" * 700},
                                     "finish_reason": "stop"}], "usage": {"prompt_tokens": 12, "completion_tokens": 150}}


def exchange_batch() -> bytes:
    rid, t0 = str(uuid.uuid4()), time.time()
    request = b"POST /v1/chat/completions HTTP/1.1\r\nHost: up\r\nContent-Type: application/json\r\n\r\n" \
        + json.dumps(CHAT).encode()
    response = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + json.dumps(ANSWER).encode()
    metadata = json.dumps({"id": rid, "route": "r", "method": "POST", "path": "/v1/chat/completions", "status": 200,
                           "started_at": t0, "first_byte_at": t0 + 0.001, "ended_at": t0 + 0.002,
                           "request_bytes": len(request), "response_bytes": len(response)}).encode()
    return (logwire.append_head(rid, "request", t0, t0, 0, len(request), True) + request
            + logwire.append_head(rid, "response", t0, t0, 0, len(response), True) + response
            + logwire.metadata_head(rid, len(metadata)) + metadata)


def logserver_round(exchanges: int, hooked: bool) -> float:
    directory = tempfile.mkdtemp(dir="/dev/shm")
    app = LogServerApp(directory)
    try:
        if not hooked:
            app.ingest.markers.remove(app.metrics.mark)
            app.ingest.subscribers.remove(app.metrics.count)
        bodies = [exchange_batch() for _ in range(exchanges + 200)]
        for body in bodies[:200]:  # warm up
            app.appends.take(body)
        app.index.flush(30)
        start = time.process_time()
        for body in bodies[200:]:
            app.appends.take(body)
        app.index.flush(60)
        spent = time.process_time() - start
        if hooked:
            assert b"orlogserver_exchanges_total" in app.metrics.text()
        return spent / exchanges * 1e6
    finally:
        app.close()
        shutil.rmtree(directory, ignore_errors=True)


def proxy_round(exchanges: int, metrics: bool, upstream_url: str) -> float:
    server = {"port": 0, **({"metrics_port": 0} if metrics else {})}
    app = ProxyApp(parse_config({"server": server, "logging": {"enabled": False, "console": False},
                                 "routes": [{"source": "/v1/", "destination": upstream_url + "/"}]}))
    served = GracefulWSGIServer(("127.0.0.1", 0), app, handler_class=app.handler_class, log=None)
    served.start()
    sock = socket.create_connection(("127.0.0.1", served.server_port))
    request = b"GET /v1/models HTTP/1.1\r\nHost: p\r\n\r\n"
    try:
        def one() -> None:
            sock.sendall(request)
            data = b""
            while b"\r\n\r\n" not in data or not data.endswith(b"}"):
                data += sock.recv(65536)
        for _ in range(200):
            one()
        start = time.process_time()
        for _ in range(exchanges):
            one()
        return (time.process_time() - start) / exchanges * 1e6
    finally:
        sock.close()
        served.stop_gracefully(1)
        app.close()


def hook_alone() -> float:
    counters = ProxyCounters()
    exchange = SimpleNamespace(route=SimpleNamespace(name="r"), status=200, error=None)

    def hook() -> None:
        counters.started += 1
        counters.exchange_ended(exchange)
    n = 200_000
    return min(timeit.repeat(hook, number=n, repeat=5)) / n * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exchanges", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--only", choices=("logserver", "proxy", "hook"))
    args = parser.parse_args()
    if args.only in (None, "logserver"):
        results: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for hooked in (False, True):
                results[hooked].append(logserver_round(args.exchanges, hooked))
        print("logging server, CPU per small exchange: without metrics %.1f µs, with %.1f µs (medians of %d rounds; "
              "all rounds without %s, with %s)" % (
                  statistics.median(results[False]), statistics.median(results[True]), args.rounds,
                  [round(x) for x in results[False]], [round(x) for x in results[True]]))
    if args.only in (None, "proxy"):
        upstream, url = fake_upstream.serve()
        results = {False: [], True: []}
        for _ in range(args.rounds):
            for metrics in (False, True):
                results[metrics].append(proxy_round(args.exchanges, metrics, url))
        upstream.stop()
        print("proxy + upstream + client, CPU per exchange: metrics off %.1f µs, on %.1f µs (medians of %d rounds; "
              "off %s, on %s)" % (statistics.median(results[False]), statistics.median(results[True]), args.rounds,
                                  [round(x) for x in results[False]], [round(x) for x in results[True]]))
    if args.only in (None, "hook"):
        print("the proxy's hook alone (an exchange begun and ended): %.0f ns" % hook_alone())


if __name__ == "__main__":
    main()
