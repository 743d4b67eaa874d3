"""The hostile-request corpus (tests/hostile/, one raw request a file, named by the status
it must get) replayed against the proxy and the logging server: whole, byte by byte and in
random pieces. Each gets its refusal, the connection closes, and nothing is forwarded
upstream or written to the log."""
import json
import random
import socket
import time
from pathlib import Path

import pytest

from log_helpers import host_port

CORPUS = sorted((Path(__file__).parent / "hostile").glob("*.http"))
SPLITS = ("whole", "bytes", "random")


def pieces(data, split, seed):
    if split == "whole":
        return [data]
    if split == "bytes":  # a byte at a time for the head; a large field in 1 KiB steps
        size = 1 if len(data) < 4096 else 1024
        return [data[i:i + size] for i in range(0, len(data), size)]
    rng = random.Random(seed)
    out, at = [], 0
    while at < len(data):
        step = rng.randint(1, 64)
        out.append(data[at:at + step])
        at += step
    return out


def replay(url, chunks):
    """Send the pieces (each its own write), then read to the close: (answer, closed)."""
    sock = socket.create_connection(host_port(url), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for chunk in chunks:
            try:
                sock.sendall(chunk)
            except OSError:
                break  # refused and closed before the rest: fine
            if len(chunks) > 1:
                time.sleep(0.0005)
        answer = b""
        while True:
            try:
                data = sock.recv(65536)
            except (socket.timeout, ConnectionResetError):
                return answer, answer != b""
            if not data:
                return answer, True
            answer += data
    finally:
        sock.close()


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_the_proxy_refuses_it_and_forwards_nothing(proxy, fake_upstream, path, split):
    expected = int(path.name[:3])
    fake_upstream.reset_stats()
    answer, closed = replay(proxy.url, pieces(path.read_bytes(), split, path.name))
    assert answer.startswith(b"HTTP/1.1 %d " % expected), answer[:200]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["type"] == "proxy_error"
    assert closed
    assert fake_upstream.stats()["requests"] == 0
    assert proxy.alive


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_the_logging_server_refuses_it_and_writes_nothing(logserver, path, split):
    expected = int(path.name[:3])
    before = set(logserver.log_dir.iterdir())
    answer, closed = replay(logserver.url, pieces(path.read_bytes(), split, path.name))
    if "chunk-size" in path.name:  # a valid head (to a path it does not serve): refused all the same
        assert answer.startswith(b"HTTP/1.1 4"), answer[:200]
    else:
        assert answer.startswith(b"HTTP/1.1 %d " % expected), answer[:200]
    assert "message" in json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
    assert closed
    assert set(logserver.log_dir.iterdir()) == before
