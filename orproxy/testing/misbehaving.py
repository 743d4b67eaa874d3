"""The fake upstream's transport-abuse endpoints: SSE in three framings, slow and silent
upstreams, and bodies that break off, with the counters tests read to see what the proxy
did to the upstream connection."""
import json
import socket
import struct
import time

from orproxy.testing.answers import (JSON, NO_CACHE, SSE, STATS, error, flag, int_param,
                                     query, raw_socket, sleep_ms)
from orproxy.testing.pattern import pattern_bytes

__all__ = ["sse", "slow", "hang", "break_"]


def sse(environ, start_response):
    """GET .../sse: generic SSE, each event's JSON with its index and ``sent_ns``
    [events, interval_ms, first_delay_ms, framing=chunked|length|close, pad=0]."""
    q = query(environ)
    events = int_param(q, "events", 5)
    interval_ms = int_param(q, "interval_ms", 0)
    first_delay_ms = int_param(q, "first_delay_ms", 0)
    pad = int_param(q, "pad", 0)
    framing = q.get("framing", "chunked")
    pad_part = (b',"pad":"' + b"x" * pad + b'"') if pad else b""
    template = b'data: {"index":%d,"sent_ns":%d' + pad_part + b"}\n\n"

    def events_iter():
        sleep_ms(first_delay_ms)
        for i in range(events):
            if i:
                sleep_ms(interval_ms)
            yield template % (i, time.time_ns())

    if framing == "chunked":
        write = start_response("200 OK", [SSE, NO_CACHE])
        write(b"")
        return events_iter()
    if framing == "length":
        # time_ns() has 19 digits until the year 2286, so every event's size is known.
        total = sum(len(template % (i, 10 ** 18)) for i in range(events))
        write = start_response("200 OK", [SSE, NO_CACHE, ("Content-Length", str(total))])
        write(b"")
        return events_iter()
    if framing == "close":
        sock = raw_socket(environ)
        try:
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Cache-Control: no-cache\r\nConnection: close\r\n\r\n")
            for event in events_iter():
                sock.sendall(event)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        return []
    return error(start_response, 400, "framing must be chunked, length or close")


def slow(environ, start_response):
    """GET .../slow?delay_ms=N: waits before the head [body_delay_ms: after the head]."""
    q = query(environ)
    delay_ms = int_param(q, "delay_ms", 1000)
    body_delay_ms = int_param(q, "body_delay_ms", 0)
    sleep_ms(delay_ms)
    body = json.dumps({"slept_ms": delay_ms, "body_delay_ms": body_delay_ms}).encode()
    write = start_response("200 OK", [JSON, ("Content-Length", str(len(body)))])
    if not body_delay_ms:
        return [body]
    write(b"")
    sleep_ms(body_delay_ms)
    return [body]


def hang(environ, start_response):
    """GET .../hang: the head and one event, then silence until the client leaves
    (counted in hang_open, hang_closed, hang_last_closed_ns)."""
    handler = environ["fake.handler"]
    sock = handler.socket
    STATS["hang_open"] += 1
    STATS["hang_total"] += 1
    closed = False
    try:
        write = start_response("200 OK", [SSE, NO_CACHE])
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
    """GET .../break?after=N: announces more than it sends, then drops the connection
    [framing=length|chunked, delay_ms=0, rst=1 for a reset]."""
    q = query(environ)
    after = int_param(q, "after", 1024)
    delay_ms = int_param(q, "delay_ms", 0)
    framing = q.get("framing", "length")
    if framing not in ("length", "chunked"):
        return error(start_response, 400, "framing must be length or chunked")
    STATS["break_total"] += 1
    sock = raw_socket(environ)
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
        sleep_ms(delay_ms)
        if flag(q, "rst"):
            # Linger 0: the close that pywsgi does next sends RST instead of FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    return []
