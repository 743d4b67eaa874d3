"""A fake OpenAI-compatible upstream: the server, its request handler and its routes.

A gevent pywsgi server whose endpoints match on the path *suffix*, so they answer under
any route prefix (``/api/v1/chat/completions``, ``/v1/chat/completions``, ...). It can
answer like OpenAI and Anthropic (JSON and SSE), echo exactly what arrived on the wire,
stream large or broken bodies, hang silently and notice when its client goes away.

Run it as ``python -m orproxy.testing.fake_upstream [--host H] [--port P] [--backlog N]``:
it prints one line ``fake upstream listening on http://H:PORT`` once listening and exits 0
on SIGTERM/SIGINT. Or import it and call ``serve()`` inside an already monkey-patched
process.

Endpoints (``...`` is any prefix; query parameters in brackets):

  POST .../chat/completions   OpenAI chat completion; ``"stream": true`` gives SSE
                              [events=5, interval_ms=0, first_delay_ms=0]   (llm_api)
  POST .../messages           Anthropic Messages API, JSON or SSE (same parameters)
  POST .../agent/...          chat completions, messages and responses answering what the
                              request asked, to hold conversations   (agent_api)
  GET  .../models             a small OpenAI models list
  ANY  .../echo, .../echo/... JSON: method, raw target, raw headers, framing, body sha256
  GET  .../bytes?n=N          N pattern bytes [chunked=1, block=65536]   (http_endpoints)
  PUT/POST .../sink           discards the body, answers {length, sha256} [hash=0 skips]
  GET  .../gzip, .../br       a JSON body with Content-Encoding gzip / br
  ANY  .../status/CODE        that status with an OpenAI-style error body
  GET  .../cookies            two Set-Cookie headers
  GET  .../headers-hop        hop-by-hop headers (Connection, Keep-Alive, X-Hop)
  GET  .../sse                generic SSE [events, interval_ms, first_delay_ms,
                              framing=chunked|length|close, pad=0]   (misbehaving)
  GET  .../slow?delay_ms=N    waits before the head [body_delay_ms: after the head]
  GET  .../hang               head and one event, then silence until the client leaves
  GET  .../break?after=N      announces more than it sends, then drops the connection
                              [framing=length|chunked, delay_ms=0, rst=1 for a reset]
  GET  /__control/stats       counters (exact path); /__control/reset zeroes them
  GET  /__control/received    requests sent with ``X-Fake-Record: <tag>`` [tag]   (recorder)

Every streamed event's JSON carries the wall-clock ``time.time_ns()`` at which it was
written (``orproxy_sent_ns`` for the LLM shapes, ``sent_ns`` for ``/sse``), so a client
can measure what a proxy adds per event. It shares no code with the proxy.
"""
if __name__ == "__main__":  # gevent patches before anything imports socket or ssl
    from gevent import monkey
    monkey.patch_all()

import signal
import socket
import sys

import gevent
import gevent.event
from gevent.pywsgi import WSGIHandler, WSGIServer

from orproxy.testing import agent_api, http_endpoints, llm_api, misbehaving, recorder
from orproxy.testing.answers import STATS, BadParam, error, json_response, reset_stats

__all__ = ["serve", "make_server", "application", "STATS"]

MAX_LINE = 65536


# --------------------------------------------------------------------------------------
# The handler: TCP_NODELAY, and the raw request line and header lines kept for /echo.

