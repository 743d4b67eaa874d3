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
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from orproxy.testing.ports import free_port, wait_port


def find_moto() -> str | None:
    """moto's server command, beside this Python or on PATH; None if it is not installed."""
    beside = os.path.join(os.path.dirname(sys.executable), "moto_server")
    return beside if os.path.exists(beside) else shutil.which("moto_server")


@dataclass
class MotoS3:
    endpoint: str
    process: subprocess.Popen | None
    buckets: int = 0
    work: str = ""

    @classmethod
    @contextmanager
    def start(cls) -> Iterator["MotoS3"]:
        work = tempfile.mkdtemp(prefix="orproxy-s3-")
        server = cls("", None, work=work)  # type: ignore[arg-type]
        try:
            server.restart(free_port())
            yield server
        finally:
            server.stop()
            shutil.rmtree(work, ignore_errors=True)

    def restart(self, port: int) -> None:
        """Start the server (again) on `port`: empty, moto keeps nothing."""
        command = find_moto()
        if command is None:
            raise FileNotFoundError("moto's server is not installed (pip install 'moto[server]')")
        with open(os.path.join(self.work, "log"), "ab") as log:
            self.process = subprocess.Popen([command, "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                                            stderr=subprocess.STDOUT, cwd=self.work)
        self.endpoint = f"http://127.0.0.1:{port}"
        wait_port("moto's server", port, self.process, timeout=30.0)

    def stop(self) -> None:
        """Stop the server (the object store goes away)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()

    @property
    def env(self) -> dict[str, str]:
        """The AWS variables that point a client at this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "test",
                "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}

    def new_bucket(self, prefix: str = "logs") -> str:
        """The URL of a new, empty bucket's prefix, s3://orproxy-tN/PREFIX."""
        self.buckets += 1
        url = f"s3://orproxy-t{self.buckets}/{prefix}" if prefix else f"s3://orproxy-t{self.buckets}"
        self.create(url)
        return url

    def create(self, url: str) -> None:
        """Make the bucket of an s3:// URL (again, after a restart)."""
        name = url[len("s3://"):].split("/", 1)[0]
        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/{name}", data=b"", method="PUT"),
                               timeout=10).close()
