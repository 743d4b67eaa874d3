"""The HAR export's memory and speed over a large log: not a scenario of run.py, a script.

Seeds N made-up exchanges (orproxy.testing.seed_logs, with real HTTP `.bin` parts: a JSON
request, a JSON response of --body-bytes), starts an orlogserver on them, waits for its
index, then downloads `GET /api/har` (every exchange) while sampling the server's
resident memory. Prints the entries, the document's size, the seconds, and the server's
RSS before and at its peak (VmRSS, and VmHWM: the kernel's own peak).

    .venv/bin/python bench/har_export.py --count 100000
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

from orproxy.testing.seed_logs import seed

REQUEST = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: upstream\r\nContent-Type: application/json\r\n"
           b"Authorization: Bearer ****cdef\r\nX-Proxy-Path: http://127.0.0.1:5601/v1/chat/completions\r\n\r\n"
           b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello there"}]}')


def _status(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as f:
        return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f) if k in ("VmRSS", "VmHWM")}


def _write_parts(log_dir: str, documents: list[dict], body_bytes: int) -> None:
    answer = json.dumps({"object": "chat.completion", "choices": [{"message": {
        "role": "assistant", "content": "x" * max(0, body_bytes - 90)}}]}).encode()
    response = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + answer
    for document in documents:
        with open(os.path.join(log_dir, document["parts"]["request"]["file"]), "wb") as f:
            f.write(REQUEST)
        with open(os.path.join(log_dir, document["parts"]["response"]["file"]), "wb") as f:
            f.write(response)


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.load(resp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--body-bytes", type=int, default=1024)
    ap.add_argument("--port", type=int, default=18980)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="har-bench-") as tmp:
        log_dir = os.path.join(tmp, "logs")
        started = time.monotonic()
        _write_parts(log_dir, seed(log_dir, args.count, bins=False), args.body_bytes)
        print(f"seeded {args.count} exchanges in {time.monotonic() - started:.0f} s", flush=True)
        server = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "orlogserver"), "--port",
                                   str(args.port), "--log-dir", log_dir, "--priority", "normal"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{args.port}"
        try:
            while True:
                time.sleep(1)
                try:
                    health = _get(base + "/api/health")
                except OSError:
                    continue
                if health["exchanges"] >= args.count and not health["rebuilding"]:
                    break
            _get(base + "/api/requests?limit=1")
            before = _status(server.pid)
            peak, size, started = before["VmRSS"], 0, time.monotonic()
            with urllib.request.urlopen(base + "/api/har", timeout=600) as resp:
                while block := resp.read(1024 * 1024):
                    size += len(block)
                    peak = max(peak, _status(server.pid)["VmRSS"])
            seconds = time.monotonic() - started
            after = _status(server.pid)
        finally:
            server.terminate()
            server.wait(30)
    print(f"GET /api/har: {args.count} entries, {size / 2**20:.0f} MiB in {seconds:.0f} s "
          f"({args.count / seconds:.0f} entries/s)")
    print(f"orlogserver RSS: {before['VmRSS'] / 1024:.0f} MiB before, {peak / 1024:.0f} MiB at its peak while "
          f"streaming (VmHWM {before['VmHWM'] / 1024:.0f} -> {after['VmHWM'] / 1024:.0f} MiB)")


if __name__ == "__main__":
    main()
