"""Unit tests of the HAR export's pure parts (no sockets): the WebSocket message log read
back (llm/wsmessages.py) and entries built from logged messages (web/har_entry.py),
each entry checked against the HAR 1.2 schema of tests/fixtures/har."""
import base64
import uuid
from datetime import datetime, timezone

from har_helpers import check_har
from orproxy.logserver.llm.httpfile import parse_message
from orproxy.logserver.llm.wsmessages import read_messages
from orproxy.logserver.web.har import document
from orproxy.logserver.web.har_entry import har_entry
from orproxy import jsoncodec

T0 = 1_796_000_000.0


def record(direction, opcode, payload, more=False, stamp="2026-11-30T12:00:00.250000Z"):
    return b"%s %s %s %d%s\r\n%s\r\n" % (direction.encode(), stamp.encode(), opcode.encode(), len(payload),
                                         b" more" if more else b"", payload)


def test_message_pieces_are_joined_around_control_frames():
    log = read_messages(record("client", "text", b"hel", more=True) + record("upstream", "ping", b"p")
                        + record("client", "text", b"lo") + record("upstream", "binary", b"\x00\xff")
                        + record("client", "close", b"1000 bye"))
    assert [(m.direction, m.opcode, m.payload) for m in log.messages] == [
        ("upstream", "ping", b"p"), ("client", "text", b"hello"), ("upstream", "binary", b"\x00\xff"),
        ("client", "close", b"1000 bye")]
    assert log.messages[0].time == datetime(2026, 11, 30, 12, 0, 0, 250000, tzinfo=timezone.utc).timestamp()
    assert not log.truncated and log.error is None


def test_a_log_cut_short_or_malformed_stops_the_reading():
    whole = record("client", "text", b"one") + record("upstream", "text", b"two")
    cut = read_messages(whole[:-3])
    assert [m.payload for m in cut.messages] == [b"one"] and cut.truncated
    unfinished = read_messages(record("client", "binary", b"ab", more=True))
    assert unfinished.messages == [] and unfinished.truncated
    bad = read_messages(record("client", "text", b"ok") + b"nonsense here\r\n")
    assert [m.payload for m in bad.messages] == [b"ok"] and "not a message record" in bad.error


def _document(exchange_id, proxy=None, response=True):
    parts = {"request": {"file": "r.bin", "received_at": T0 + 0.001, "complete": True, "completed_at": T0 + 0.002}}
    if response:
        parts["response"] = {"file": "s.bin", "received_at": T0 + 0.1, "complete": proxy is not None}
    document = {"id": exchange_id, "timestamp": "2026-11-30_12-00-00.000", "parts": parts}
    if proxy is not None:
        document["proxy"] = proxy
    return document


def _row(exchange_id, state, **extra):
    return dict({"id": exchange_id, "state": state, "started_at": T0, "method": "POST", "path": "/v1/x"}, **extra)


def _entry(request, response, proxy=None, state="complete", limit=1024):
    exchange_id = str(uuid.uuid4())
    doc = _document(exchange_id, proxy, response is not None)
    entry = har_entry(doc, _row(exchange_id, state),
                      parse_message(request, limit) if request is not None else None,
                      parse_message(response, limit) if response is not None else None)
    check_har(jsoncodec.loads(b"".join(document(iter([jsoncodec.dumps(entry)])))))
    return entry


REQUEST = (b"POST /v1/x HTTP/1.1\r\nHost: up\r\nContent-Type: application/json\r\n"
           b"X-Proxy-Path: http://127.0.0.1:5601/v1/x?a=1&b=\r\n\r\n{\"k\": \"v\"}")


def test_a_binary_body_is_base64_but_a_character_cut_by_the_limit_is_not():
    binary = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n" + bytes(range(256))
    content = _entry(REQUEST, binary, {"started_at": T0, "first_byte_at": T0 + 0.1, "ended_at": T0 + 0.3},
                     limit=4096)["response"]["content"]
    assert content["encoding"] == "base64" and base64.b64decode(content["text"]) == bytes(range(256))

    text = "é" * 600  # 1,200 bytes: the 1,024-byte limit cuts the 513th character in two
    cut = _entry(REQUEST, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + text.encode(),
                 {"started_at": T0, "first_byte_at": T0 + 0.1, "ended_at": T0 + 0.3})
    content = cut["response"]["content"]
    assert "encoding" not in content and content["text"] == "é" * 512 and content["_truncated"] is True
    assert "only the first 1024 bytes" in cut["comment"]


