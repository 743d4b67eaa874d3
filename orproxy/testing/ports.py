"""Loopback ports for the throwaway servers of the tests and the benchmark (PostgreSQL,
nginx, moto's S3): one free now, and waiting until a started server listens on it."""
from __future__ import annotations

import socket
import subprocess
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(name: str, port: int, process: subprocess.Popen, timeout: float = 10.0) -> None:
    """Return once `port` takes connections; RuntimeError if `process` exits first (with its
    stderr, if piped) or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            said = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise RuntimeError(f"{name} exited ({process.returncode}) {said}".strip())
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on {port} within {timeout:.0f} s")
