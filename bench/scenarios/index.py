"""Scenario index (issue 3): the logging server's index under load.

  1. Seeds N exchanges (default 100,000) as files (orproxy.testing.seed_logs), then times
     `orlogserver --reindex` on them.
  2. Starts `orlogserver` on that log dir and measures API latency, one request at a time
     over a keep-alive connection: the newest 50, a filter on model and time range (the
     targets: p99 under 50 ms), and a few more queries a UI makes.
  3. Ingest: exchanges PUT as the proxy sends them (request, response, metadata; OpenAI
     JSON and SSE bodies with usage), paced at --index-rate exchanges/s for
     --index-seconds, then as fast as it goes; after each, how long until the index lists
     every exchange with its derived fields (the index keeps up if that is about zero).
  4. The same work without HTTP, in this process, with and without the index: what
     indexing and deriving cost per exchange.

It needs none of the run's targets: it starts its own logging server, pinned as the
run's (CPU 0, with this load generator on CPU 1). The figures are rows of the orproxy
column. Every loop is bounded in count and time; everything runs on 127.0.0.1.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time
import uuid
from urllib.parse import urlencode

import gevent
from gevent.pool import Pool

from bench.procs import Proc
from bench.report import Row
from bench.scenarios.registry import scenario
from orproxy.testing.seed_logs import BASE_TIME, VOCABULARY, corpus, seed

TARGET_MS = 50.0
TARGET_RATE = 500
DAY = 86400.0
# What a run may change: option --index-KEY (bench/run.py), else parameter idx_KEY
OPTIONS = (
    ("count", int, "exchanges seeded (default 100,000, quick 20,000)"),
    ("queries", int, "requests measured per query (default 300, quick 100)"),
    ("rate", float, "paced ingest rate, exchanges/s (default 500)"),
    ("seconds", float, "paced ingest duration (default 10 s, quick 5)"),
    ("burst", int, "exchanges sent flat out (default 5,000)"),
    ("concurrency", int, "ingest connections (default 32)"),
)


@scenario("index", default=False, help="the logging server's index: reindex, query latency, "
                                       "ingest keeping up, cost per exchange")
def index_scenario(ctx):
    o = {k: getattr(ctx.args, "index_" + k) for k, _, _ in OPTIONS}
    o = {k: v if v is not None else ctx.p["idx_" + k] for k, v in o.items()}
    work = os.path.join(ctx.run_dir, "index")
    log_dir = os.path.join(work, "logs")
    os.makedirs(work)
    ctx.progress("index: seeding %s exchanges into %s" % (format(o["count"], ","), log_dir))
    t = time.monotonic()
    seed(log_dir, o["count"], texts=True)  # chat texts in the parts: the search index is fed
    ctx.progress("index: seeded in %.1f s; orlogserver --reindex" % (time.monotonic() - t))
    t = time.monotonic()
    subprocess.run(ctx.args.logserver_cmd_argv + ["--reindex", "--log-dir", log_dir],
                   check=True, stdout=subprocess.DEVNULL)
    reindex_s = time.monotonic() - t
    sizes = _index_sizes(log_dir)
    proc = Proc("index-orlogserver", ctx.args.logserver_cmd_argv + [
        "--port", "0", "--log-dir", log_dir], work, cpus=ctx.cpus_proxy, cwd=work).start()
    ctx.extra_procs.append(proc)
    try:
        port = proc.wait_listening()
        ctx.progress("index: measuring queries")
        queries = measure_queries(port, _queries(port, o["count"]), o["queries"])
        runs = {}
        paced = int(o["rate"] * o["seconds"])
        ctx.progress("index: ingest of %d exchanges at %.0f/s" % (paced, o["rate"]))
        runs["paced at %.0f/s for %.0f s" % (o["rate"], o["seconds"])] = ingest(
            port, paced, o["rate"], o["concurrency"], o["seconds"] * 3 + 30)
        ctx.progress("index: ingest of %d exchanges flat out" % o["burst"])
        runs["flat out, %d connections" % o["concurrency"]] = ingest(
            port, o["burst"], None, o["concurrency"], 120)
    finally:
        proc.stop(15)
        ctx.extra_procs.remove(proc)
    ctx.progress("index: in-process pipeline")
    pipes = {"files + metadata updates only": pipeline(o["burst"], False),
             "files + metadata + index + derive": pipeline(o["burst"], True)}
    ctx.results["index"] = {"count": o["count"], "reindex_s": reindex_s, "sizes": sizes, "queries": queries,
                            "ingest": runs, "pipeline": pipes, "options": o}
    ctx.rows += _rows(ctx, o["count"], reindex_s, sizes, queries, runs, pipes)


def _phrase() -> str:
    """Two adjacent words of the seeded corpus, somewhere in the middle."""
    text = corpus()
    return " ".join(text[len(text) // 2:].split(" ")[1:3])


def _queries(port: int, count: int) -> dict[str, dict[str, str]]:
    """The queries measured, the last one a cursor 20 pages deep."""
    mid = BASE_TIME + count  # the seed spans ~2 s per exchange
    queries = {
        "newest 50": {},
        "model + time range": {"model": "anthropic/claude-sonnet-4", "since": str(mid - DAY / 4),
                               "until": str(mid + DAY / 4)},
        "model prefix + time range (ISO)": {"model": "gpt-4*", "since": "2025-10-09T12:00:00Z",
                                            "until": "2025-10-10T00:00:00Z"},
        "route + status class": {"route": "anthropic", "status": "5xx"},
        "errors (error=any)": {"error": "any"},
        "free text q=rate limit (no exchange has it)": {"q": "rate limit"},
        "free text, the commonest word": {"q": VOCABULARY[0]},
        "free text, a rare word": {"q": VOCABULARY[5000]},
        "free text, a two-word phrase": {"q": _phrase()},
        "free text + model": {"q": VOCABULARY[50], "model": "anthropic/claude-sonnet-4"},
        "free text in a short column, rare (rate limited)": {"q": "rate limited"},
        "free text in a short column, common (local)": {"q": "local"},
        "free text, the start of an id": {"q": "0a1b"},
        "state=in_flight (rare)": {"state": "in_flight"},
        "page 20 (cursor)": None,
        "stats: 6 h window": {"since": str(mid - DAY / 8), "until": str(mid + DAY / 8)},
    }
    conn = Conn(port)
    cursor = None
    for _ in range(19):
        page = json.loads(conn.request("GET", "/api/requests" + (f"?cursor={cursor}" if cursor else ""))[1])
        cursor = page["next_cursor"]
    conn.close()
    queries["page 20 (cursor)"] = {"cursor": cursor}
    return queries


def _index_sizes(log_dir: str) -> dict[str, float]:
    """MB of the log dir's files, of the index file, and of the search texts it holds."""
    path = os.path.join(log_dir, ".ids", "index.sqlite3")
    logs = sum(e.stat().st_size for e in os.scandir(log_dir) if e.is_file())
    conn = sqlite3.connect(path)
    try:
        text = conn.execute("SELECT coalesce(sum(length(body)), 0) FROM texts").fetchone()[0]
    finally:
        conn.close()
    index = sum(os.path.getsize(path + tail) for tail in ("", "-wal") if os.path.exists(path + tail))
    return {"logs_mb": logs / 1e6, "index_mb": index / 1e6, "search_text_mb": text / 1e6}


