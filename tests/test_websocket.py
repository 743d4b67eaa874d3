"""WebSocket upgrades through a real orproxy (issue 5), under its own server and gunicorn.

The upstream is orproxy/testing/ws_upstream.py (the `websockets` library, a process of its own). The
clients are two independent libraries, `websocket-client` and `websockets`, plus raw
sockets where the exact bytes matter. Every test checks payloads both ways exactly, and
the logged message stream against what was sent. Unit tests of the pieces are in
tests/test_websocket_units.py.
"""
import asyncio
import base64
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time

import pytest
import websocket  # websocket-client
from websockets.asyncio.client import connect as async_connect
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.sync.client import connect

from servers import SERVERS, build_config, start_proxy
from helpers import ServerProcess, http_json, join_messages, socket_inodes, wait_until



# -- processes -----------------------------------------------------------------------------

class WsUpstream(object):
    def __init__(self, workdir, tls=None):
        argv = [sys.executable, "-m", "orproxy.testing.ws_upstream", "--host", "127.0.0.1",
                "--port", "0"]
        if tls:
            argv += ["--certfile", tls[0], "--keyfile", tls[1]]
        self.process = ServerProcess("ws_upstream", argv, workdir)
        self.url = self.process.start("listening")
        self.port = int(self.url.rsplit(":", 1)[1])

    def stats(self):
        if not self.url.startswith("https:"):
            return http_json("GET", "http://127.0.0.1:%d/__stats" % self.port)[1]
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=10,
                                           context=ssl._create_unverified_context())
        try:
            conn.request("GET", "/__stats")
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def wait_idle(self, timeout=10.0):
        """Wait until the upstream has no open WebSocket connection."""
        return wait_until(lambda: self.stats()["open"] == 0 or None, timeout, 0.05,
                          "the ws upstream to have no open connection (%s)" % self.stats())


@pytest.fixture(scope="session")
def ws_upstream(tmp_path_factory):
    upstream = WsUpstream(tmp_path_factory.mktemp("ws_upstream"))
    yield upstream
    upstream.process.stop(5)


def ws_routes(upstream_url):
    return [
        {"source": "/ws/", "destination": upstream_url + "/", "name": "ws"},
        {"source": "/prefixed/", "destination": upstream_url + "/api/", "name": "ws-prefixed"},
        {"source": "/nolog/", "destination": upstream_url + "/", "name": "ws-nolog",
         "logging": False},
        {"source": "/idle/", "destination": upstream_url + "/", "name": "ws-idle",
         "read_timeout": 1},
        {"source": "/down/", "destination": "http://127.0.0.1:9/", "name": "down"},
    ]


@pytest.fixture(scope="module", params=list(SERVERS))
def ws_proxy(request, tmp_path_factory, ws_upstream, _logserver_session):
    """An orproxy with the routes above, under its own server, then gunicorn (1 worker, so
    that its sockets can be counted in one process)."""
    config = build_config("http://127.0.0.1:9", _logserver_session.url, ws_routes(ws_upstream.url))
    proxy = start_proxy(tmp_path_factory.mktemp("ws_" + request.param), config,
                        gunicorn=SERVERS[request.param] or False, workers=1)
    yield proxy
    proxy.stop(timeout=15)


def ws_url(proxy, path):
    return "ws://127.0.0.1:%d%s" % (proxy.port, path)


# -- the message log -----------------------------------------------------------------------

