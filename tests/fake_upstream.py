"""A fake OpenAI-compatible upstream for orproxy's tests and benchmark.

A gevent pywsgi server whose endpoints match on the path *suffix*, so they answer under
any route prefix (``/api/v1/chat/completions``, ``/v1/chat/completions``, ...). It can
answer like OpenAI and Anthropic (JSON and SSE), echo exactly what arrived on the wire,
stream large or broken bodies, hang silently and notice when its client goes away.

Run it as ``python tests/fake_upstream.py [--host H] [--port P]``: it prints one line
``fake upstream listening on http://H:PORT`` once listening and exits 0 on SIGTERM/SIGINT.
Or import it and call ``serve()`` inside an already monkey-patched process.

Endpoints (``...`` is any prefix; query parameters in brackets):

  POST .../chat/completions   OpenAI chat completion; ``"stream": true`` gives SSE
                              [events=5, interval_ms=0, first_delay_ms=0]
  POST .../messages           Anthropic Messages API, JSON or SSE (same parameters)
  GET  .../models             a small OpenAI models list
  ANY  .../echo, .../echo/... JSON: method, raw target, raw headers, framing, body sha256
  GET  .../bytes?n=N          N pattern bytes [chunked=1, block=65536]
  PUT/POST .../sink           discards the body, answers {length, sha256} [hash=0 skips]
  GET  .../gzip, .../br       a JSON body with Content-Encoding gzip / br
  GET  .../sse                generic SSE [events, interval_ms, first_delay_ms,
                              framing=chunked|length|close, pad=0]
  GET  .../slow?delay_ms=N    waits before the head [body_delay_ms: after the head]
  GET  .../hang               head and one event, then silence until the client leaves
  GET  .../break?after=N      announces more than it sends, then drops the connection
                              [framing=length|chunked, delay_ms=0, rst=1 for a reset]
  ANY  .../status/CODE        that status with an OpenAI-style error body
  GET  .../cookies            two Set-Cookie headers
  GET  .../headers-hop        hop-by-hop headers (Connection, Keep-Alive, X-Hop)
  GET  /__control/stats       counters (exact path); /__control/reset zeroes them

Every streamed event's JSON carries the wall-clock ``time.time_ns()`` at which it was
written (``orproxy_sent_ns`` for the LLM shapes, ``sent_ns`` for ``/sse``), so a client
can measure what a proxy adds per event.
"""
if __name__ == "__main__":  # gevent patches before anything imports socket or ssl
    from gevent import monkey
    monkey.patch_all()

import functools
import gzip
import hashlib
import json
import signal
import socket
import struct
import sys
import time
from http import HTTPStatus
from urllib.parse import parse_qsl

import gevent
import gevent.event
from gevent.pywsgi import WSGIHandler, WSGIServer

from orproxy.hosting.handler import parse_headers

__all__ = ["serve", "make_server", "pattern_bytes", "pattern_sha256", "stream_piece",
           "stream_text", "STATS"]

# --------------------------------------------------------------------------------------
# The byte pattern served by /bytes and /break: bytes(range(256)) repeated from offset 0.

_PATTERN_UNIT = bytes(range(256))
_PATTERN_BLOCK = _PATTERN_UNIT * 256          # 64 KiB, starts and ends on a 256 boundary


def pattern_bytes(n, offset=0):
    """The n pattern bytes starting at absolute offset ``offset`` (for small n)."""
    start = offset % 256
    reps = (start + n) // 256 + 1
    return (_PATTERN_UNIT * reps)[start:start + n]


@functools.lru_cache(maxsize=64)
def pattern_sha256(n):
    """sha256 hex of the first n pattern bytes, as /bytes?n=N serves them."""
    h = hashlib.sha256()
    full, rest = divmod(n, len(_PATTERN_BLOCK))
    for _ in range(full):
        h.update(_PATTERN_BLOCK)
    h.update(_PATTERN_BLOCK[:rest])
    return h.hexdigest()