def _rows(ctx, seeded: int, reindex_s: float, sizes: dict, queries: dict, runs: dict, pipes: dict) -> list[Row]:
    """The figures in the orproxy column: it is orproxy's logging server."""
    g = "index of %s exchanges (orlogserver)" % format(seeded, ",")

    def row(metric, value, unit="", goal=None):
        return Row(g, metric, unit, {"orproxy": value}, kind="info", goal=goal)
    rows = [row("orlogserver --reindex", reindex_s, "s"), row("  reindexed per second", seeded / reindex_s),
            row("log dir / index file (search text in it), MB", "%.0f / %.0f (%.0f)" % (
                sizes["logs_mb"], sizes["index_mb"], sizes["search_text_mb"]))]
    for name, r in queries.items():
        rows.append(row("%s: p50 / p99 / max, ms%s" % (name, "" if r["rows"] is None else " (%d rows)" % r["rows"]),
                        "%.2f / %.2f / %.2f" % (r["p50"], r["p99"], r["max"])))
        if name in ("newest 50", "model + time range"):
            rows.append(row("  %s p99" % name, r["p99"], "ms", [("<=", TARGET_MS, "#3")]))
    for name, r in runs.items():
        rows += [row("ingest (3 PUTs each) %s: taken" % name, r["rate"], "exch/s"),
                 row("  sent, errors", "%d, %d" % (r["exchanges"], r["errors"])),
                 row("  catch-up until all are indexed", r["catch_up_s"], "s",
                     [("<=", 1.0, "#3")] if name.startswith("paced") else None)]
        if name.startswith("paced") and r["rate"] < TARGET_RATE * 0.95:
            ctx.note("index: the server took %.0f of the %d/s sent (CPU-bound: see the pipeline's "
                     "cost per exchange)" % (r["rate"], TARGET_RATE))
    for name, r in pipes.items():
        rows.append(row("pipeline, no HTTP, %s: exch per CPU s, us each" % name,
                        "%.0f, %.0f" % (r["rate"], r["us_per_exchange"])))
    cost = pipes["files + metadata + index + derive"]["us_per_exchange"] - \
        pipes["files + metadata updates only"]["us_per_exchange"]
    rows.append(row("  => indexing and deriving, us each (%d/s: %.0f%% of a core)"
                    % (TARGET_RATE, cost * TARGET_RATE / 1e4), cost))
    return rows


