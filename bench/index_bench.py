"""The logging server's index under load (issue 3's targets), printed as a table.

  1. Seeds N exchanges (default 100,000) as files (orproxy/testing/seed_logs.py), then times
     `orlogserver --reindex` on them.
  2. Starts `orlogserver` on that log dir and measures API latency, one request at a time
     over a keep-alive connection: the newest 50, a filter on model and time range (the
     targets: p99 under 50 ms), and a few more queries a UI makes.
  3. Ingest: exchanges PUT as the proxy sends them (request, response, metadata; OpenAI
     JSON and SSE bodies with usage), paced at --rate exchanges/s for --seconds, then as
     fast as it goes; after each, how long until the index lists every exchange with its
     derived fields (the index keeps up if that is about zero).
  4. The same work without HTTP, in this process, with and without the index: what
     indexing and deriving cost per exchange.

    .venv/bin/python bench/index_bench.py                 # about 3 minutes
    .venv/bin/python bench/index_bench.py --count 20000 --seconds 5 --queries 100   # quick

The logging server runs on CPU 0 and this load generator on CPU 1 (taskset), when there
are two. Every loop is bounded in count and time; everything runs on 127.0.0.1.
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from typing import Any  # noqa: E402
from urllib.parse import urlencode  # noqa: E402

import gevent  # noqa: E402
from gevent.pool import Pool  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from orproxy.testing.seed_logs import BASE_TIME, seed  # noqa: E402

VENV_BIN = os.path.dirname(sys.executable)
TARGET_MS = 50.0
TARGET_RATE = 500


class Conn:
    """One keep-alive HTTP/1.1 connection: just enough client for the bench (no requests:
    its per-request CPU would measure the client, not the server)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def request(self, method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
        head = f"{method} {target} HTTP/1.1\r\nHost: bench\r\nContent-Length: {len(body)}\r\n\r\n"
        self.sock.sendall(head.encode() + body)
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        if m:
            length = int(m.group(1))
            while len(self.buf) < length:
                self._more()
            body, self.buf = self.buf[:length], self.buf[length:]
        else:  # chunked (pywsgi without a length)
            body = self._chunked()
        return status, body

    def _more(self) -> None:
        data = self.sock.recv(262144)
        if not data:
            raise ConnectionError("server closed the connection")
        self.buf += data

    def _chunked(self) -> bytes:
        out = b""
        while True:
            while b"\r\n" not in self.buf:
                self._more()
            line, _, self.buf = self.buf.partition(b"\r\n")
            size = int(line.split(b";")[0], 16)
            while len(self.buf) < size + 2:
                self._more()
            out, self.buf = out + self.buf[:size], self.buf[size + 2:]
            if size == 0:
                return out

    def close(self) -> None:
        self.sock.close()


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[max(0, -(-int(p * len(values)) // 100) - 1)] if values else float("nan")


def start_logserver(log_dir: str, outdir: str, cpus: str | None) -> tuple[subprocess.Popen, int]:
    argv = [os.path.join(VENV_BIN, "orlogserver"), "--port", "0", "--log-dir", log_dir]
    if cpus and shutil.which("taskset"):
        argv = ["taskset", "-c", cpus, *argv]
    out = open(os.path.join(outdir, "orlogserver.out"), "wb")
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with open(out.name, "rb") as f:
            m = re.search(rb"listening on http://[0-9.]+:(\d+)", f.read())
        if m:
            return proc, int(m.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("orlogserver did not start:\n" + open(out.name).read())


def measure_queries(port: int, queries: dict[str, dict[str, str]], n: int) -> dict[str, dict[str, float]]:
    conn = Conn(port)
    results = {}
    try:
        for name, params in queries.items():
            target = "/api/requests" if not name.startswith("stats") else "/api/stats"
            target += "?" + urlencode(params) if params else ""
            status, body = conn.request("GET", target)  # warm-up, and a check
            assert status == 200, (target, body[:300])
            rows = len(json.loads(body).get("items", [])) if target.startswith("/api/requests") else None
            times = []
            deadline = time.monotonic() + 60
            for _ in range(n):
                t = time.perf_counter()
                conn.request("GET", target)
                times.append((time.perf_counter() - t) * 1000)
                if time.monotonic() > deadline:
                    break
            results[name] = {"p50": percentile(times, 50), "p99": percentile(times, 99),
                             "max": max(times), "n": len(times), "rows": rows}
    finally:
        conn.close()
    return results


# -- ingest ----------------------------------------------------------------------------------

REQUEST_BODY = json.dumps({"model": "bench/model", "stream": False, "messages": [
    {"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello " * 40}]}).encode()
JSON_ANSWER = json.dumps({"id": "chatcmpl-b", "object": "chat.completion", "model": "bench/model-x",
                          "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! " * 100},
                                       "finish_reason": "stop"}],
                          "usage": {"prompt_tokens": 120, "completion_tokens": 200, "total_tokens": 320}}).encode()
SSE_ANSWER = b"".join(
    b'data: {"id":"c","object":"chat.completion.chunk","model":"bench/model-x","choices":[{"index":0,'
    b'"delta":{"content":"tok%d "},"finish_reason":null}]}\n\n' % i for i in range(30)
) + (b'data: {"id":"c","object":"chat.completion.chunk","model":"bench/model-x","choices":[],'
     b'"usage":{"prompt_tokens":120,"completion_tokens":30,"total_tokens":150}}\n\ndata: [DONE]\n\n')


def exchange_puts(i: int, route: str) -> tuple[str, list[tuple[str, bytes]]]:
    rid = str(uuid.uuid4())
    sse = i % 2 == 1
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: upstream\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\nX-Proxy-Path: http://127.0.0.1:5601/v1/chat/completions\r\n\r\n"
               % len(REQUEST_BODY)) + REQUEST_BODY
    answer = SSE_ANSWER if sse else JSON_ANSWER
    response = (b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\n\r\n"
                % (b"text/event-stream" if sse else b"application/json")) + answer
    now = time.time()
    metadata = json.dumps({"id": rid, "route": route, "method": "POST", "path": "/v1/chat/completions",
                           "upstream_url": "http://upstream/v1/chat/completions", "client_addr": "127.0.0.1",
                           "status": 200, "error": None, "streamed": sse, "started_at": now - 0.5,
                           "upstream_headers_at": now - 0.4, "first_byte_at": now - 0.4, "ended_at": now,
                           "request_bytes": len(REQUEST_BODY), "response_bytes": len(answer),
                           "log_dropped_bytes": 0}).encode()
    return rid, [("request", request), ("response", response), ("metadata", metadata)]


def ingest(port: int, total: int, rate: float | None, concurrency: int, seconds_cap: float) -> dict[str, float]:
    """PUT `total` exchanges (at `rate` per second, or flat out); return timings."""
    conns: list[Conn] = []
    pool = Pool(concurrency)
    errors = 0
    ids = []
    tokens = [0]
    route = f"bench-{uuid.uuid4().hex[:6]}"

    def one(i: int) -> None:
        nonlocal errors
        conn = conns.pop() if conns else Conn(port)
        try:
            rid, puts = exchange_puts(i, route)
            for kind, body in puts:
                status, _ = conn.request("PUT", f"/{rid}/{kind}", body)
                if status != 201:
                    errors += 1
            ids.append(rid)
            tokens[0] += 150 if i % 2 else 320
            conns.append(conn)
        except (OSError, ConnectionError):
            errors += 1
            conn.close()

    started = time.monotonic()
    wall_start = time.time()
    for i in range(total):
        if rate:
            due = started + i / rate
            if due > time.monotonic():
                gevent.sleep(due - time.monotonic())
        pool.spawn(one, i)
        if time.monotonic() - started > seconds_cap:
            break
    pool.join(timeout=seconds_cap)
    sent_at = time.monotonic()
    sent_seconds = sent_at - started
    # How long until every exchange is indexed with its derived fields? Polled cheaply: the
    # run's token total (each exchange's is known) from /api/stats.
    conn = Conn(port)
    expected = tokens[0]
    since = str(wall_start - 1)
    pending = True
    deadline = time.monotonic() + 120
    while pending and time.monotonic() < deadline:
        status, body = conn.request("GET", "/api/stats?" + urlencode({"route": route, "since": since}))
        stats = json.loads(body)
        pending = stats["total_tokens"] < expected
        if pending:
            gevent.sleep(0.2)
    lag = time.monotonic() - sent_at
    conn.close()
    for c in conns:
        c.close()
    return {"exchanges": len(ids), "errors": errors, "seconds": sent_seconds,
            "rate": len(ids) / sent_seconds if sent_seconds else 0.0,
            "catch_up_s": lag if not pending else float("inf")}


def _end_part(ingest: Any, document: dict, kind: str, part: dict) -> None:
    """What Ingest.store_part's last update does (ingest.py)."""
    document["parts"][kind] = part
    if ingest.on_part_end is not None:
        ingest.on_part_end(document)


def pipeline(total: int, with_index: bool) -> dict[str, float]:
    """The logging server's work per exchange minus HTTP, in this process: the part files,
    the same metadata-file updates ingest makes, and (with_index) the index rows and the
    derived fields, until all are written. With and without the index: the difference is
    what indexing costs per exchange."""
    from orproxy.logserver.blobs import LogDir
    from orproxy.logserver.httpfile import parse_head
    from orproxy.logserver.index import Index
    from orproxy.logserver.indexer import Indexer
    from orproxy.logserver.ingest import Ingest

    work = tempfile.mkdtemp(prefix="orproxy-pipeline-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        log_dir = LogDir(work)
        ingest = Ingest(log_dir)
        index = indexer = None
        if with_index:
            index = Index(log_dir.path)
            indexer = Indexer(log_dir, index, ingest)
        started, cpu_started = time.monotonic(), time.process_time()
        for i in range(total):
            rid, puts = exchange_puts(i, "pipeline")
            for kind, body in puts[:2]:
                now = time.time()
                path = log_dir.part_path(rid, kind, now)
                with open(path, "wb") as f:
                    f.write(body)
                part = {"file": os.path.basename(path), "received_at": now, "complete": True,
                        "bytes": len(body), "completed_at": time.time(), "head": parse_head(body).summary()}
                ingest._update(rid, now, lambda d, k=kind, p=part: _end_part(ingest, d, k, p), "part_end")
            metadata = json.loads(puts[2][1])
            ingest._update(rid, time.time(), lambda d, m=metadata: d.update(proxy=m), "proxy")
            if i % 20 == 0:
                gevent.sleep(0)  # let the derive greenlets and the index writer run
        if indexer is not None:
            while indexer._deriving:
                gevent.sleep(0.001)
            index.flush()
        seconds, cpu = time.monotonic() - started, time.process_time() - cpu_started
        if index is not None:
            index.close()
        # CPU time (all threads of this process), not wall time: the machine is shared
        return {"exchanges": total, "seconds": seconds, "cpu_seconds": cpu, "rate": total / cpu,
                "us_per_exchange": cpu / total * 1e6}
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- report ------------------------------------------------------------------------------------

def table(seeded: int, reindex_s: float, queries: dict, runs: dict, pipes: dict) -> str:
    lines = [f"orlogserver index bench: {seeded:,} exchanges indexed "
             f"(orlogserver --reindex: {reindex_s:.1f} s, {seeded / reindex_s:,.0f} exchanges/s)", ""]
    lines.append(f"{'query':<44} {'rows':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  target")
    for name, r in queries.items():
        target = ""
        if name in ("newest 50", "model + time range"):
            target = f"p99 < {TARGET_MS:.0f} ms: {'ok' if r['p99'] < TARGET_MS else 'MISSED'}"
        rows = "" if r["rows"] is None else str(r["rows"])
        lines.append(f"{name:<44} {rows:>5} {r['p50']:>8.2f} {r['p99']:>8.2f} {r['max']:>8.2f}  {target}")
    lines += ["", f"{'ingest (3 PUTs per exchange)':<44} {'sent':>6} {'exch/s':>8} {'catch-up s':>10} "
                  f"{'errors':>6}  target"]
    for name, r in runs.items():
        target = ""
        if name.startswith("paced"):
            kept_up = r["catch_up_s"] < 1.0 and not r["errors"]
            target = f"index keeps up: {'ok' if kept_up else 'MISSED'}"
            if r["rate"] < TARGET_RATE * 0.95:
                target += f"; the server took {r['rate']:.0f} of the {TARGET_RATE}/s sent (CPU-bound: see below)"
        lines.append(f"{name:<44} {r['exchanges']:>6} {r['rate']:>8.0f} {r['catch_up_s']:>10.2f} "
                     f"{r['errors']:>6}  {target}")
    lines += ["", f"{'in-process pipeline, no HTTP (CPU time)':<44} {'exch':>6} {'exch/s':>8} {'us/exch':>10}"]
    for name, r in pipes.items():
        lines.append(f"{name:<44} {r['exchanges']:>6} {r['rate']:>8.0f} {r['us_per_exchange']:>10.0f}")
    cost = pipes["files + metadata + index + derive"]["us_per_exchange"] - \
        pipes["files + metadata updates only"]["us_per_exchange"]
    lines += [f"{'  => indexing and deriving cost per exchange':<44} {'':>6} {'':>8} {cost:>10.0f}"
              f"  ({TARGET_RATE}/s needs {cost * TARGET_RATE / 1e4:.0f}% of a core)", "",
              "exch/s of the pipeline: per second of CPU (what one core could do).",
              "catch-up: seconds from the last PUT's answer until every exchange is listed with its "
              "derived fields (tokens)."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=100_000, help="exchanges to seed (default 100000)")
    ap.add_argument("--queries", type=int, default=300, help="requests per query measured (default 300)")
    ap.add_argument("--rate", type=float, default=TARGET_RATE, help="paced ingest rate (default 500/s)")
    ap.add_argument("--seconds", type=float, default=10.0, help="paced ingest duration (default 10 s)")
    ap.add_argument("--burst", type=int, default=5000, help="exchanges sent flat out (default 5000)")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--log-dir", help="where to seed (default: a fresh dir in /dev/shm or /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the log dir")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()

    two_cpus = (os.cpu_count() or 1) >= 2
    if two_cpus:
        os.sched_setaffinity(0, {1})
    parent = "/dev/shm" if os.path.isdir("/dev/shm") else None
    work = args.log_dir or tempfile.mkdtemp(prefix="orproxy-index-bench-", dir=parent)
    log_dir = os.path.join(work, "logs")
    proc = None
    try:
        print(f"seeding {args.count:,} exchanges into {log_dir} ...", file=sys.stderr)
        t = time.monotonic()
        seed(log_dir, args.count, bins=False)
        print(f"  {time.monotonic() - t:.1f} s", file=sys.stderr)
        t = time.monotonic()
        subprocess.run([os.path.join(VENV_BIN, "orlogserver"), "--reindex", "--log-dir", log_dir],
                       check=True, stdout=subprocess.DEVNULL)
        reindex_s = time.monotonic() - t
        proc, port = start_logserver(log_dir, work, "0" if two_cpus else None)
        day = 86400.0
        mid = BASE_TIME + args.count  # the seed spans ~2 s per exchange
        queries = {
            "newest 50": {},
            "model + time range": {"model": "anthropic/claude-sonnet-4", "since": str(mid - day / 4),
                                   "until": str(mid + day / 4)},
            "model prefix + time range (ISO)": {"model": "gpt-4*", "since": "2025-10-09T12:00:00Z",
                                                "until": "2025-10-10T00:00:00Z"},
            "route + status class": {"route": "anthropic", "status": "5xx"},
            "errors (error=any)": {"error": "any"},
            "free text q=rate limit": {"q": "rate limit"},
            "state=in_flight (rare)": {"state": "in_flight"},
            "page 20 (cursor)": None,
            "stats: 6 h window": {"since": str(mid - day / 8), "until": str(mid + day / 8)},
        }
        conn = Conn(port)
        cursor = None
        for _ in range(19):
            page = json.loads(conn.request("GET", "/api/requests" + (f"?cursor={cursor}" if cursor else ""))[1])
            cursor = page["next_cursor"]
        conn.close()
        queries["page 20 (cursor)"] = {"cursor": cursor}
        print("measuring queries ...", file=sys.stderr)
        query_results = measure_queries(port, queries, args.queries)
        runs = {}
        paced = int(args.rate * args.seconds)
        print(f"ingest: {paced} exchanges at {args.rate:.0f}/s ...", file=sys.stderr)
        runs[f"paced at {args.rate:.0f}/s for {args.seconds:.0f} s"] = ingest(
            port, paced, args.rate, args.concurrency, args.seconds * 3 + 30)
        print(f"ingest: {args.burst} exchanges flat out ...", file=sys.stderr)
        runs[f"flat out, {args.concurrency} connections"] = ingest(
            port, args.burst, None, args.concurrency, 120)
        print("in-process pipeline ...", file=sys.stderr)
        pipes = {"files + metadata updates only": pipeline(args.burst, False),
                 "files + metadata + index + derive": pipeline(args.burst, True)}
        report = table(args.count, reindex_s, query_results, runs, pipes)
        print(report)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"count": args.count, "reindex_s": reindex_s, "queries": query_results,
                           "ingest": runs, "pipeline": pipes}, f, indent=1)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        if not args.keep and not args.log_dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