def _pattern_blocks(n, block):
    """Yield n pattern bytes in blocks of ``block`` without building n bytes."""
    buf = _PATTERN_UNIT * (block // 256 + 2)    # any window of `block` bytes fits
    pos = 0
    while pos < n:
        size = min(block, n - pos)
        start = pos % 256
        yield buf[start:start + size]
        pos += size


# --------------------------------------------------------------------------------------
# Counters, read by tests through GET /__control/stats.

STATS = {}


def _reset_stats():
    STATS.clear()
    STATS.update(requests=0, connections=0, hang_open=0, hang_closed=0, hang_total=0,
                 hang_last_closed_ns=0, break_total=0, sink_bytes=0)


_reset_stats()


# --------------------------------------------------------------------------------------
# The handler: TCP_NODELAY, and the raw request line and header lines kept for /echo.
# Headers are parsed by the proxy's own parser (orproxy.serving): wire order, names as sent.

class FakeHandler(WSGIHandler):
    """pywsgi handler that disables Nagle, is cheap, and keeps the request's wire form.

    ``self.requestline`` is pywsgi's own copy of the raw request line (latin-1, CRLF
    stripped) and ``self.path`` its raw target. ``self.raw_headers`` is the list of
    (raw name, value) header pairs in wire order; pywsgi later deletes Content-Length
    from chunked requests by *rebinding* the parsed list, so this reference stays whole.
    """

    raw_headers = ()

    def __init__(self, sock, address, server, rfile=None):
        # Without TCP_NODELAY pywsgi's separate head and body writes meet Nagle plus the
        # client's delayed ACK on keep-alive connections: ~40 ms per response (FACTS.md).
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        STATS["connections"] += 1
        super().__init__(sock, address, server, rfile)

    def MessageClass(self, fp, *args):  # noqa: N802 (pywsgi's name)
        msg = parse_headers(fp)
        self.raw_headers = msg.pairs
        return msg

    def get_environ(self):
        env = super().get_environ()
        env["fake.handler"] = self
        return env

    def log_request(self):
        # No access log; pywsgi would format the line even for a no-op log.
        pass

    def _write_with_headers(self, data):
        # pywsgi sends the head and the first block in two send() calls; one is cheaper.
        self.headers_sent = True
        self.finalize_headers()
        towrite = bytearray(b"HTTP/1.1 ")
        towrite += self.status
        towrite += b"\r\n"
        for header, value in self.response_headers:
            towrite += header
            towrite += b": "
            towrite += value
            towrite += b"\r\n"
        towrite += b"\r\n"
        if data:
            if self.response_use_chunked:
                towrite += b"%x\r\n" % len(data)
                towrite += data
                towrite += b"\r\n"
            else:
                towrite += data
        self._sendall(towrite)


# --------------------------------------------------------------------------------------
# Small helpers

_JSON = ("Content-Type", "application/json")
_SSE = ("Content-Type", "text/event-stream")
_NO_CACHE = ("Cache-Control", "no-cache")


def _json_response(start_response, status, body, headers=()):
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    start_response(status, [_JSON, ("Content-Length", str(len(body))), *headers])
    return [body]


def _error(start_response, code, message, type_="fake_error"):
    status = "%d %s" % (code, _reason(code))
    body = {"error": {"message": message, "type": type_, "code": code}}
    return _json_response(start_response, status, body)


def _reason(code):
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Unknown"


def _query(environ):
    qs = environ.get("QUERY_STRING")
    return dict(parse_qsl(qs, keep_blank_values=True)) if qs else {}


class _BadParam(ValueError):
    pass


def _int(q, name, default):
    value = q.get(name)
    if value is None or value == "":
        return default
    try:
        result = int(value)
    except ValueError:
        raise _BadParam("query parameter %s=%r is not an integer" % (name, value)) from None
    if result < 0:
        raise _BadParam("query parameter %s=%r is negative" % (name, value))
    return result


def _sleep_ms(ms):
    if ms:
        gevent.sleep(ms / 1000.0)


def _read_body(environ):
    """The whole request body (small bodies only: chat requests)."""
    return environ["wsgi.input"].read()


def _hash_body(environ, want_hash=True, block=256 * 1024):
    """Stream the request body through sha256; return (length, hexdigest or None)."""
    read = environ["wsgi.input"].read
    h = hashlib.sha256() if want_hash else None
    total = 0
    while True:
        data = read(block)
        if not data:
            break
        total += len(data)
        if h is not None:
            h.update(data)
    return total, (h.hexdigest() if h is not None else None)


def _raw_socket(environ):
    """Take over the client socket for a response pywsgi must not frame.

    The app then writes the whole response itself and returns ``[]`` without calling
    start_response; pywsgi sends nothing more and closes the connection afterwards.
    """
    handler = environ["fake.handler"]
    handler.close_connection = True
    return handler.socket


def _parse_json_request(environ):
    raw = _read_body(environ)
    if not raw:
        return {}
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("request body is not a JSON object")
    return data


def stream_piece(i):
    """The text of content event i in the chat/messages streams."""
    return "tok%d " % i


def stream_text(events=5):
    """The full text a client assembles from a chat/messages stream of ``events``."""
    return "".join(stream_piece(i) for i in range(events))


# --------------------------------------------------------------------------------------
# OpenAI chat completions

_CHAT_CONTENT = ("This is the fake upstream's answer, padded to make the completion about "
                 "one kilobyte long like a short real one. " * 8)[:720]
_CREATED = 1700000000
_USAGE = {"prompt_tokens": 12, "completion_tokens": 150, "total_tokens": 162}

# Template with two holes: the request counter and the JSON-encoded model.
_CHAT_JSON = (
    b'{"id":"chatcmpl-fake-%d","object":"chat.completion","created":'
    + str(_CREATED).encode() + b',"model":%s,"system_fingerprint":null,"choices":['
    + json.dumps({"index": 0, "message": {"role": "assistant", "content": _CHAT_CONTENT,
                                          "refusal": None},
                  "logprobs": None, "finish_reason": "stop"}).encode()
    + b'],"usage":' + json.dumps(_USAGE).encode() + b'}'
)

# Holes: counter, model, delta JSON, finish_reason JSON, sent_ns.
_CHUNK = (b'data: {"id":"chatcmpl-fake-%d","object":"chat.completion.chunk","created":'
          + str(_CREATED).encode() + b',"model":%s,"system_fingerprint":null,'
          b'"choices":[{"index":0,"delta":%s,"logprobs":null,"finish_reason":%s}],'
          b'"orproxy_sent_ns":%d}\n\n')
_USAGE_CHUNK = (b'data: {"id":"chatcmpl-fake-%d","object":"chat.completion.chunk","created":'
                + str(_CREATED).encode() + b',"model":%s,"system_fingerprint":null,'
                b'"choices":[],"usage":%s,"orproxy_sent_ns":%d}\n\n')
_DONE = b"data: [DONE]\n\n"


def _stream_params(environ):
    q = _query(environ)
    return (_int(q, "events", 5), _int(q, "interval_ms", 0), _int(q, "first_delay_ms", 0))


def chat_completions(environ, start_response):
    try:
        req = _parse_json_request(environ)
        events, interval_ms, first_delay_ms = _stream_params(environ)
    except (ValueError, _BadParam) as exc:
        return _error(start_response, 400, "bad request: %s" % exc, "invalid_request_error")
    n = STATS["requests"]
    model = json.dumps(req.get("model") or "fake-model").encode()
    if not req.get("stream"):
        _sleep_ms(first_delay_ms)
        return _json_response(start_response, "200 OK", _CHAT_JSON % (n, model))
    opts = req.get("stream_options")
    include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
    write = start_response("200 OK", [_SSE, _NO_CACHE])
    write(b"")          # pywsgi sends no head until a write: flush it now
    return _chat_stream(n, model, events, interval_ms, first_delay_ms, include_usage)


def _chat_stream(n, model, events, interval_ms, first_delay_ms, include_usage):
    _sleep_ms(first_delay_ms)
    yield _CHUNK % (n, model, b'{"role":"assistant","content":""}', b"null", time.time_ns())
    for i in range(events):
        if i:
            _sleep_ms(interval_ms)
        delta = json.dumps({"content": stream_piece(i)}).encode()
        yield _CHUNK % (n, model, delta, b"null", time.time_ns())
    yield _CHUNK % (n, model, b"{}", b'"stop"', time.time_ns())
    if include_usage:
        usage = {"prompt_tokens": 12, "completion_tokens": events,
                 "total_tokens": 12 + events}
        yield _USAGE_CHUNK % (n, model, json.dumps(usage).encode(), time.time_ns())
    yield _DONE


# --------------------------------------------------------------------------------------
# Anthropic messages

def messages(environ, start_response):
    try:
        req = _parse_json_request(environ)
        events, interval_ms, first_delay_ms = _stream_params(environ)
    except (ValueError, _BadParam) as exc:
        return _error(start_response, 400, "bad request: %s" % exc, "invalid_request_error")
    n = STATS["requests"]
    model = req.get("model") or "claude-fake"
    msg_id = "msg_fake_%d" % n
    if not req.get("stream"):
        _sleep_ms(first_delay_ms)
        body = {"id": msg_id, "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": _CHAT_CONTENT}],
                "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": 12, "output_tokens": 150}}
        return _json_response(start_response, "200 OK", body)
    write = start_response("200 OK", [_SSE, _NO_CACHE])
    write(b"")
    return _messages_stream(msg_id, model, events, interval_ms, first_delay_ms)


