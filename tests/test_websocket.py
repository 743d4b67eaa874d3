"""WebSocket upgrades through a real orproxy (issue 5), under its own server and gunicorn.

The upstream is orproxy/testing/ws_upstream.py (the `websockets` library, a process of its own). The
clients are two independent libraries, `websocket-client` and `websockets`, plus raw
sockets where the exact bytes matter. Every test checks payloads both ways exactly, and
the logged message stream against what was sent. Unit tests of the pieces are in
tests/test_websocket_units.py.
"""
import hashlib
import json
import os
import struct

import pytest
import websocket  # websocket-client
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.sync.client import connect

from ws_helpers import (client_frame, exchange_logged, head_headers, logged, messages, parse_log,
                        raw_handshake, read_frame, request_id_of, ws_url)


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
