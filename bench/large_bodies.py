"""Large bodies into the object store (issue 15): segments alone against multipart uploads.

One orlogserver on moto's S3 server and PostgreSQL takes `--count` bodies of `--mib` MiB,
each sent as orproxy sends a large body arriving fast: `/ingest` batches of one part's next
bytes, one batch in flight per sender, `--senders` senders at once. With 4 MiB batches (what
orproxy sent before 2026-12-04) no batch fills a 5 MiB part, so every byte goes in
segments; with 12 MiB batches (orproxy's now) most go as multipart parts (store/uploads.py).

Reported: MiB per second acknowledged, CPU per MiB of the logging server and PostgreSQL
(moto's apart: it stands in for S3), and the requests that stored bytes (PUTs and POSTs in
moto's log: S3 bills each). The last body is read back and compared.

    .venv/bin/python bench/large_bodies.py [--count 24] [--mib 32] [--senders 2] [--batches 4,12]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gevent  # noqa: E402
from gevent import monkey  # noqa: E402

monkey.patch_all()

import requests  # noqa: E402

from bench.procs import Proc, cpu_ticks, free_port, wait_idle  # noqa: E402
from orproxy.logwire import CONTENT_TYPE, append_head  # noqa: E402
from orproxy.testing.pattern import pattern_bytes  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024


def _send(url: str, body: bytes, batch: int) -> str:
    """One body as a part, in batches of `batch` bytes, each sent once the last is acked; its id."""
    rid, t = str(uuid.uuid4()), time.time()
    with requests.Session() as session:
        for offset in range(0, len(body), batch):
            data = body[offset:offset + batch]
            final = offset + len(data) == len(body)
            answer = session.post(url + "/ingest", data=append_head(rid, "request", t, t, offset, len(data), final)
                                  + data, headers={"Content-Type": CONTENT_TYPE}, timeout=120)
            if answer.status_code != 201 or answer.json()["acks"] != [offset + len(data)]:
                raise RuntimeError(f"batch at {offset}: HTTP {answer.status_code} {answer.text[:200]}")
    return rid


def _stored_requests(moto_log: str, since: int) -> int:
    with open(moto_log, "rb") as f:
        f.seek(since)
        return sum(1 for line in f if b'"PUT ' in line or b'"POST ' in line)


def run(batch_mib: int, count: int, mib: int, senders: int, store: str, index: str, pg_pid: int,
        moto_pid: int, moto_log: str) -> dict[str, float]:
    work = tempfile.mkdtemp(prefix="large-bodies-")
    port = free_port()
    proc = Proc("orlogserver", [os.path.join(os.path.dirname(sys.executable), "orlogserver"), "--port", str(port),
                                "--log-dir", work, "--store", store, "--index", index], work).start()
    proc.wait_port(port)
    url = f"http://127.0.0.1:{port}"
    body = pattern_bytes(mib * MIB)
    watched = [proc.pid, pg_pid]
    try:
        wait_idle(watched + [moto_pid], timeout=10)
        log_at = os.path.getsize(moto_log)
        before, moto_before, started = cpu_ticks(watched), cpu_ticks([moto_pid]), time.monotonic()
        each = [count // senders + (1 if n < count % senders else 0) for n in range(senders)]
        def sender(bodies: int) -> str:
            return [_send(url, body, batch_mib * MIB) for _ in range(bodies)][-1]
        jobs = [gevent.spawn(sender, k) for k in each]
        gevent.joinall(jobs, raise_error=True)
        seconds = time.monotonic() - started
        ticks, moto_ticks = cpu_ticks(watched) - before, cpu_ticks([moto_pid]) - moto_before
        stored = _stored_requests(moto_log, log_at)
        last = jobs[-1].get()
        back = requests.get(f"{url}/api/requests/{last}/request", timeout=120).content
        same = hashlib.sha256(back).digest() == hashlib.sha256(body).digest()
    finally:
        proc.stop()
    total = count * mib
    return {"rate": total / seconds, "cpu": ticks / TICK / total * 1000, "moto": moto_ticks / TICK / total * 1000,
            "requests": stored, "same": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--mib", type=int, default=32)
    parser.add_argument("--senders", type=int, default=2)
    parser.add_argument("--batches", default="4,12", help="the batch sizes to run, in MiB")
    args = parser.parse_args()
    from orproxy.testing.postgres import Cluster
    from orproxy.testing.s3 import MotoS3
    rows = []
    with Cluster.start() as cluster, MotoS3.start() as s3:
        os.environ.update(s3.env)
        with open(os.path.join(cluster.work, "data", "postmaster.pid")) as f:
            pg_pid = int(f.readline())
        for batch in [int(b) for b in args.batches.split(",")]:
            print(f"{batch} MiB batches ...", file=sys.stderr, flush=True)
            rows.append((batch, run(batch, args.count, args.mib, args.senders, s3.new_bucket(),
                                    cluster.new_database(), pg_pid, s3.process.pid, os.path.join(s3.work, "log"))))
    print(f"\n{args.count} bodies of {args.mib} MiB, {args.senders} senders")
    print(f"{'batches':>8} {'MiB/s':>7} {'CPU ms/MiB':>10} {'moto ms/MiB':>11} {'S3 PUT/POST':>11} {'read back':>9}")
    for batch, r in rows:
        print(f"{batch:>5} MiB {r['rate']:7.1f} {r['cpu']:10.2f} {r['moto']:11.2f} {r['requests']:11} "
              f"{'same' if r['same'] else 'DIFFERS':>9}")


if __name__ == "__main__":
    main()
