"""The in-process wire harness: ProxyApp and the logging server's app on 127.0.0.1:0 under
orproxy's own server, a raw client, and the exchange's log read back from the log dir.

Everything runs in the pytest process, which is not monkey-patched: every socket is a
gevent socket and every wait gevent's (a time.sleep here would stop every server). The
client writes requests as h11 frames them (or byte for byte with `send`) and reads the
answer with h11, so that no check relies on the proxy's own parser.
"""
from __future__ import annotations

import gc
import io
from dataclasses import dataclass, field

import gevent
import h11
from gevent import socket

from orproxy.config import parse_config
from orproxy.hosting.server import GracefulWSGIServer
from orproxy.logserver.app import LogServerApp
from orproxy.proxy import ProxyApp
from scripted_upstream import ScriptedUpstream

TIMEOUT = 10.0  # a generous bound on any one wait: the tests assert properties, not speed


# By type(): isinstance() on a weakref proxy whose object is gone raises ReferenceError.

def live_greenlets():
    """Greenlets spawned (by the servers, the proxy, the scripts) that have not ended."""
    return [o for o in gc.get_objects() if issubclass(type(o), gevent.Greenlet) and not o.dead]


def open_sockets():
    return [o for o in gc.get_objects() if issubclass(type(o), socket.socket) and o.fileno() != -1]


class Served:
    """An app (a HostedApp) under GracefulWSGIServer on 127.0.0.1:0; what the server logs
    as errors (an app's tracebacks) is kept in `errors`."""

    def __init__(self, app) -> None:
        self.app = app
        self.errors = io.StringIO()
        self.server = GracefulWSGIServer(("127.0.0.1", 0), app, handler_class=app.handler_class,
                                         log=None, error_log=self.errors)
        self.server.start()
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop_gracefully(2)


class LogApp:
    """The logging server's app served in this process, with its log dir read back."""

    def __init__(self, log_dir) -> None:
        self.app = LogServerApp(str(log_dir))
        self.served = Served(self.app)
        self.url = self.served.url

    def metadata(self, exchange_id: str, ready=None, timeout: float = TIMEOUT) -> dict:
        """The exchange's metadata document once `ready(document)` (default: the proxy's
        metadata is in and every part it names is over)."""
        ready = ready or (lambda d: "proxy" in d and all(
            "completed_at" in part for part in d.get("parts", {}).values()))
        document = None
        with gevent.Timeout(timeout, AssertionError(f"metadata of {exchange_id} not ready: {document}")):
            while True:
                document = self.app.log_dir.read_metadata(exchange_id)
                if document is not None and ready(document):
                    return document
                gevent.sleep(0.01)

    def part(self, exchange_id: str, kind: str) -> bytes:
        """The bytes of a logged part (request or response), once the exchange is logged."""
        document = self.metadata(exchange_id, lambda d: "proxy" in d and "completed_at" in d["parts"].get(kind, {}))
        with open(self.app.log_dir.file_path(document["parts"][kind]["file"]), "rb") as f:
            return f.read()

    def close(self) -> None:
        self.served.stop()
        self.app.close()


class InProcessProxy:
    """ProxyApp on its own server, logging to `log_url`; `routes` as in config.yaml."""

    def __init__(self, routes: list[dict], log_url: str, spool_dir: str,
                 redact: list[str] | None = None) -> None:
        logging = {"console": False, "server_url": log_url, "spool_dir": spool_dir}
        if redact is not None:
            logging["redact_headers"] = redact
        self.app = ProxyApp(parse_config({"routes": routes, "logging": logging}))
        self.served = Served(self.app)
        self.port = self.served.port

    def close(self) -> None:
        self.served.stop()
        self.app.drain(2)  # what is queued reaches the logging server
        self.app.close()


@dataclass
class Answer:
    """A response as h11 read it; `complete` is False when the connection ended before a
    clean end of the message (the proxy cut it)."""
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    complete: bool = False
    interim: list[int] = field(default_factory=list)
    error: str = ""

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name.lower()), None)

    @property
    def request_id(self) -> str:
        return self.header("x-request-id") or ""


