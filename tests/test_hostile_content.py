"""Hostile content on the logging server: bodies a hostile upstream or client made, logged
as they came. Deriving the fields, the parsed view, the raw download and the live tail stay
bounded in time and memory, and say "could not decode" where they cannot, never crash."""
import gzip
import json
import time
import uuid
from pathlib import Path

import brotli
import pytest

from api_helpers import ApiClient
from helpers import http_request

REQUEST = (b"POST /v1/chat/completions HTTP/1.1\r\nContent-Type: application/json\r\n\r\n"
           b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}')


def response(headers, body):
    return b"HTTP/1.1 200 OK\r\n" + b"".join(b"%s: %s\r\n" % h for h in headers) + b"\r\n" + body


JSON, SSE = (b"Content-Type", b"application/json"), (b"Content-Type", b"text/event-stream")
BOMBS = {  # made when a test needs one: the large ones take seconds to compress
    "json nested 100,000 deep": lambda: response([JSON], b"[" * 100_000 + b"]" * 100_000),
    "a gzip bomb (200 MB of zeros)": lambda: response([JSON, (b"Content-Encoding", b"gzip")],
                                                     gzip.compress(b"\0" * (200 << 20), 6)),
    "a brotli bomb (1 GB of zeros)": lambda: response([SSE, (b"Content-Encoding", b"br")],
                                                     brotli.compress(b"\0" * (1 << 30), quality=1)),
    "a gzip of a gzip": lambda: response([JSON, (b"Content-Encoding", b"gzip, gzip")],
                                         gzip.compress(gzip.compress(b"{" * (64 << 20), 6), 6)),
    "an SSE line of 100 MiB": lambda: response([SSE], b"data: " + b"x" * (100 << 20)),
    "invalid UTF-8": lambda: response([JSON], b'{"a": "\xff\xfe\xc3\x28"}'),
    "a Content-Encoding that lies": lambda: response([JSON, (b"Content-Encoding", b"gzip")], b'{"not": "gzip"}'),
    "an unknown Content-Encoding": lambda: response([(b"Content-Encoding", b"zstd-from-the-future")], b"\x28\xb5"),
}


def peak_rss_mib(pid):
    for line in Path("/proc/%d/status" % pid).read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.parametrize("name", list(BOMBS))
def test_a_hostile_body_is_shown_bounded_and_never_crashes_the_server(logserver, name):
    exchange_id = str(uuid.uuid4())
    for kind, data in (("request", REQUEST), ("response", BOMBS[name]())):
        status, _, _ = http_request("PUT", "%s/%s/%s" % (logserver.url, exchange_id, kind), data, timeout=60)
        assert status == 201
    api = ApiClient(logserver.url)
    started = time.monotonic()
    row = api.wait_row(exchange_id, lambda r: r["model_requested"] == "m" and r["api"] is not None, timeout=60)
    status, _, body = http_request("GET", "%s/api/requests/%s/exchange" % (logserver.url, exchange_id), timeout=60)
    assert status == 200
    view = json.loads(body)["response"]["body"]
    assert view.get("truncated") or view.get("decode_error") or view["kind"] in ("text", "binary", "json", "sse")
    status, _, tail = http_request("GET", "%s/api/requests/%s/tail" % (logserver.url, exchange_id), timeout=60)
    assert status == 200 and b"event: end" in tail and len(tail) < 16 << 20
    assert time.monotonic() - started < 60
    assert row["state"] in ("in_flight", "complete", "incomplete")
    assert logserver.alive and peak_rss_mib(logserver.process.pid) < 1024
