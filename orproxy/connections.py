"""Client connections to other servers: keep-alive sockets, pooled per origin, and opening them.

Used by the transport (upstreams) and the log client (the logging server), and by the
WebSocket tunnel to open its upstream connection. Connects to IP literals without the
resolver's thread pool; failures are raised as requests' exceptions (ConnectTimeout,
ConnectionError, SSLError), the family the proxy maps to its error codes (errors.py).
"""
from __future__ import annotations

import functools
import ipaddress
from collections import deque

import requests
from gevent import monkey, socket, ssl

# The real poll: with a zero timeout it never blocks, so the event loop is safe.
_poll = monkey.get_original("select", "poll")
_POLLIN = 0x001 | 0x008 | 0x010  # POLLIN | POLLERR | POLLHUP

Key = tuple[str, str, int]  # (scheme, host, port)


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The process's one trust for https and wss upstreams: certifi's CA bundle (as
    requests), hostnames checked. gevent's SSLContext itself: the stdlib's
    create_default_context() gives a blocking one when the process is not monkey-patched."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(requests.certs.where())
    return context


class Connection:
    """One keep-alive socket to one origin; `pool` is the pool it is leased from while in use."""

    __slots__ = ("sock", "key", "pool")

    def __init__(self, sock: socket.socket, key: Key) -> None:
        self.sock = sock
        self.key = key
        self.pool: ConnectionPool | None = None

    def is_reusable(self) -> bool:
        """An idle connection is usable only if the peer has neither closed it nor sent bytes.

        A zero-timeout poll is one cheap syscall and works for TLS sockets too.
        """
        poller = _poll()
        poller.register(self.sock.fileno(), _POLLIN)
        return not poller.poll(0)

    def close(self) -> None:
        if self.pool is not None:  # closed while leased: no longer in use
            self.pool.in_use -= 1
            self.pool = None
        try:
            self.sock.close()
        except OSError:
            pass


class ConnectionPool:
    """Idle connections per origin; never blocks: with none idle, a new one is opened.

    A pool smaller than peak concurrency makes streams wait for each other or reconnect for
    every request (FACTS.md, "Connection pools"), so the pool is as large as concurrency
    requires, and keeps at most `max_idle` idle connections per origin.
    """

    def __init__(self, max_idle: int = 256) -> None:
        self.max_idle = max_idle
        self.idle: dict[Key, deque[Connection]] = {}
        self.in_use = 0  # connections leased out by get(), not yet put back or closed
        self.tls = tls_context()

    def get(self, key: Key, connect_timeout: float, fresh: bool = False) -> tuple[Connection, bool]:
        """A connection to `key` and whether it was reused from the pool (`fresh`: a new one:
        after a stale pooled connection, the next pooled one may be stale too)."""
        idle = self.idle.get(key) if not fresh else None
        while idle:
            conn = idle.pop()
            if conn.is_reusable():
                return self._lease(conn), True
            conn.close()
        return self._lease(self._connect(key, connect_timeout)), False

    def _lease(self, conn: Connection) -> Connection:
        conn.pool = self
        self.in_use += 1
        return conn

    def _connect(self, key: Key, timeout: float) -> Connection:
        return Connection(open_connection(*key, timeout, self.tls), key)

    def put(self, conn: Connection) -> None:
        if conn.pool is self:
            self.in_use -= 1
            conn.pool = None
        idle = self.idle.setdefault(conn.key, deque())
        if len(idle) < self.max_idle:
            idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        for idle in self.idle.values():
            while idle:
                idle.pop().close()


def open_connection(scheme: str, host: str, port: int, timeout: float,
                    tls: ssl.SSLContext) -> socket.socket:
    """A new TCP connection (TCP_NODELAY), wrapped in TLS for https with `tls`;
    failures raised as requests' ConnectTimeout, ConnectionError or SSLError."""
    try:
        if _is_ip_literal(host):  # skip the resolver's thread pool round trip
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect((host, port))
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError as e:
        raise requests.exceptions.ConnectTimeout(f"connect to {host}:{port} timed out") from e
    except OSError as e:
        raise requests.exceptions.ConnectionError(f"cannot connect to {host}:{port}: {e}") from e
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if scheme == "https":
        try:
            sock = tls.wrap_socket(sock, server_hostname=host)
        except (OSError, ssl.SSLError) as e:
            sock.close()
            raise requests.exceptions.SSLError(f"TLS with {host}:{port} failed: {e}") from e
    return sock


@functools.lru_cache(maxsize=256)
def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False
