"""What the WebSocket tests share (tests/test_websocket*.py, tests/test_har.py): the ws upstream
process, the routes to it, the logged message stream, raw frames and the sockets of a process."""
import base64
import http.client
import json
import os
import socket
import ssl
import struct
import sys


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