def parse_log(data):
    """The response log of a WebSocket exchange: (head text, [records]); a record is
    (direction, time, opcode, payload, more). Checks the framing on the way."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, data[:300]
    records = []
    while rest:
        line, sep, rest = rest.partition(b"\r\n")
        assert sep, line
        direction, stamp, opcode, length, *flags = line.decode().split(" ")
        assert direction in ("client", "upstream") and stamp.endswith("Z"), line
        assert flags in ([], ["more"]), line
        size = int(length)
        assert rest[size:size + 2] == b"\r\n", (line, rest[size:size + 10])
        records.append((direction, stamp, opcode, rest[:size], flags == ["more"]))
        rest = rest[size + 2:]
    return head.decode("latin-1"), records


def messages(records, direction):
    """Whole messages sent by ``direction``: (opcode, payload), `more` pieces joined."""
    return join_messages((opcode, payload, more) for who, _, opcode, payload, more in records
                         if who == direction)


def exchange_logged(data):
    parts = data.get("parts", {})
    return "proxy" in data and parts.get("response", {}).get("complete")


def logged(logserver, request_id, timeout=15.0):
    """(request log, response log, metadata) once the exchange is completely logged."""
    meta = logserver.wait_for_metadata(request_id, predicate=exchange_logged, timeout=timeout)
    return (logserver.file(request_id, "request").read_bytes(),
            logserver.file(request_id, "response").read_bytes(), meta)


# -- raw sockets ---------------------------------------------------------------------------

def client_frame(opcode, payload, fin=True, mask=b"\x11\x22\x33\x44"):
    """A masked client frame (RFC 6455 5.2)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    size = len(payload)
    if size < 126:
        head += bytes([0x80 | size])
    elif size < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", size)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", size)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def read_frame(sock, buf):
    """One unmasked server frame from ``sock`` (``buf``: bytes already read); returns
    (opcode, payload, rest of buf)."""
    def need(n):
        nonlocal buf
        while len(buf) < n:
            data = sock.recv(65536)
            assert data, "connection closed while reading a frame"
            buf += data
    need(2)
    opcode, size = buf[0] & 0x0F, buf[1] & 0x7F
    at = 2
    if size == 126:
        need(4)
        size, at = struct.unpack("!H", buf[2:4])[0], 4
    elif size == 127:
        need(10)
        size, at = struct.unpack("!Q", buf[2:10])[0], 10
    need(at + size)
    return opcode, buf[at:at + size], buf[at + size:]


def raw_handshake(port, target, headers=(), after=b"", key=None):
    """Send a handshake (plus ``after`` in the same write); return (socket, head, rest)."""
    key = key or base64.b64encode(os.urandom(16)).decode()
    lines = ["GET %s HTTP/1.1" % target, "Host: 127.0.0.1:%d" % port]
    names = {n.lower() for n, _ in headers}
    for name, value in (("Upgrade", "websocket"), ("Connection", "Upgrade"),
                        ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", "13")):
        if name.lower() not in names:
            lines.append("%s: %s" % (name, value))
    lines += ["%s: %s" % h for h in headers]
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + after)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return sock, head.decode("latin-1"), rest


def head_headers(head):
    return [tuple(line.split(": ", 1)) for line in head.split("\r\n")[1:]]


def request_id_of(head):
    return dict((n.lower(), v) for n, v in head_headers(head))["x-request-id"]


# -- sockets of a process ------------------------------------------------------------------

def server_pid(proxy):
    """The process that serves connections: orproxy itself, or gunicorn's only worker."""
    if not proxy.gunicorn:
        return proxy.pid
    with open("/proc/%d/task/%d/children" % (proxy.pid, proxy.pid)) as f:
        children = f.read().split()
    assert len(children) == 1, children
    return int(children[0])


def tunnel_sockets(pid, proxy_port, upstream_port):
    """The connected TCP sockets of ``pid`` to clients of the proxy or to the upstream."""
    inodes = socket_inodes(pid)
    found = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                if inode in inodes and state != "0A" and (
                        int(local.rsplit(":", 1)[1], 16) == proxy_port
                        or int(remote.rsplit(":", 1)[1], 16) == upstream_port):
                    found += 1
    return found


def wait_no_tunnels(proxy, ws_upstream, timeout=10.0):
    pid = server_pid(proxy)
    wait_until(lambda: tunnel_sockets(pid, proxy.port, ws_upstream.port) == 0, timeout, 0.05,
               "the proxy to close every client and upstream socket (%d open)"
               % tunnel_sockets(pid, proxy.port, ws_upstream.port))


# -- echo, both clients ----------------------------------------------------------------------

