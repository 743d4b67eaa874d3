"""WebSocket sessions through a real orproxy (issue 5) as they end: clients that vanish,
upstreams that drop, idle timeouts, 200 sessions at once with nothing left after, a
stopping proxy; and wss:// upstreams and a TLS proxy. The handshake and echo tests are in
tests/test_websocket.py; the fixtures in tests/conftest.py and tests/ws_helpers.py."""
import asyncio
import http.client
import json
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
from websockets.sync.client import connect

from servers import build_config
from helpers import ServerProcess
from ws_helpers import (WsUpstream, client_frame, logged, messages, parse_log, raw_handshake, read_frame,
                        wait_no_tunnels, ws_routes, ws_url)


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
