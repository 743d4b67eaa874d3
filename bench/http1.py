"""A small HTTP/1.1 client on one keep-alive socket: the benchmark's own transport.

Raw sockets keep the client's cost small next to what it measures, let it stamp every
received block with the wall clock (SSE delay = receive time - the upstream's sent_ns),
and let bulk bodies be counted and dropped instead of held. It speaks only what the
benchmark needs: Content-Length, chunked and close-delimited response bodies.
"""
import socket
import time

RECV_SIZE = 256 * 1024


class ClosedError(ConnectionError):
    """The server closed the connection before the response was complete."""


class Response:
    __slots__ = ("status", "headers", "nbytes", "body", "t_head_ns", "t_end_ns")

    def __init__(self, status, headers):
        self.status = status
        self.headers = headers
        self.nbytes = 0
        self.body = None
        self.t_head_ns = 0
        self.t_end_ns = 0


def build_request(method, path, host, body=b"", headers=(), chunked=False):
    """Serialise a request head (and a small body) once, for sending many times."""
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: %s" % host]
    for name, value in headers:
        lines.append("%s: %s" % (name, value))
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    elif body or method in ("POST", "PUT"):
        lines.append("Content-Length: %d" % len(body))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Connection:
    """One keep-alive connection; reconnects (once per request) when the server closed it."""

    def __init__(self, host, port, timeout=30.0):
        self.host = host
        self.port = port
        self.timeout = timeout
        self.sock = None
        self.buf = b""
        self.t_recv = 0
        self.reconnects = 0
        self._scratch = None

    def connect(self):
        self.close()
        sock = socket.create_connection((self.host, self.port), self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.buf = b""

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None
        self.buf = b""

    # -- sending -------------------------------------------------------------------
    def request(self, data, sink=None, keep_body=False):
        """Send a serialised request and read its response (see read_response)."""
        reused = self.sock is not None
        if not reused:
            self.connect()
        try:
            self.sock.sendall(data)
            return self.read_response(sink, keep_body)
        except (ClosedError, ConnectionResetError, BrokenPipeError):
            # A kept-alive connection the server had already closed: retry once on a new
            # one, as browsers and client libraries do. Anything else is a real error.
            if not reused or self.buf:
                self.close()
                raise
        self.reconnects += 1
        self.connect()
        self.sock.sendall(data)
        return self.read_response(sink, keep_body)

    def send(self, data):
        if self.sock is None:
            self.connect()
        self.sock.sendall(data)

    # -- receiving -----------------------------------------------------------------
    def _recv(self):
        data = self.sock.recv(RECV_SIZE)
        if not data:
            raise ClosedError("connection closed by server")
        self.t_recv = time.time_ns()
        return data

    def _read_line(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 2:]
                return line
            if len(self.buf) > 65536:
                raise ValueError("line too long")
            self.buf += self._recv()

    def _read_exact(self, n, sink):
        """Pass n body bytes to sink (or drop them), buffered bytes first."""
        if self.buf:
            take = self.buf[:n]
            self.buf = self.buf[n:]
            n -= len(take)
            sink(take, self.t_recv)
        if n and isinstance(sink, _Drop):
            # Bulk bodies: recv_into one scratch buffer, nothing allocated per block.
            if self._scratch is None:
                self._scratch = memoryview(bytearray(RECV_SIZE))
            scratch = self._scratch
            while n:
                got = self.sock.recv_into(scratch, min(n, RECV_SIZE))
                if not got:
                    raise ClosedError("connection closed mid-body")
                n -= got
                sink.count += got
            self.t_recv = time.time_ns()
            return
        while n:
            data = self.sock.recv(min(n, RECV_SIZE))
            if not data:
                raise ClosedError("connection closed mid-body")
            self.t_recv = time.time_ns()
            n -= len(data)
            sink(data, self.t_recv)

    def read_response(self, sink=None, keep_body=False):
        """Read one response. sink(data, recv_time_ns) gets body blocks as they arrive;
        keep_body keeps the body in resp.body; otherwise the body is counted and dropped."""
        while b"\r\n\r\n" not in self.buf:
            if len(self.buf) > 65536:
                raise ValueError("response head too long")
            self.buf += self._recv()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        t_head = self.t_recv
        lines = head.split(b"\r\n")
        status = int(lines[0].split(None, 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            key = name.strip().lower().decode("latin-1")
            value = value.strip().decode("latin-1")
            headers[key] = headers[key] + ", " + value if key in headers else value
        resp = Response(status, headers)
        resp.t_head_ns = t_head

        parts = []
        if sink is not None:
            user_sink = sink

            def counting(data, t):
                resp.nbytes += len(data)
                user_sink(data, t)
            target = counting
        elif keep_body:
            def target(data, t):
                resp.nbytes += len(data)
                parts.append(data)
        else:
            target = _Drop()

        te = headers.get("transfer-encoding", "").lower()
        close = "close" in headers.get("connection", "").lower()
        if 100 <= status < 200 or status in (204, 304):
            pass
        elif "chunked" in te:
            self._read_chunked(target)
        elif "content-length" in headers:
            self._read_exact(int(headers["content-length"]), target)
        else:
            self._read_until_close(target)
            close = True
        if isinstance(target, _Drop):
            resp.nbytes = target.count
        if keep_body:
            resp.body = b"".join(parts)
        resp.t_end_ns = self.t_recv
        if close:
            self.close()
        return resp

    def _read_chunked(self, sink):
        while True:
            line = self._read_line()
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while self._read_line():  # trailers, then the empty line
                    pass
                return
            self._read_exact(size, sink)
            if self._read_line():
                raise ValueError("bad chunk framing")

    def _read_until_close(self, sink):
        if self.buf:
            data, self.buf = self.buf, b""
            sink(data, self.t_recv)
        while True:
            data = self.sock.recv(RECV_SIZE)
            if not data:
                return
            self.t_recv = time.time_ns()
            sink(data, self.t_recv)


class _Drop:
    """A sink that only counts; _read_exact recognises it and reads into scratch space."""

    def __init__(self):
        self.count = 0

    def __call__(self, data, t):
        self.count += len(data)