def test_valid_utf8_with_control_characters_is_base64_but_tabs_and_newlines_are_text():
    times = {"started_at": T0, "first_byte_at": T0 + 0.1, "ended_at": T0 + 0.3}
    zeros = _entry(REQUEST, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"\0" * 1000, times)
    content = zeros["response"]["content"]
    assert content["encoding"] == "base64" and base64.b64decode(content["text"]) == b"\0" * 1000
    lines = _entry(REQUEST, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\na\tb\r\nc\n", times)
    assert lines["response"]["content"]["text"] == "a\tb\r\nc\n" and "encoding" not in lines["response"]["content"]


def test_the_request_url_and_query_come_from_the_called_url():
    entry = _entry(REQUEST, None, state="in_flight")
    request = entry["request"]
    assert request["url"] == "http://127.0.0.1:5601/v1/x?a=1&b="
    assert request["queryString"] == [{"name": "a", "value": "1"}, {"name": "b", "value": ""}]
    assert [h["name"] for h in request["headers"]] == ["Host", "Content-Type"]
    assert request["headersSize"] == len(b"POST /v1/x HTTP/1.1\r\nHost: up\r\nContent-Type: application/json\r\n\r\n")
    assert request["postData"] == {"mimeType": "application/json", "text": '{"k": "v"}'}


def test_an_exchange_in_flight_without_a_response_has_zero_timings_and_says_why():
    entry = _entry(REQUEST, None, state="in_flight")
    assert entry["response"]["status"] == 0 and entry["response"]["bodySize"] == -1
    assert entry["timings"]["wait"] == entry["timings"]["receive"] == entry["time"] == 0
    assert "wait, receive" in entry["timings"]["comment"]
    assert entry["comment"] == "in flight when exported: what had arrived so far; no response yet"
    assert entry["_state"] == "in_flight"


def test_timings_come_from_the_proxys_metadata():
    entry = _entry(REQUEST, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{}",
                   {"started_at": T0, "upstream_headers_at": T0 + 0.05, "first_byte_at": T0 + 0.25,
                    "ended_at": T0 + 1.0})
    assert (entry["timings"]["wait"], entry["timings"]["receive"], entry["time"]) == (250.0, 750.0, 1000.0)
    assert entry["startedDateTime"].endswith("Z") and "comment" not in entry["timings"]


def test_a_go_proxy_log_without_a_request_line_still_makes_an_entry():
    entry = _entry(b"Content-Type: application/json\r\nHost: up\r\n\r\n{}",
                   b"Content-Type: application/json\r\n\r\n{}")
    assert entry["request"]["method"] == "POST" and entry["request"]["httpVersion"] == ""
    assert entry["request"]["url"] == "http://up/v1/x"
    assert entry["response"]["httpVersion"] == "" and entry["response"]["content"]["text"] == "{}"


def test_websocket_messages_in_chromes_form():
    response = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                + record("client", "text", "✓".encode()) + record("upstream", "binary", b"\xff\x00")
                + record("upstream", "error", b"the proxy stopped decoding these messages (x)")
                + record("client", "close", b"1000 "))
    entry = _entry(REQUEST.replace(b"http://", b"ws://"), response,
                   {"started_at": T0, "upstream_headers_at": T0 + 0.01, "ended_at": T0 + 2.0, "status": 101,
                    "websocket": {"ended": "client closed"}})
    assert entry["_resourceType"] == "websocket" and entry["response"]["bodySize"] == 0
    assert [(m["type"], m["opcode"], m["data"]) for m in entry["_webSocketMessages"]] == [
        ("send", 1, "✓"), ("receive", 2, base64.b64encode(b"\xff\x00").decode()), ("send", 8, "1000 ")]
    assert "upstream: the proxy stopped decoding" in entry["comment"]
    assert entry["timings"]["wait"] == 10.0 and entry["timings"]["receive"] == 1990.0


def test_entries_left_out_are_counted_in_the_documents_comment():
    data = b"".join(document(iter([None, b'{"x":1}', None])))
    assert data.endswith(b'"entries":[{"x":1}],"comment":"2 exchanges were deleted while exported"}}')
