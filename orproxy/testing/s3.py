"""A throwaway S3-compatible server for the tests and the benchmarks of the object store
(store/objectstore.py): moto's standalone server (`moto[server]`, installed with the test
extra) on a free loopback port, its data in memory.

    with MotoS3.start() as s3:
        os.environ.update(s3.env)   # what orlogserver reads: AWS_ENDPOINT_URL, the keys
        url = s3.new_bucket()       # s3://orproxy-t1/logs
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


def find_moto() -> str | None:
    """moto's server command, beside this Python or on PATH; None if it is not installed."""
    beside = os.path.join(os.path.dirname(sys.executable), "moto_server")
    return beside if os.path.exists(beside) else shutil.which("moto_server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class MotoS3:
    endpoint: str
    process: subprocess.Popen
    buckets: int = 0

    @classmethod
    @contextmanager
    def start(cls) -> Iterator["MotoS3"]:
        command = find_moto()
        if command is None:
            raise FileNotFoundError("moto's server is not installed (pip install 'moto[server]')")
        port = _free_port()
        work = tempfile.mkdtemp(prefix="orproxy-s3-")
        with open(os.path.join(work, "log"), "wb") as log:
            process = subprocess.Popen([command, "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                                       stderr=subprocess.STDOUT, cwd=work)
        server = cls(f"http://127.0.0.1:{port}", process)
        try:
            server._wait(port)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
            shutil.rmtree(work, ignore_errors=True)

    def _wait(self, port: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto's server exited ({self.process.returncode})")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"moto's server did not listen on port {port} within {timeout} s")

    @property
    def env(self) -> dict[str, str]:
        """The AWS variables that point a client at this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "test",
                "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}

    def new_bucket(self, prefix: str = "logs") -> str:
        """The URL of a new, empty bucket's prefix, s3://orproxy-tN/PREFIX."""
        self.buckets += 1
        name = f"orproxy-t{self.buckets}"
        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/{name}", data=b"", method="PUT"),
                               timeout=10).close()
        return f"s3://{name}/{prefix}" if prefix else f"s3://{name}"