class WireHead:
    """The request's header lines in wire order with the names as sent, and what pywsgi
    reads of a parsed message. Its own parser (the email package) would cost a third of
    the fake upstream's CPU per request, which the benchmark's direct column would show.
    """

    def __init__(self, pairs, status=""):
        self.pairs = pairs      # [(name as sent, value)]
        self.status = status    # non-empty: pywsgi answers 400 with it

    @classmethod
    def read(cls, rfile):
        pairs = []
        while True:
            line = rfile.readline(MAX_LINE + 1)
            if line in (b"\r\n", b"\n", b""):
                return cls(pairs)
            name, colon, value = line.decode("latin-1").partition(":")
            if not colon or len(line) > MAX_LINE:
                return cls(pairs, "bad header line %r" % line[:100])
            pairs.append((name, value.strip(" \t\r\n")))

    def get(self, name, default=None):
        name = name.lower()
        return next((v for k, v in self.pairs if k.lower() == name), default)

    getheader = get

    def __delitem__(self, name):
        # Rebinds the list, so the handler's reference to the wire form stays whole.
        self.pairs = [(k, v) for k, v in self.pairs if k.lower() != name.lower()]

    @property
    def typeheader(self):
        return self.get("content-type")

    @property
    def headers(self):
        return ["%s: %s\r\n" % pair for pair in self.pairs]


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
        msg = WireHead.read(fp)
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
        head = b"".join([b"HTTP/1.1 %s\r\n" % self.status,
                         *(b"%s: %s\r\n" % pair for pair in self.response_headers), b"\r\n"])
        if data and self.response_use_chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        self._sendall(head + data)


# --------------------------------------------------------------------------------------
# Control and dispatch

def control(environ, start_response, action):
    if action == "stats":
        return json_response(start_response, "200 OK", dict(STATS))
    if action == "received":
        return recorder.received(environ, start_response)
    if action == "reset":
        reset_stats()
        recorder.forget()
        return json_response(start_response, "200 OK", dict(STATS))
    return error(start_response, 404, "no control action %r" % action)


# Last path segment -> handler. chat/completions is checked separately.
_BY_LAST_SEGMENT = {
    "messages": llm_api.messages,
    "models": llm_api.models,
    "echo": http_endpoints.echo,
    "bytes": http_endpoints.bytes_,
    "sink": http_endpoints.sink,
    "gzip": http_endpoints.compressed_gzip,
    "br": http_endpoints.compressed_br,
    "cookies": http_endpoints.cookies,
    "headers-hop": http_endpoints.headers_hop,
    "sse": misbehaving.sse,
    "slow": misbehaving.slow,
    "hang": misbehaving.hang,
    "break": misbehaving.break_,
}


def application(environ, start_response):
    path = environ.get("PATH_INFO") or "/"
    try:
        if path.startswith("/__control/"):  # not counted: "requests" are what the proxy sent
            return control(environ, start_response, path[len("/__control/"):])
        STATS["requests"] += 1
        tag = environ.get("HTTP_X_FAKE_RECORD")
        if tag:
            recorder.record(environ, tag)
        if "/agent/" in path:
            return agent_api.application(environ, start_response)
        if path.endswith("/chat/completions"):
            return llm_api.chat_completions(environ, start_response)
        head, _, last = path.rpartition("/")
        endpoint = _BY_LAST_SEGMENT.get(last)
        if endpoint is not None:
            return endpoint(environ, start_response)
        if head.endswith("/status") and last.isdigit():
            return http_endpoints.status(environ, start_response, int(last))
        if "/echo/" in path:
            return http_endpoints.echo(environ, start_response)
    except BadParam as exc:
        return error(start_response, 400, str(exc))
    return error(start_response, 404, "fake upstream has no endpoint for %s" % path)


# --------------------------------------------------------------------------------------
# Serving

def make_server(host="127.0.0.1", port=0, backlog=None):
    """A WSGIServer (not started) for the fake upstream on host:port; ``backlog`` is the
    listen queue (None: gevent's default of 128)."""
    # SERVER_NAME given so pywsgi skips its getfqdn() lookup at start.
    return WSGIServer((host, port), application, backlog=backlog, handler_class=FakeHandler,
                      log=None, environ={"SERVER_NAME": host})


def _url(server):
    host, port = server.address[:2]
    if ":" in host:
        host = "[%s]" % host
    return "http://%s:%d" % (host, port)


def serve(host="127.0.0.1", port=0, backlog=None):
    """Start the fake upstream in this (monkey-patched) process; return (server, url)."""
    server = make_server(host, port, backlog)
    server.start()
    return server, _url(server)


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible upstream for tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--backlog", type=int, help="listen queue (default gevent's, 128)")
    args = parser.parse_args(argv)

    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    gevent.signal_handler(signal.SIGINT, stop.set)
    server, url = serve(args.host, args.port, args.backlog)
    print("fake upstream listening on %s" % url, flush=True)
    stop.wait()
    server.stop(timeout=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
