"""Fully-logged exchanges per second, and CPU per exchange, by storage (issue 15): the log
dir with the SQLite index, and with the PostgreSQL index, behind one logging server and
behind two (on one log dir and one database); and bodies in an object store (moto's S3
server on loopback) with the PostgreSQL index, one server and two (each its own local dir).

Each exchange is sent to the logging server as one /ingest batch of its request, response
and metadata, as orproxy sends a small one (bench/scenarios/index.py's `ingest`; `--puts`:
as three PUTs, the Go program's protocol), `--count` of them at
`--concurrency`, split between the servers; it is logged when /api/stats counts its tokens. CPU per exchange is
that of the logging servers and, with PostgreSQL, of every PostgreSQL process too (from
/proc, over the load and the catch-up). moto's CPU is shown apart: it stands in for S3,
which costs the logging server nothing. On a 2-core machine this is the per-exchange cost;
two servers cannot show scaling here.

    .venv/bin/python bench/ingest_stores.py [--count 6000] [--concurrency 16]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gevent  # noqa: E402
from gevent import monkey  # noqa: E402

monkey.patch_all()

from bench.procs import Proc, cpu_ticks, free_port, wait_idle  # noqa: E402
from bench.scenarios.index import ingest  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def _postmaster(cluster: Any) -> int:
    with open(os.path.join(cluster.work, "data", "postmaster.pid")) as f:
        return int(f.readline())


def run(servers: int, index: str | None, count: int, concurrency: int, pg_pid: int | None,
        store: str | None = None, moto_pid: int | None = None, batched: bool = True) -> dict[str, float]:
    """One variant: start its servers on a new log dir (or, with `store`, the object store and
    local dirs of their own), PUT `count` exchanges, stop them."""
    log_dir = tempfile.mkdtemp(prefix="ingest-stores-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    procs, ports = [], []
    for n in range(servers):
        port = free_port()
        argv = [os.path.join(os.path.dirname(sys.executable), "orlogserver"), "--port", str(port),
                "--log-dir", os.path.join(log_dir, str(n)) if store else log_dir] + \
            (["--index", index] if index else []) + (["--store", store] if store else [])
        proc = Proc(f"orlogserver{n}", argv, log_dir).start()
        procs.append(proc)
        proc.wait_port(port)
        ports.append(port)
    watched = [p.pid for p in procs] + ([pg_pid] if pg_pid else [])
    apart = [moto_pid] if moto_pid else []
    try:
        wait_idle(watched + apart, timeout=10)
        before, started = cpu_ticks(watched), time.monotonic()
        before_apart = cpu_ticks(apart)
        jobs = [gevent.spawn(ingest, port, count // servers, None, concurrency // servers, 120, batched)
                for port in ports]
        gevent.joinall(jobs)
        results = [job.get() for job in jobs]
        seconds = time.monotonic() - started
        ticks = cpu_ticks(watched) - before
        ticks_apart = cpu_ticks(apart) - before_apart
    finally:
        for proc in procs:
            proc.stop()
    logged = sum(r["exchanges"] for r in results)
    caught_up = max(r["catch_up_s"] for r in results)
    return {"exchanges": logged, "errors": sum(r["errors"] for r in results), "seconds": seconds,
            "rate": logged / seconds, "catch_up_s": caught_up,
            "cpu_ms": ticks / TICK / logged * 1000 if logged else float("inf"),
            "moto_ms": ticks_apart / TICK / logged * 1000 if logged and apart else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--puts", action="store_true", help="three PUTs per exchange instead of a batch")
    parser.add_argument("--only", default="", help="run the variants whose name holds this (e.g. s3)")
    args = parser.parse_args()
    from orproxy.testing.postgres import Cluster
    from orproxy.testing.s3 import MotoS3
    rows = []
    with Cluster.start() as cluster, MotoS3.start() as s3:
        os.environ.update(s3.env)
        pg_pid, moto_pid = _postmaster(cluster), s3.process.pid
        variants = [("file + SQLite, 1 server", 1, None, None, None),
                    ("file + PostgreSQL, 1 server", 1, cluster.new_database, pg_pid, None),
                    ("file + PostgreSQL, 2 servers", 2, cluster.new_database, pg_pid, None),
                    ("s3 + PostgreSQL, 1 server", 1, cluster.new_database, pg_pid, s3.new_bucket),
                    ("s3 + PostgreSQL, 2 servers", 2, cluster.new_database, pg_pid, s3.new_bucket)]
        for name, servers, index, pid, store in variants:
            if args.only not in name:
                continue
            print(f"{name} ...", file=sys.stderr, flush=True)
            rows.append((name, run(servers, index and index(), args.count, args.concurrency, pid,
                                   store and store(), moto_pid if store else None, not args.puts)))
    print(f"\n{'storage':32} {'exchanges':>9} {'errors':>6} {'per s':>7} {'catch-up s':>10} {'CPU ms each':>11} "
          f"{'moto ms':>7}")
    for name, r in rows:
        moto = "" if r["moto_ms"] is None else f"{r['moto_ms']:7.2f}"
        print(f"{name:32} {r['exchanges']:9,} {r['errors']:6} {r['rate']:7.0f} {r['catch_up_s']:10.2f} "
              f"{r['cpu_ms']:11.2f} {moto:>7}")


if __name__ == "__main__":
    main()