def _anthropic_event(name, data):
    data["orproxy_sent_ns"] = time.time_ns()
    return b"event: %s\ndata: %s\n\n" % (name.encode(), json.dumps(data).encode())


def _messages_stream(msg_id, model, events, interval_ms, first_delay_ms):
    _sleep_ms(first_delay_ms)
    yield _anthropic_event("message_start", {"type": "message_start", "message": {
        "id": msg_id, "type": "message", "role": "assistant", "model": model,
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 1}}})
    yield _anthropic_event("content_block_start", {
        "type": "content_block_start", "index": 0,
        "content_block": {"type": "text", "text": ""}})
    yield _anthropic_event("ping", {"type": "ping"})
    for i in range(events):
        if i:
            _sleep_ms(interval_ms)
        yield _anthropic_event("content_block_delta", {
            "type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": stream_piece(i)}})
    yield _anthropic_event("content_block_stop", {"type": "content_block_stop", "index": 0})
    yield _anthropic_event("message_delta", {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": events}})
    yield _anthropic_event("message_stop", {"type": "message_stop"})


# --------------------------------------------------------------------------------------
# Simple fixed answers

_MODELS_BODY = json.dumps({"object": "list", "data": [
    {"id": "fake/model-a", "object": "model", "created": _CREATED, "owned_by": "fake"},
    {"id": "fake/model-b", "object": "model", "created": _CREATED, "owned_by": "fake"},
    {"id": "claude-fake", "object": "model", "created": _CREATED, "owned_by": "fake"},
]}).encode()

_COMPRESS_PLAIN = json.dumps({"compressed": True, "text": "squeeze me " * 40}).encode()
_GZIP_BODY = gzip.compress(_COMPRESS_PLAIN, mtime=0)


@functools.lru_cache(maxsize=1)
def _br_body():
    import brotli  # imported lazily: only /br needs it
    return brotli.compress(_COMPRESS_PLAIN)


def models(environ, start_response):
    return _json_response(start_response, "200 OK", _MODELS_BODY)


def compressed_gzip(environ, start_response):
    return _json_response(start_response, "200 OK", _GZIP_BODY,
                          [("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")])


def compressed_br(environ, start_response):
    return _json_response(start_response, "200 OK", _br_body(),
                          [("Content-Encoding", "br"), ("Vary", "Accept-Encoding")])


def cookies(environ, start_response):
    return _json_response(start_response, "200 OK", b'{"cookies":2}', [
        ("Set-Cookie", "session=abcdef0123456789; Path=/; HttpOnly"),
        ("Set-Cookie", "theme=dark; Path=/"),
    ])


def headers_hop(environ, start_response):
    return _json_response(start_response, "200 OK", b'{"hop":true}', [
        ("Connection", "close, X-Hop"),
        ("X-Hop", "1"),
        ("Keep-Alive", "timeout=5"),
        ("X-End-To-End", "kept"),
    ])


def status(environ, start_response, code):
    if not 200 <= code <= 599:
        return _error(start_response, 400, "status %d is not supported" % code)
    status_line = "%d %s" % (code, _reason(code))
    if code in (204, 304):
        start_response(status_line, [])
        return []
    body = {"error": {"message": "fake upstream answered %d" % code,
                      "type": "fake_status", "code": code}}
    return _json_response(start_response, status_line, body)


# --------------------------------------------------------------------------------------
# Wire-level endpoints: echo, bytes, sink

def echo(environ, start_response):
    handler = environ["fake.handler"]
    headers = [[name, value] for name, value in handler.raw_headers]
    te = environ.get("HTTP_TRANSFER_ENCODING", "")
    if "chunked" in te.lower():
        framing = "chunked"
    elif environ.get("CONTENT_LENGTH") is not None:
        framing = "length"
    else:
        framing = "none"
    length, digest = _hash_body(environ)
    return _json_response(start_response, "200 OK", {
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
    q = _query(environ)
    n = _int(q, "n", 1024)
    block = max(1, _int(q, "block", 65536))
    headers = [("Content-Type", "application/octet-stream")]
    if q.get("chunked") not in ("1", "true", "yes"):
        headers.append(("Content-Length", str(n)))
    start_response("200 OK", headers)
    return _pattern_blocks(n, block)


def sink(environ, start_response):
    q = _query(environ)
    length, digest = _hash_body(environ, want_hash=q.get("hash") not in ("0", "false", "no"))
    STATS["sink_bytes"] += length
    return _json_response(start_response, "200 OK", {"length": length, "sha256": digest})


# --------------------------------------------------------------------------------------
# Generic SSE with three framings

def sse(environ, start_response):
    q = _query(environ)
    events = _int(q, "events", 5)
    interval_ms = _int(q, "interval_ms", 0)
    first_delay_ms = _int(q, "first_delay_ms", 0)
    pad = _int(q, "pad", 0)
    framing = q.get("framing", "chunked")
    pad_part = (b',"pad":"' + b"x" * pad + b'"') if pad else b""
    template = b'data: {"index":%d,"sent_ns":%d' + pad_part + b"}\n\n"

    def events_iter():
        _sleep_ms(first_delay_ms)
        for i in range(events):
            if i:
                _sleep_ms(interval_ms)
            yield template % (i, time.time_ns())

    if framing == "chunked":
        write = start_response("200 OK", [_SSE, _NO_CACHE])
        write(b"")
        return events_iter()
    if framing == "length":
        # time_ns() has 19 digits until the year 2286, so every event's size is known.
        total = sum(len(template % (i, 10 ** 18)) for i in range(events))
        write = start_response("200 OK", [_SSE, _NO_CACHE, ("Content-Length", str(total))])
        write(b"")
        return events_iter()
    if framing == "close":
        sock = _raw_socket(environ)
        try:
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Cache-Control: no-cache\r\nConnection: close\r\n\r\n")
            for event in events_iter():
                sock.sendall(event)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        return []
    return _error(start_response, 400, "framing must be chunked, length or close")


# --------------------------------------------------------------------------------------
# Misbehaving upstreams: slow, hang, break

def slow(environ, start_response):
    q = _query(environ)
    delay_ms = _int(q, "delay_ms", 1000)
    body_delay_ms = _int(q, "body_delay_ms", 0)
    _sleep_ms(delay_ms)
    body = json.dumps({"slept_ms": delay_ms, "body_delay_ms": body_delay_ms}).encode()
    write = start_response("200 OK", [_JSON, ("Content-Length", str(len(body)))])
    if not body_delay_ms:
        return [body]
    write(b"")
    _sleep_ms(body_delay_ms)
    return [body]


def hang(environ, start_response):
    handler = environ["fake.handler"]
    sock = handler.socket
    STATS["hang_open"] += 1
    STATS["hang_total"] += 1
    closed = False
    try:
        write = start_response("200 OK", [_SSE, _NO_CACHE])
        write(b'data: {"index":0,"sent_ns":%d}\n\n' % time.time_ns())
        # Silence. The client sends nothing more on this connection while it waits, so
        # recv() returning b'' (FIN) or raising (RST) means it has gone. Anything it does
        # send is read and dropped: a peek would keep returning it and hide a later FIN.
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                closed = True
                break
            if not data:
                closed = True
                break
    finally:
        STATS["hang_open"] -= 1
        if closed:
            STATS["hang_closed"] += 1
            STATS["hang_last_closed_ns"] = time.time_ns()
    # No terminating chunk, and no reuse of this connection.
    handler.response_use_chunked = False
    handler.close_connection = True
    return []


def break_(environ, start_response):
    q = _query(environ)
    after = _int(q, "after", 1024)
    delay_ms = _int(q, "delay_ms", 0)
    framing = q.get("framing", "length")
    if framing not in ("length", "chunked"):
        return _error(start_response, 400, "framing must be length or chunked")
    STATS["break_total"] += 1
    sock = _raw_socket(environ)
    data = pattern_bytes(after)
    if framing == "length":
        head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Length: %d\r\n\r\n" % (2 * after))
        body = data
    else:
        head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")
        body = (b"%x\r\n" % after + data + b"\r\n") if after else b""
    try:
        sock.sendall(head + body)
        _sleep_ms(delay_ms)
        if q.get("rst") in ("1", "true", "yes"):
            # Linger 0: the close that pywsgi does next sends RST instead of FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    return []


# --------------------------------------------------------------------------------------
# Control and dispatch

def control(environ, start_response, action):
    if action == "stats":
        return _json_response(start_response, "200 OK", dict(STATS))
    if action == "reset":
        _reset_stats()
        return _json_response(start_response, "200 OK", dict(STATS))
    return _error(start_response, 404, "no control action %r" % action)


# Last path segment -> handler. chat/completions is checked separately.
_BY_LAST_SEGMENT = {
    "messages": messages,
    "models": models,
    "echo": echo,
    "bytes": bytes_,
    "sink": sink,
    "gzip": compressed_gzip,
    "br": compressed_br,
    "sse": sse,
    "slow": slow,
    "hang": hang,
    "break": break_,
    "cookies": cookies,
    "headers-hop": headers_hop,
}


def application(environ, start_response):
    STATS["requests"] += 1
    path = environ.get("PATH_INFO") or "/"
    try:
        if path.startswith("/__control/"):
            return control(environ, start_response, path[len("/__control/"):])
        if path.endswith("/chat/completions"):
            return chat_completions(environ, start_response)
        head, _, last = path.rpartition("/")
        endpoint = _BY_LAST_SEGMENT.get(last)
        if endpoint is not None:
            return endpoint(environ, start_response)
        if head.endswith("/status") and last.isdigit():
            return status(environ, start_response, int(last))
        if "/echo/" in path:
            return echo(environ, start_response)
    except _BadParam as exc:
        return _error(start_response, 400, str(exc))
    return _error(start_response, 404, "fake upstream has no endpoint for %s" % path)


# --------------------------------------------------------------------------------------
# Serving

def make_server(host="127.0.0.1", port=0):
    """A WSGIServer (not started) for the fake upstream on host:port."""
    # SERVER_NAME given so pywsgi skips its getfqdn() lookup at start.
    return WSGIServer((host, port), application, handler_class=FakeHandler,
                      log=None, environ={"SERVER_NAME": host})


def _url(server):
    host, port = server.address[:2]
    if ":" in host:
        host = "[%s]" % host
    return "http://%s:%d" % (host, port)


def serve(host="127.0.0.1", port=0):
    """Start the fake upstream in this (monkey-patched) process; return (server, url)."""
    server = make_server(host, port)
    server.start()
    return server, _url(server)


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible upstream for tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)

    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    gevent.signal_handler(signal.SIGINT, stop.set)
    server, url = serve(args.host, args.port)
    print("fake upstream listening on %s" % url, flush=True)
    stop.wait()
    server.stop(timeout=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