def test_echo_with_websocket_client(ws_proxy, logserver):
    ws = websocket.create_connection(ws_url(ws_proxy, "/ws/echo"))
    request_id = ws.getheaders()["x-request-id"]
    text, data = "héllo wörld ✓ " * 10, bytes(range(256)) * 4
    ws.send(text)
    assert ws.recv() == text
    ws.send_binary(data)
    assert ws.recv() == data
    ws.close()

    request, response, meta = logged(logserver, request_id)
    assert request.startswith(b"GET /ws/echo HTTP/1.1\r\n")
    assert b"\r\nX-Proxy-Path: ws://127.0.0.1:%d/ws/echo\r\n" % ws_proxy.port in request
    head, records = parse_log(response)
    assert head.startswith("HTTP/1.1 101 Switching Protocols\r\n")
    expected = [("text", text.encode()), ("binary", data)]
    assert [m for m in messages(records, "client") if m[0] != "close"] == expected
    assert [m for m in messages(records, "upstream") if m[0] != "close"] == expected
    proxy_meta = meta["proxy"]
    assert proxy_meta["status"] == 101 and proxy_meta["error"] is None
    session = proxy_meta["websocket"]
    for direction in ("client", "upstream"):
        assert session[direction]["messages"] == 2
        assert session[direction]["payload_bytes"] == len(text.encode()) + len(data)
        assert session[direction]["bytes"] > session[direction]["payload_bytes"]
    assert session["ended"] in ("client closed", "upstream closed")
    assert session["duration"] > 0


def test_echo_with_websockets_and_server_initiated_messages(ws_proxy, logserver):
    with connect(ws_url(ws_proxy, "/ws/push?n=5"), compression=None) as ws:
        request_id = ws.response.headers["X-Request-Id"]
        assert [ws.recv() for _ in range(5)] == ["push %d" % i for i in range(5)]
        ws.send(b"\x00\xff" * 100)
        assert ws.recv() == b"\x00\xff" * 100
    _, response, meta = logged(logserver, request_id)
    _, records = parse_log(response)
    assert messages(records, "upstream")[:6] == [("text", b"push %d" % i) for i in range(5)] + [
        ("binary", b"\x00\xff" * 100)]
    assert meta["proxy"]["websocket"]["upstream"]["messages"] == 6


def test_a_16_mib_message_both_ways(ws_proxy, logserver):
    data = os.urandom(16 * 1024 * 1024)
    with connect(ws_url(ws_proxy, "/ws/echo"), compression=None, max_size=None) as ws:
        request_id = ws.response.headers["X-Request-Id"]
        ws.send(data)
        assert ws.recv() == data
    _, response, meta = logged(logserver, request_id, timeout=30)
    _, records = parse_log(response)
    digest = hashlib.sha256(data).hexdigest()
    for direction in ("client", "upstream"):
        logged_messages = [m for m in messages(records, direction) if m[0] == "binary"]
        assert [(o, hashlib.sha256(p).hexdigest()) for o, p in logged_messages] == [("binary", digest)]
        assert meta["proxy"]["websocket"][direction]["payload_bytes"] == len(data)


def test_ping_and_pong_both_ways(ws_proxy, logserver):
    ws = websocket.create_connection(ws_url(ws_proxy, "/ws/ping?payload=srv"))
    request_id = ws.getheaders()["x-request-id"]
    assert ws.recv() == "pong srv"  # the upstream pinged, websocket-client answered
    ws.ping(b"cli")
    assert ws.recv_data(control_frame=True) == (websocket.ABNF.OPCODE_PONG, b"cli")
    ws.close()
    _, response, meta = logged(logserver, request_id)
    _, records = parse_log(response)
    assert [(d, o, p) for d, _, o, p, _ in records if o in ("ping", "pong")] == [
        ("upstream", "ping", b"srv"), ("client", "pong", b"srv"),
        ("client", "ping", b"cli"), ("upstream", "pong", b"cli")]
    assert meta["proxy"]["websocket"]["client"]["control_frames"] >= 2


def test_close_code_from_the_client_reaches_the_upstream(ws_proxy, logserver, ws_upstream):
    with connect(ws_url(ws_proxy, "/ws/echo"), compression=None) as ws:
        request_id = ws.response.headers["X-Request-Id"]
        ws.send("x")
        assert ws.recv() == "x"
        ws.close(4001, "client bye")
        assert (ws.protocol.close_rcvd.code, ws.protocol.close_rcvd.reason) == (4001, "client bye")
    _, response, _ = logged(logserver, request_id)
    _, records = parse_log(response)
    assert ("client", "close", b"4001 client bye") in [(d, o, p) for d, _, o, p, _ in records]
    assert [4001, "client bye"] in ws_upstream.stats()["closes"]


