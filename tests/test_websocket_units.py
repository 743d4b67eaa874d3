"""The pieces of orproxy/websocket/ on their own: header rules, frame decoding, the
message records, the log's budget, and the tunnel's ways of ending (on gevent socket pairs
in this process, so that leftover greenlets can be counted)."""
import gc
import time

import gevent
import greenlet
import pytest
from gevent import socket
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import FrameProtocol

from helpers import join_messages
from orproxy.headers import masked
from orproxy.logclient.budget import Budget
from orproxy.websocket import messagelog, tunnel
from orproxy.websocket.handshake import is_websocket_upgrade, upstream_headers, with_request_id
from orproxy.websocket.messagelog import Decoder, MessageLog, message_record
from orproxy.websocket.tunnel import Tunnel


# -- the handshake ---------------------------------------------------------------------------

def test_upgrade_detection():
    assert is_websocket_upgrade([("Upgrade", "websocket")])
    assert is_websocket_upgrade([("upgrade", "WebSocket")])
    assert is_websocket_upgrade([("Upgrade", "foo, websocket")])
    assert not is_websocket_upgrade([("Upgrade", "h2c")])
    assert not is_websocket_upgrade([("Connection", "Upgrade")])


def test_upstream_headers_keep_the_upgrade_and_drop_the_other_hop_by_hop_headers():
    headers = [("Host", "127.0.0.1:5601"), ("Connection", "keep-alive, Upgrade, X-Hop"),
               ("Upgrade", "websocket"), ("Keep-Alive", "timeout=5"), ("X-Hop", "1"),
               ("Proxy-Authorization", "Basic x"), ("Authorization", "Bearer k"),
               ("Sec-WebSocket-Key", "abc=="), ("Sec-WebSocket-Version", "13"),
               ("Sec-WebSocket-Extensions", "permessage-deflate"), ("Sec-WebSocket-Protocol", "realtime")]
    assert upstream_headers(headers, "api.openai.com") == [
        ("Host", "api.openai.com"), ("Connection", "Upgrade"), ("Upgrade", "websocket"),
        ("Authorization", "Bearer k"), ("Sec-WebSocket-Key", "abc=="), ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Extensions", "permessage-deflate"), ("Sec-WebSocket-Protocol", "realtime")]


def test_upstream_headers_add_host_and_connection_when_missing():
    assert upstream_headers([("Upgrade", "websocket")], "h:1") == [
        ("Host", "h:1"), ("Upgrade", "websocket"), ("Connection", "Upgrade")]


def test_request_id_is_added_as_the_last_header():
    assert with_request_id(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", "u") == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nX-Request-Id: u\r\n\r\n")
    assert with_request_id(b"HTTP/1.1 101 OK\nUpgrade: websocket\n\n", "u") == (
        b"HTTP/1.1 101 OK\nUpgrade: websocket\nX-Request-Id: u\n\n")


def test_subprotocol_api_keys_are_masked():
    assert masked([("Sec-WebSocket-Protocol",
                    "realtime, openai-insecure-api-key.sk-abcdefghijkl9876")], frozenset()) == [
        ("Sec-WebSocket-Protocol", "realtime, openai-insecure-api-key.****9876")]


# -- decoding ----------------------------------------------------------------------------------

def encoder(client, extensions=()):
    """wsproto's side that *sends* what a Decoder for the other side reads."""
    return FrameProtocol(client, list(extensions))


def feed_in_pieces(decoder, data, size):
    pieces = []
    for i in range(0, len(data), size):
        pieces += decoder.feed(data[i:i + size])
    return pieces


@pytest.mark.parametrize("size", [1, 7, 65536])
def test_decoder_of_client_frames_fragments_and_interleaved_control_frames(size):
    client = encoder(True)  # a client masks its frames
    text = "grüße ✓ " * 300
    wire = b"".join([
        client.send_data(text[:101], fin=False),     # a fragmented text message
        client.ping(b"in between"),                  # control frames may interleave
        client.send_data(text[101:], fin=True),
        client.send_data(b"\x00\x01\x02", fin=True),
        client.close(4001, "bye"),
    ])
    decoder = Decoder(False, "")
    assert join_messages(feed_in_pieces(decoder, bytes(wire), size)) == [
        ("ping", b"in between"), ("text", text.encode()), ("binary", b"\x00\x01\x02"),
        ("close", b"4001 bye")]
    assert decoder.counts() == {"messages": 2, "control_frames": 2,
                                "payload_bytes": len(text.encode()) + 3}


def test_decoder_of_upstream_frames_with_permessage_deflate():
    accepted = "permessage-deflate; server_max_window_bits=10; client_no_context_takeover"
    deflate = PerMessageDeflate()
    deflate.finalize(accepted)
    upstream = encoder(False, [deflate])
    messages = ['{"type": "delta", "text": "%s"}' % ("word " * 500), "again " * 400]
    wire = b"".join(bytes(upstream.send_data(m, fin=True)) for m in messages)
    assert len(wire) < sum(map(len, messages)) / 5
    decoder = Decoder(True, accepted + ", x-other-extension")
    assert join_messages(feed_in_pieces(decoder, wire, 100)) == [("text", m.encode()) for m in messages]



def test_decoder_of_client_frames_compressed_without_context_takeover():
    """The client's compressor starts afresh for each message; the decoder's one inflater
    for the session reads them all the same."""
    accepted = "permessage-deflate; client_no_context_takeover"
    deflate = PerMessageDeflate()
    deflate.finalize(accepted)
    client = encoder(True, [deflate])
    messages = ["same words again " * 50] * 3
    wire = b"".join(bytes(client.send_data(m, fin=True)) for m in messages)
    decoder = Decoder(False, accepted)
    assert join_messages(feed_in_pieces(decoder, wire, 37)) == [("text", m.encode()) for m in messages]

def test_decoder_inflates_fragmented_messages_in_bounded_pieces(monkeypatch):
    monkeypatch.setattr(messagelog, "RECORD_MAX", 4096)
    deflate = PerMessageDeflate()
    deflate.finalize("permessage-deflate")
    client = encoder(True, [deflate])
    zeros = b"\x00" * 1_000_000  # inflates about a thousandfold
    wire = b"".join([bytes(client.send_data(zeros[:600_000], fin=False)),
                     bytes(client.ping(b"p")),
                     bytes(client.send_data(zeros[600_000:], fin=True)),
                     bytes(client.send_data("after", fin=True))])
    assert len(wire) < 10_000
    decoder = Decoder(False, "permessage-deflate")
    pieces = feed_in_pieces(decoder, wire, 1000)
    assert max(len(payload) for _, payload, _ in pieces) <= 4096
    assert join_messages(pieces) == [("ping", b"p"), ("binary", zeros), ("text", b"after")]
    assert decoder.counts() == {"messages": 2, "control_frames": 1, "payload_bytes": len(zeros) + 5}


@pytest.mark.parametrize("wire, why", [
    (b"\x82\x85abcd\x00", "a masked frame from the upstream"),
    (b"\x83\x00", "unknown opcode 3"),
    (b"\xc2\x00", "reserved bits set"),          # RSV1 without permessage-deflate
    (b"\x09\x00", "control frame fragmented"),
    (b"\x80\x00", "continuation frame without a message"),
    (b"\x88\x01\x03", "one-byte payload"),
])
def test_decoder_names_each_protocol_error(wire, why):
    decoder = Decoder(True, "")
    assert list(decoder.feed(wire)) == []
    assert why in decoder.failure


def test_decoder_stops_on_a_protocol_error_and_says_why():
    decoder = Decoder(False, "")
    assert list(decoder.feed(b"\x81\x05hello")) == []  # unmasked: not a client's frame
    assert "unmasked" in decoder.failure and "the tunnel goes on" in decoder.failure
    assert "log_incomplete" in decoder.counts()


def test_message_record_format():
    at = 1764265532.5
    assert b"".join(message_record("client", at, "text", b"hi", False)) == (
        b"client 2025-11-27T17:45:32.500000Z text 2\r\nhi\r\n")
    assert b"".join(message_record("upstream", at, "binary", b"\x00", True)) == (
        b"upstream 2025-11-27T17:45:32.500000Z binary 1 more\r\n\x00\r\n")


# -- the message log ---------------------------------------------------------------------------

class FakeStream(object):
    queued = 0
    dead = False

    def __init__(self):
        self.data = b""

    def write(self, block):
        self.data += bytes(block)

    def records(self):
        """(head fields, payload) of each record written, read back as a reader would."""
        records, rest = [], self.data
        while rest:
            head, rest = rest.split(b"\r\n", 1)
            fields = head.split(b" ")
            size = int(fields[3])
            assert rest[size:size + 2] == b"\r\n"
            records.append((fields, rest[:size]))
            rest = rest[size + 2:]
        return records


def test_message_log_writes_records_in_arrival_order():
    budget, stream = Budget(), FakeStream()
    log = MessageLog(stream, budget, "")
    log.tap("client", bytes(encoder(True).send_data("question", fin=True)))
    log.tap("upstream", bytes(encoder(False).send_data("answer", fin=True)))
    log.finish(5)
    assert [(f[0], f[2], f[3], payload) for f, payload in stream.records()] == [
        (b"client", b"text", b"8", b"question"), (b"upstream", b"text", b"6", b"answer")]
    assert budget.used == 0 and log.greenlet.dead


def test_message_log_past_its_budget_stops_logging_but_never_the_tap(monkeypatch):
    monkeypatch.setattr(messagelog, "TAP_BUDGET", 1000)
    budget, stream = Budget(), FakeStream()
    log = MessageLog(stream, budget, "")
    client = encoder(True)
    frames = [bytes(client.send_data(b"x" * 400, fin=True)) for _ in range(4)]
    for frame in frames:  # no switch to the decoder in between: it falls behind
        log.tap("client", frame)
    log.tap("upstream", bytes(encoder(False).send_data("ok", fin=True)))
    log.finish(5)
    records = stream.records()
    assert [f[2] for f, payload in records] == [b"binary", b"binary", b"error", b"text"]
    assert b"fell more than 1000 bytes behind" in records[2][1]
    assert log.decoders["client"].counts()["log_incomplete"]
    assert budget.used == 0


def test_large_payload_pieces_are_split_into_bounded_records(monkeypatch):
    monkeypatch.setattr(messagelog, "RECORD_MAX", 1000)
    budget, stream = Budget(), FakeStream()
    log = MessageLog(stream, budget, "")
    log.tap("upstream", bytes(encoder(False).send_data(b"y" * 2500, fin=True)))
    log.finish(5)
    assert [f[3:] for f, payload in stream.records()] == [
        [b"1000", b"more"], [b"1000", b"more"], [b"500"]]


# -- the tunnel --------------------------------------------------------------------------------

def live_greenlets():
    # type(), not isinstance(): a dead weak proxy among the objects would raise on access
    return sum(1 for o in gc.get_objects() if issubclass(type(o), greenlet.greenlet) and not o.dead)


@pytest.fixture
def pairs():
    """(client side, proxy's client end, proxy's upstream end, upstream side)."""
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    yield a, b, c, d
    for s in (a, b, c, d):
        s.close()


def run_tunnel(tunnel, *args):
    return gevent.spawn(tunnel.run, *args)


def test_bytes_flow_both_ways_in_order_including_buffered_ones(pairs):
    client, proxy_client, proxy_upstream, upstream = pairs
    taps = []
    before = live_greenlets()
    tunnel = Tunnel(proxy_client, proxy_upstream, 10, lambda d, b: taps.append((d, b)))
    running = run_tunnel(tunnel, b"early-", b"hello-")
    client.sendall(b"late")
    got = b""
    while len(got) < 10:
        got += upstream.recv(100)
    assert got == b"early-late"
    assert client.recv(100) == b"hello-"
    upstream.sendall(b"x" * 100000)
    got = b""
    while len(got) < 100000:
        got += client.recv(65536)
    assert got == b"x" * 100000
    client.close()                 # the client closes ...
    assert upstream.recv(10) == b""  # ... the upstream sees it (half-close) ...
    upstream.close()               # ... and closes too
    assert running.get(timeout=5) == "client closed"
    assert tunnel.bytes == {"client": 10, "upstream": 100006}
    assert b"".join(b for d, b in taps if d == "client") == b"early-late"
    gevent.sleep(0)
    assert live_greenlets() == before


def test_a_peer_that_never_closes_after_the_other_did_is_let_go(pairs, monkeypatch):
    monkeypatch.setattr(tunnel, "CLOSE_LINGER", 0.2)
    client, proxy_client, proxy_upstream, upstream = pairs
    before = live_greenlets()
    running = run_tunnel(Tunnel(proxy_client, proxy_upstream, 10))
    upstream.close()
    started = time.monotonic()
    assert running.get(timeout=5) == "upstream closed"
    assert time.monotonic() - started < 1
    gevent.sleep(0)
    assert live_greenlets() == before


def test_an_idle_tunnel_ends_after_its_timeout(pairs):
    client, proxy_client, proxy_upstream, upstream = pairs
    before = live_greenlets()
    tunnel = Tunnel(proxy_client, proxy_upstream, 0.3)
    running = run_tunnel(tunnel)
    for _ in range(4):  # traffic one way keeps the tunnel alive
        gevent.sleep(0.15)
        client.sendall(b".")
    assert not running.ready()
    assert running.get(timeout=5) == "idle timeout"
    gevent.sleep(0)
    assert live_greenlets() == before


def test_a_killed_tunnel_leaves_nothing(pairs):
    client, proxy_client, proxy_upstream, upstream = pairs
    before = live_greenlets()
    running = run_tunnel(Tunnel(proxy_client, proxy_upstream, 10))
    gevent.sleep(0.05)
    running.kill()  # as on a server stop
    gevent.sleep(0)
    assert live_greenlets() == before