class RawClient:
    """One client connection on a gevent socket; requests framed by h11, or sent raw."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.conn = h11.Connection(h11.CLIENT)

    def request(self, method: str, target: str, headers: list[tuple[str, str]] = (), body=b"") -> None:
        """Send a request: `body` bytes (with their Content-Length unless `headers` say
        chunked), or a list of blocks sent as one chunk each. Blocks may be callables:
        called in between (e.g. to wait)."""
        headers = [("Host", "proxy.test"), *headers]
        blocks = body if isinstance(body, list) else [body] if body else []
        names = {n.lower() for n, _ in headers}
        if "transfer-encoding" not in names and "content-length" not in names:
            headers.append(("Content-Length", str(sum(len(b) for b in blocks if not callable(b)))))
        self.send(self.conn.send(h11.Request(method=method, target=target, headers=headers)))
        for block in blocks:
            if callable(block):
                block()
            else:
                self.send(self.conn.send(h11.Data(data=block)))
        self.send(self.conn.send(h11.EndOfMessage()))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def event(self, timeout: float = TIMEOUT):
        """The next h11 event; socket.timeout if none arrives within `timeout`."""
        self.sock.settimeout(timeout)
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.conn.receive_data(self.sock.recv(65536))

    def head(self, timeout: float = TIMEOUT) -> Answer:
        """Read up to the final response head (interim 1xx noted)."""
        answer = Answer()
        while True:
            event = self.event(timeout)
            if isinstance(event, h11.InformationalResponse):
                answer.interim.append(event.status_code)
                continue
            assert isinstance(event, h11.Response), event
            answer.status = event.status_code
            answer.headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers.raw_items()]
            return answer

    def body(self, answer: Answer, timeout: float = TIMEOUT) -> Answer:
        """Read the rest of the response into `answer`: its body and how it ended."""
        data = bytearray()
        try:
            while True:
                event = self.event(timeout)
                if isinstance(event, h11.Data):
                    data += event.data
                elif isinstance(event, h11.EndOfMessage):
                    answer.complete = True
                    break
                else:
                    answer.error = repr(event)
                    break
        except (h11.RemoteProtocolError, ConnectionError) as e:
            answer.error = str(e)
        answer.body = bytes(data)
        return answer

    def data(self, timeout: float = TIMEOUT) -> bytes:
        """The next body bytes that arrive (the response head already read)."""
        event = self.event(timeout)
        assert isinstance(event, h11.Data), event
        return event.data

    def response(self, timeout: float = TIMEOUT) -> Answer:
        return self.body(self.head(timeout), timeout)

    def next_cycle(self) -> None:
        """Ready for the next request on this connection."""
        self.conn.start_next_cycle()

    def close(self) -> None:
        self.sock.close()


class Wire:
    """One test's servers and clients, all stopped and closed at teardown."""

    def __init__(self, log_dir):
        self.log = LogApp(log_dir)
        self.spool_dir = str(log_dir) + "-spool"
        self.opened = []
        self.served = [self.log.served]
        self.upstreams = []

    def _keep(self, thing, close):
        self.opened.append(close)
        return thing

    def upstream(self, *scripts):
        upstream = ScriptedUpstream(*scripts)
        self.upstreams.append(upstream)
        return self._keep(upstream, upstream.stop)

    def proxy(self, upstream_url, **route):
        """A proxy with one route, /up/ -> the upstream (path kept), and `route`'s options."""
        proxy = InProcessProxy([{"source": "/up/", "destination": upstream_url + "/", "name": "up", **route}],
                               self.log.url, self.spool_dir)
        self.served.append(proxy.served)
        return self._keep(proxy, proxy.close)

    def client(self, proxy):
        client = RawClient(proxy.port)
        return self._keep(client, client.close)

    def close(self) -> str:
        """Stop and close everything; what went wrong unseen, which no test expects: the
        servers' logged errors (the apps' tracebacks) and the scripts' exceptions."""
        for close in reversed(self.opened):  # clients first, the upstreams last
            close()
        self.log.close()
        return "".join([*(served.errors.getvalue() for served in self.served),
                        *(f"upstream script: {e!r}\n" for u in self.upstreams for e in u.errors)])