def test_close_code_from_the_upstream_reaches_the_client(ws_proxy, logserver):
    ws = websocket.create_connection(ws_url(ws_proxy, "/ws/close?code=4002&reason=done"))
    request_id = ws.getheaders()["x-request-id"]
    ws.send("close please")
    opcode, payload = ws.recv_data(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert payload == struct.pack("!H", 4002) + b"done"
    # websocket-client has answered that close frame itself, so close() would do nothing
    # and leave the socket open
    ws.shutdown()
    _, response, _ = logged(logserver, request_id)
    _, records = parse_log(response)
    assert ("upstream", "close", b"4002 done") in [(d, o, p) for d, _, o, p, _ in records]


@pytest.mark.parametrize("deflate", ["default", "no_context_takeover"])
def test_permessage_deflate_is_negotiated_end_to_end_and_logged_decompressed(ws_proxy, logserver, deflate):
    options = {}
    if deflate == "no_context_takeover":
        options = {"compression": None, "extensions": [ClientPerMessageDeflateFactory(
            server_no_context_takeover=True, client_no_context_takeover=True,
            server_max_window_bits=10, client_max_window_bits=10)]}
    sent = [json.dumps({"type": "response.delta", "i": i, "delta": "token " * 2000}) for i in range(3)]
    sent.append(os.urandom(3000) + b"\x00" * 50000)
    with connect(ws_url(ws_proxy, "/ws/echo"), max_size=None, **options) as ws:
        request_id = ws.response.headers["X-Request-Id"]
        assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
        for message in sent:
            ws.send(message)
            assert ws.recv() == message
    _, response, meta = logged(logserver, request_id)
    head, records = parse_log(response)
    assert "Sec-WebSocket-Extensions: permessage-deflate" in head
    expected = [("text", m.encode()) for m in sent[:3]] + [("binary", sent[3])]
    for direction in ("client", "upstream"):
        assert [m for m in messages(records, direction) if m[0] != "close"] == expected
    wire = meta["proxy"]["websocket"]["client"]
    assert wire["bytes"] < wire["payload_bytes"] / 5  # compressed on the wire


def test_without_permessage_deflate(ws_proxy, logserver):
    with connect(ws_url(ws_proxy, "/ws/echo"), compression=None) as ws:
        request_id = ws.response.headers["X-Request-Id"]
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        ws.send("plain " * 1000)
        assert ws.recv() == "plain " * 1000
    _, response, meta = logged(logserver, request_id)
    _, records = parse_log(response)
    assert messages(records, "upstream")[0] == ("text", b"plain " * 1000)
    assert meta["proxy"]["websocket"]["upstream"]["bytes"] > 6000


# -- the handshake -----------------------------------------------------------------------------

def test_refused_handshake_goes_back_as_the_upstream_sent_it(ws_proxy, logserver):
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(ws_url(ws_proxy, "/ws/refuse"))
    assert refused.value.status_code == 401
    assert json.loads(refused.value.resp_body)["error"]["code"] == "invalid_api_key"
    assert refused.value.resp_headers["www-authenticate"] == 'Bearer realm="ws"'

    sock, head, rest = raw_handshake(ws_proxy.port, "/ws/refuse")
    body = rest
    length = int(dict((n.lower(), v) for n, v in head_headers(head))["content-length"])
    while len(body) < length:
        body += sock.recv(65536)
    assert sock.recv(1) == b""  # then the proxy closes the connection
    sock.close()
    lines = head.split("\r\n")
    assert lines[0] == "HTTP/1.1 401 Unauthorized"
    assert lines[-1].startswith("X-Request-Id: ")  # the one header the proxy adds, last
    assert [n for n, _ in head_headers(head)] == [
        "Content-Type", "Content-Length", "WWW-Authenticate", "X-Request-Id"]
    assert json.loads(body) == {"error": {"message": "bad key", "code": "invalid_api_key"}}

    _, response, meta = logged(logserver, request_id_of(head))
    assert response.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
    assert response.endswith(b"\r\n\r\n" + body)
    assert meta["proxy"]["status"] == 401 and "websocket" not in meta["proxy"]


def test_handshake_headers_follow_the_http_rules_and_keep_the_upgrade(ws_proxy, logserver, ws_upstream):
    key = "sk-test-abcdefghijklmnop1234"
    sock, head, rest = raw_handshake(ws_proxy.port, "/prefixed/headers?model=gpt%2frealtime&x=1", [
        ("Connection", "keep-alive, Upgrade, X-Hop"), ("Keep-Alive", "timeout=5"), ("X-Hop", "1"),
        ("Authorization", "Bearer " + key), ("OpenAI-Beta", "realtime=v1"),
        ("Sec-WebSocket-Protocol", "realtime, openai-insecure-api-key.%s, openai-beta.realtime-v1" % key)])
    assert head.startswith("HTTP/1.1 101 Switching Protocols\r\n")
    response_headers = dict((n.lower(), v) for n, v in head_headers(head))
    assert response_headers["sec-websocket-protocol"] == "realtime"
    _, payload, rest = read_frame(sock, rest)
    seen = json.loads(payload)
    assert seen["target"] == "/api/headers?model=gpt%2frealtime&x=1"
    got = [(n.lower(), v) for n, v in seen["headers"]]
    names = [n for n, _ in got]
    assert ("host", "127.0.0.1:%d" % ws_upstream.port) in got
    assert ("connection", "Upgrade") in got and ("upgrade", "websocket") in got
    assert ("authorization", "Bearer " + key) in got  # forwarded intact
    assert ("openai-beta", "realtime=v1") in got
    assert ("sec-websocket-version", "13") in got and "sec-websocket-key" in names
    assert "keep-alive" not in names and "x-hop" not in names
    sock.sendall(client_frame(0x8, struct.pack("!H", 1000)))
    sock.close()

    request, _, _ = logged(logserver, request_id_of(head))
    assert request.startswith(b"GET /api/headers?model=gpt%2frealtime&x=1 HTTP/1.1\r\n")
    assert b"Authorization: Bearer ****1234\r\n" in request
    assert (b"sec-websocket-protocol: realtime, openai-insecure-api-key.****1234, "
            b"openai-beta.realtime-v1\r\n") in request.lower()  # gunicorn rebuilds the names
    assert key.encode() not in request


def test_frames_sent_with_the_handshake_are_not_lost(ws_proxy):
    """A client may send its first frame in the same packet as the handshake (FACTS.md)."""
    sock, head, rest = raw_handshake(ws_proxy.port, "/ws/echo",
                                     after=client_frame(0x1, b"early") + client_frame(0x2, b"\x01\x02"))
    assert head.startswith("HTTP/1.1 101 ")
    opcode, payload, rest = read_frame(sock, rest)
    assert (opcode, payload) == (0x1, b"early")
    opcode, payload, rest = read_frame(sock, rest)
    assert (opcode, payload) == (0x2, b"\x01\x02")
    sock.close()


def test_proxy_errors_on_an_upgrade(ws_proxy):
    for target, status, code in (("/nowhere/echo", 404, "no_route"),
                                 ("/down/echo", 502, "upstream_unreachable")):
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection(ws_url(ws_proxy, target))
        assert refused.value.status_code == status
        assert json.loads(refused.value.resp_body)["error"]["code"] == code
        assert "x-request-id" in refused.value.resp_headers


def test_route_with_logging_false_tunnels_without_logging(ws_proxy, logserver):
    ws = websocket.create_connection(ws_url(ws_proxy, "/nolog/echo"))
    request_id = ws.getheaders()["x-request-id"]
    ws.send("quiet")
    assert ws.recv() == "quiet"
    ws.close()
    later = websocket.create_connection(ws_url(ws_proxy, "/ws/echo"))
    later_id = later.getheaders()["x-request-id"]
    later.close()
    logged(logserver, later_id)
    assert logserver.files(request_id) == []


def test_openai_sdk_realtime_client_through_the_proxy(ws_proxy, logserver):
    from openai import OpenAI

    client = OpenAI(base_url="http://127.0.0.1:%d/ws/v1" % ws_proxy.port,
                    api_key="sk-test-realtime-key-9876")
    with client.realtime.connect(model="gpt-realtime") as connection:
        created = connection.recv()
        assert created.type == "session.created"
        handshake = created.to_dict()["handshake"]
        assert handshake["target"] == "/ws/v1/realtime?model=gpt-realtime"
        assert dict((n.lower(), v) for n, v in handshake["headers"])["authorization"] == (
            "Bearer sk-test-realtime-key-9876")
        connection.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        assert connection.recv().type == "session.update"  # the upstream echoes
    request_id = None
    for path in sorted(logserver.log_dir.glob("*_request.bin"), key=os.path.getmtime, reverse=True):
        if b"realtime?model=gpt-realtime" in path.read_bytes().split(b"\r\n", 1)[0]:
            request_id = path.name.split("_")[2]
            break
    assert request_id, "the session's request log"
    meta = logserver.wait_for_metadata(request_id, predicate=exchange_logged)
    _, records = parse_log(logserver.file(request_id, "response").read_bytes())
    sent = [json.loads(p) for o, p in messages(records, "client") if o == "text"]
    assert sent[0]["type"] == "session.update"
    assert meta["proxy"]["websocket"]["upstream"]["messages"] == 2


# -- closing and leaks --------------------------------------------------------------------

def test_a_client_that_vanishes_closes_the_upstream(ws_proxy, ws_upstream):
    wait_no_tunnels(ws_proxy, ws_upstream)
    sock, head, rest = raw_handshake(ws_proxy.port, "/ws/echo", after=client_frame(0x1, b"hi"))
    assert read_frame(sock, rest)[:2] == (0x1, b"hi")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # a reset, no close frame
    ws_upstream.wait_idle()
    wait_no_tunnels(ws_proxy, ws_upstream)


def test_an_upstream_that_drops_the_connection_closes_the_client(ws_proxy, ws_upstream, logserver):
    ws = websocket.create_connection(ws_url(ws_proxy, "/ws/drop"), timeout=10)
    request_id = ws.getheaders()["x-request-id"]
    ws.send("bye")
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
        ws.recv()
    ws.close()
    _, _, meta = logged(logserver, request_id)
    assert meta["proxy"]["websocket"]["ended"] in ("upstream closed", "upstream failed")
    wait_no_tunnels(ws_proxy, ws_upstream)


def test_an_idle_session_is_closed_after_read_timeout(ws_proxy, ws_upstream, logserver):
    ws = websocket.create_connection(ws_url(ws_proxy, "/idle/echo"), timeout=10)
    request_id = ws.getheaders()["x-request-id"]
    ws.send("one")
    assert ws.recv() == "one"
    started = time.monotonic()
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
        ws.recv()
    assert 0.9 < time.monotonic() - started < 5
    ws.close()
    _, _, meta = logged(logserver, request_id)
    assert meta["proxy"]["websocket"]["ended"] == "idle timeout"
    assert meta["proxy"]["error"] == "idle_timeout"
    ws_upstream.wait_idle()
    wait_no_tunnels(ws_proxy, ws_upstream)


def test_200_concurrent_sessions_then_nothing_left(ws_proxy, ws_upstream, logserver):
    wait_no_tunnels(ws_proxy, ws_upstream)
    ws_upstream.wait_idle()

    async def session(i, opened):
        async with async_connect(ws_url(ws_proxy, "/ws/echo?s=%d" % i), compression=None,
                                 open_timeout=30, ping_interval=None) as ws:
            opened.append(ws.response.headers["X-Request-Id"])
            while len(opened) < 200:  # every session is open at the same time
                await asyncio.sleep(0.01)
            for n in range(5):
                message = "session %d message %d " % (i, n) * (n + 1)
                await ws.send(message)
                assert await ws.recv() == message
            await ws.send(b"%d" % i)
            assert await ws.recv() == b"%d" % i
        return ws.response.headers["X-Request-Id"]

    async def main():
        opened = []
        return await asyncio.wait_for(asyncio.gather(*(session(i, opened) for i in range(200))), 120)

    ids = asyncio.run(main())
    assert len(set(ids)) == 200
    ws_upstream.wait_idle(timeout=20)
    wait_no_tunnels(ws_proxy, ws_upstream, timeout=20)
    for i in (0, 99, 199):
        _, response, meta = logged(logserver, ids[i], timeout=30)
        _, records = parse_log(response)
        assert messages(records, "client")[-2] == ("binary", b"%d" % i)
        assert meta["proxy"]["websocket"]["client"]["messages"] == 6


def test_a_stopping_proxy_lets_sessions_run_until_shutdown_timeout(make_proxy, ws_upstream, logserver):
    proxy = make_proxy(routes=ws_routes(ws_upstream.url), extra={"server": {"shutdown_timeout": 1}})
    ws = websocket.create_connection(ws_url(proxy, "/ws/echo"), timeout=10)
    request_id = ws.getheaders()["x-request-id"]
    proxy.send_signal(signal.SIGTERM)
    ws.send("still here")  # in flight: served until the timeout
    assert ws.recv() == "still here"
    started = time.monotonic()
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
        ws.recv()
    assert time.monotonic() - started < 5
    assert proxy.process.proc.wait(10) == 0
    ws.close()
    _, _, meta = logged(logserver, request_id)
    assert meta["proxy"]["status"] == 101
    ws_upstream.wait_idle()


# -- wss:// ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_upstream(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make certificates")
    """A ws upstream behind TLS, its certificate signed by a CA made for the test."""
    d = tmp_path_factory.mktemp("tls")

    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=orproxy test CA")
    openssl("req", *ec, "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "srv.pem", "-days", "2", "-extfile", "ext.cnf")
    upstream = WsUpstream(d, tls=(d / "srv.pem", d / "srv.key"))
    upstream.ca = d / "ca.pem"
    yield upstream
    upstream.process.stop(5)


def test_wss_upstream_certificate_is_checked(tls_upstream, make_proxy):
    proxy = make_proxy(routes=[{"source": "/tls/", "destination": "https://127.0.0.1:%d/"
                                % tls_upstream.port, "name": "tls"}])
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(ws_url(proxy, "/tls/echo"))
    assert refused.value.status_code == 502
    assert "certificate" in json.loads(refused.value.resp_body)["error"]["message"].lower()


def test_wss_upstream_with_a_trusted_certificate(tls_upstream, logserver, tmp_path):
    config = build_config("http://127.0.0.1:9", logserver.url, [
        {"source": "/tls/", "destination": "https://127.0.0.1:%d/" % tls_upstream.port, "name": "tls"}])
    (tmp_path / "config.yaml").write_text(json.dumps(config))
    code = ("import sys; from orproxy import cli, connections; "
            "connections.tls_context().load_verify_locations(sys.argv[1]); cli.proxy_main(sys.argv[2:])")
    process = ServerProcess("orproxy-tls", [sys.executable, "-c", code, tls_upstream.ca, "--config",
                                            tmp_path / "config.yaml", "--port", "0"], tmp_path)
    url = process.start("listening")
    try:
        with connect(url.replace("http://", "ws://") + "/tls/echo", max_size=None) as ws:
            ws.send("over tls")
            assert ws.recv() == "over tls"
            ws.send(b"\x01" * 200000)
            assert ws.recv() == b"\x01" * 200000
        vanishing = websocket.create_connection(url.replace("http://", "ws://") + "/tls/echo")
        vanishing.send("then gone")
        assert vanishing.recv() == "then gone"
        vanishing.sock.close()  # no close frame: over TLS the upstream is closed at once
        tls_upstream.wait_idle()
    finally:
        process.stop(10)


def test_orproxy_worker_serves_clients_over_tls(tls_upstream, ws_upstream, make_proxy, logserver):
    """gunicorn's --certfile with orproxy's worker: HTTPS requests and a wss:// session,
    whose client socket is then TLS (no half-close can be passed on), both work."""
    d = tls_upstream.ca.parent
    proxy = make_proxy(routes=ws_routes(ws_upstream.url), gunicorn="orproxy.worker.GeventWorker",
                       workers=1, args=("--certfile", str(d / "srv.pem"), "--keyfile", str(d / "srv.key")))
    context = ssl.create_default_context(cafile=str(tls_upstream.ca))
    conn = http.client.HTTPSConnection("127.0.0.1", proxy.port, timeout=10, context=context)
    try:
        conn.request("GET", "/ws/")  # the ws upstream answers plain HTTP with its 426
        response = conn.getresponse()
        assert response.status == 426 and b"WebSocket" in response.read()
        assert response.getheader("X-Request-Id")
    finally:
        conn.close()
    with connect("wss://127.0.0.1:%d/ws/echo" % proxy.port, ssl=context, max_size=None) as ws:
        ws.send("over tls to the proxy")
        assert ws.recv() == "over tls to the proxy"
        ws.send(b"\x02" * 300000)
        assert ws.recv() == b"\x02" * 300000
    ws_upstream.wait_idle()
