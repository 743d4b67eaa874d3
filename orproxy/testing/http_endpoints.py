"""The fake upstream's plain HTTP endpoints: what arrived on the wire (echo), bodies of any
size either way (bytes, sink), encoded bodies, status codes and special headers."""
import functools
import gzip
import json

from orproxy.testing.answers import (STATS, error, flag, hash_body, int_param,
                                     json_response, query, reason)
from orproxy.testing.pattern import pattern_blocks

__all__ = ["echo", "bytes_", "sink", "compressed_gzip", "compressed_br", "cookies",
           "headers_hop", "status"]


def echo(environ, start_response):
    """ANY .../echo, .../echo/...: JSON with the method, raw target, raw header lines in
    wire order, the framing and the body's length and sha256."""
    handler = environ["fake.handler"]
    headers = [[name, value] for name, value in handler.raw_headers]
    te = environ.get("HTTP_TRANSFER_ENCODING", "")
    if "chunked" in te.lower():
        framing = "chunked"
    elif environ.get("CONTENT_LENGTH") is not None:
        framing = "length"
    else:
        framing = "none"
    length, digest = hash_body(environ)
    return json_response(start_response, "200 OK", {
        "method": handler.command,
        "target": handler.path,
        "version": handler.request_version,
        "requestline": handler.requestline,
        "headers": headers,
        "framing": framing,
        "content_length": environ.get("CONTENT_LENGTH"),
        "body_length": length,
        "body_sha256": digest,
    })


def bytes_(environ, start_response):
    """GET .../bytes?n=N: N pattern bytes [chunked=1, block=65536]."""
    q = query(environ)
    n = int_param(q, "n", 1024)
    block = max(1, int_param(q, "block", 65536))
    headers = [("Content-Type", "application/octet-stream")]
    if not flag(q, "chunked"):
        headers.append(("Content-Length", str(n)))
    start_response("200 OK", headers)
    return pattern_blocks(n, block)


def sink(environ, start_response):
    """PUT/POST .../sink: discards the body, answers {length, sha256} [hash=0 skips]."""
    q = query(environ)
    length, digest = hash_body(environ, want_hash=q.get("hash") not in ("0", "false", "no"))
    STATS["sink_bytes"] += length
    return json_response(start_response, "200 OK", {"length": length, "sha256": digest})


_COMPRESS_PLAIN = json.dumps({"compressed": True, "text": "squeeze me " * 40}).encode()
_GZIP_BODY = gzip.compress(_COMPRESS_PLAIN, mtime=0)


@functools.lru_cache(maxsize=1)
def _br_body():
    import brotli  # imported lazily: only /br needs it
    return brotli.compress(_COMPRESS_PLAIN)


def compressed_gzip(environ, start_response):
    return json_response(start_response, "200 OK", _GZIP_BODY,
                         [("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")])


def compressed_br(environ, start_response):
    return json_response(start_response, "200 OK", _br_body(),
                         [("Content-Encoding", "br"), ("Vary", "Accept-Encoding")])


def cookies(environ, start_response):
    return json_response(start_response, "200 OK", b'{"cookies":2}', [
        ("Set-Cookie", "session=abcdef0123456789; Path=/; HttpOnly"),
        ("Set-Cookie", "theme=dark; Path=/"),
    ])


def headers_hop(environ, start_response):
    return json_response(start_response, "200 OK", b'{"hop":true}', [
        ("Connection", "close, X-Hop"),
        ("X-Hop", "1"),
        ("Keep-Alive", "timeout=5"),
        ("X-End-To-End", "kept"),
    ])


def status(environ, start_response, code):
    """ANY .../status/CODE: that status with an OpenAI-style error body."""
    if not 200 <= code <= 599:
        return error(start_response, 400, "status %d is not supported" % code)
    status_line = "%d %s" % (code, reason(code))
    if code in (204, 304):
        start_response(status_line, [])
        return []
    body = {"error": {"message": "fake upstream answered %d" % code,
                      "type": "fake_status", "code": code}}
    return json_response(start_response, status_line, body)