class Conn:
    """One keep-alive HTTP/1.1 connection: just enough client for the bench (no requests:
    its per-request CPU would measure the client, not the server)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.host = f"127.0.0.1:{port}"  # the logging server answers only its own hosts
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def request(self, method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
        head = f"{method} {target} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: {len(body)}\r\n\r\n"
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


def measure_queries(port: int, queries: dict[str, dict[str, str]], n: int) -> dict[str, dict[str, float]]:
    conn = Conn(port)
    results = {}
    try:
        for name, params in queries.items():
            target = {"stats": "/api/stats", "health": "/api/health"}.get(name.split(":")[0], "/api/requests")
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


def exchange_batch(rid: str, puts: list[tuple[str, bytes]]) -> bytes:
    """The exchange as orproxy's lane sends a small one: one /ingest batch (logwire.py) of its
    request and response, each whole, and its metadata."""
    from orproxy import logwire
    now, body = time.time(), b""
    for kind, data in puts:
        if kind == "metadata":
            body += logwire.metadata_head(rid, len(data)) + data
        else:
            body += logwire.append_head(rid, kind, now, now, 0, len(data), True) + data
    return body


def ingest(port: int, total: int, rate: float | None, concurrency: int, seconds_cap: float,
           batched: bool = False) -> dict[str, float]:
    """PUT `total` exchanges (at `rate` per second, or flat out), or POST each as one batch
    (`batched`, as orproxy does); return timings."""
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
            if batched:
                status, _ = conn.request("POST", "/ingest", exchange_batch(rid, puts))
                errors += status != 201
            else:
                for kind, body in puts:
                    status, _ = conn.request("PUT", f"/{rid}/{kind}", body)
                    errors += status != 201
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


def pipeline(total: int, with_index: bool) -> dict[str, float]:
    """The logging server's work per exchange minus HTTP, in this process: the part files,
    the same metadata-file updates ingest makes, and (with_index) the index rows and the
    derived fields, until all are written. With and without the index: the difference is
    what indexing costs per exchange."""
    from orproxy.logserver.llm.httpfile import parse_head
    from orproxy.logserver.store.deriving import Deriver
    from orproxy.logserver.store.index import Index
    from orproxy.logserver.store.ingest import Ingest, PartEnded, ProxyMetadataStored
    from orproxy.logserver.store.logdir import LogDir

    work = tempfile.mkdtemp(prefix="orproxy-pipeline-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        log_dir = LogDir(work)
        index = None
        ingest = Ingest(log_dir, Deriver(log_dir) if with_index else None)
        if with_index:
            index = Index(log_dir.path)
            ingest.subscribe(lambda record, events: index.put(record.document))
        started, cpu_started = time.monotonic(), time.process_time()
        for i in range(total):
            rid, puts = exchange_puts(i, "pipeline")
            for kind, body in puts[:2]:
                now = time.time()
                with log_dir.open_writer(rid, kind, now, fresh=True) as writer:
                    writer.write(body)
                part = {"file": writer.name, "received_at": now, "complete": True,
                        "bytes": len(body), "completed_at": time.time(), "head": parse_head(body).summary()}
                # What Ingest.store_part's last update does (ingest.py)
                ingest._update(rid, now, lambda d, k=kind, p=part: d["parts"].__setitem__(k, p), PartEnded(kind))
            metadata = json.loads(puts[2][1])
            ingest._update(rid, time.time(), lambda d, m=metadata: d.update(proxy=m), ProxyMetadataStored())
            if i % 20 == 0:
                gevent.sleep(0)  # let the derive greenlets and the index writer run
        if index is not None:
            while ingest.deriving:
                gevent.sleep(0.001)
            index.flush()
        seconds, cpu = time.monotonic() - started, time.process_time() - cpu_started
        if index is not None:
            index.close()
        log_dir.close()
        # CPU time (all threads of this process), not wall time: the machine is shared
        return {"exchanges": total, "seconds": seconds, "cpu_seconds": cpu, "rate": total / cpu,
                "us_per_exchange": cpu / total * 1e6}
    finally:
        shutil.rmtree(work, ignore_errors=True)
