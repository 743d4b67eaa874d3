"""Scripted upstreams for the in-process wire tests: a gevent StreamServer on 127.0.0.1:0
that runs a script for each connection it accepts.

A script is a function of a Peer. It reads requests (`peer.request()`: each kept with the
raw bytes that carried it, so a test can assert the framing that reached the upstream),
then does whatever the test needs: send bytes, hold them back until the test says go,
dribble events, break the chunking, close mid-body. The pytest process is not
monkey-patched, so these are gevent sockets, and every wait is gevent's.
"""
from __future__ import annotations

from dataclasses import dataclass

from gevent import socket
from gevent.event import Event
from gevent.pool import Pool
from gevent.server import StreamServer

HOLD_TIMEOUT = 10.0  # a held-back script gives up after this: a failing test must not hang


@dataclass
class Request:
    """One request as it reached the upstream."""
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes  # de-chunked
    raw: bytes   # every byte of it, framing included

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name.lower()), None)


class Peer:
    """The upstream's side of one connection, for a script."""

    def __init__(self, sock: socket.socket, requests: list[Request]) -> None:
        self.sock = sock
        self.requests = requests  # the upstream's list: every request on every connection
        self._buffer = bytearray()
        self._raw = bytearray()

    # -- reading -----------------------------------------------------------------------

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the proxy closed the connection")
        self._buffer += data

    def _take(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._fill()
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        self._raw += data
        return data

    def _line(self, end: bytes = b"\r\n") -> bytes:
        while end not in self._buffer:
            self._fill()
        return self._take(self._buffer.index(end) + len(end))

    def request(self) -> Request | None:
        """The next request, read whole (Content-Length or chunked body); None if the proxy
        closed the connection before sending one."""
        self._raw = bytearray()
        try:
            head = self._line(b"\r\n\r\n").decode("latin-1")
        except EOFError:
            if self._buffer:
                raise
            return None
        start, *lines = head[:-4].split("\r\n")
        method, target, _ = start.split(" ", 2)
        headers = [(n, v.strip()) for n, _, v in (line.partition(":") for line in lines)]
        request = Request(method, target, headers, b"", b"")
        if "chunked" in (request.header("transfer-encoding") or "").lower():
            body = bytearray()
            while size := int(self._line().split(b";")[0], 16):
                body += self._take(size)
                self._take(2)
            self._line()  # the blank line after the last chunk (no trailers from the proxy)
            request.body = bytes(body)
        else:
            request.body = self._take(int(request.header("content-length") or 0))
        request.raw = bytes(self._raw)
        self.requests.append(request)
        return request

    def closed_by_proxy(self, timeout: float = HOLD_TIMEOUT) -> bool:
        """Wait until the proxy closes its end; False if it sends bytes instead or the wait
        times out."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except (TimeoutError, OSError):
            return False

    # -- writing -----------------------------------------------------------------------

    def send(self, *parts: bytes) -> None:
        for part in parts:
            self.sock.sendall(part)

    def response(self, body: bytes = b"", status: str = "200 OK",
                 headers: list[tuple[str, str]] | None = None) -> None:
        """A whole response with a Content-Length."""
        self.send(response_head(status, [*(headers or []), ("Content-Length", str(len(body)))]) + body)

    @staticmethod
    def hold(event: Event) -> None:
        """Wait until the test sets `event` (HOLD_TIMEOUT at most)."""
        if not event.wait(HOLD_TIMEOUT):
            raise TimeoutError("the test never released the upstream")

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def response_head(status: str = "200 OK", headers: list[tuple[str, str]] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{n}: {v}" for n, v in headers or []), "", ""]
    return "\r\n".join(lines).encode("latin-1")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class ScriptedUpstream:
    """A StreamServer on 127.0.0.1:0; connection i runs scripts[i] (the last one for any
    later connection). `requests` lists what arrived, `errors` what a script raised."""

    def __init__(self, *scripts) -> None:
        self.scripts = scripts
        self.requests: list[Request] = []
        self.peers: list[Peer] = []
        self.errors: list[BaseException] = []
        self.server = StreamServer(("127.0.0.1", 0), self._serve, spawn=Pool())
        self.server.start()
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        return len(self.peers)

    def _serve(self, sock: socket.socket, address: tuple) -> None:
        peer = Peer(sock, self.requests)
        script = self.scripts[min(len(self.peers), len(self.scripts) - 1)]
        self.peers.append(peer)
        try:
            script(peer)
        except Exception as e:  # noqa: BLE001 - the test reports it
            self.errors.append(e)
        finally:
            peer.close()

    def stop(self) -> None:
        self.server.stop(timeout=0)  # kills the scripts still running: the test is over
        for peer in self.peers:
            peer.close()


def closed_port() -> int:
    """A port nothing listens on (connects are refused)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port

