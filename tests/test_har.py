"""HAR 1.2 export (`GET /api/requests/{id}/har`, `GET /api/har?<filters>`) through the real
proxy and logging server: JSON, SSE, gzip, binary, a body past the bound, a WebSocket
session, exchanges in flight and incomplete, a filter of 1,000, and the memory of a large
export. Every document is checked against the HAR 1.2 JSON Schema in tests/fixtures/har
(har_helpers.check_har) and the interesting ones are read back with haralyzer, a HAR
reader of its own."""
import base64
import gzip
import json
import os
import time
import uuid
from datetime import datetime

import pytest
import requests
from haralyzer import HarParser
from websockets.sync.client import connect

from api_helpers import ApiClient, derived_done
from servers import seeded_logserver
from har_helpers import load_har
from helpers import http_request, stream_text, wait_until
from log_helpers import send
from orproxy.logserver.web.har_entry import BODY_LIMIT
from orproxy.testing.pattern import pattern_bytes
from orproxy.testing.seed_logs import seed
from test_hostile_content import BOMBS, REQUEST as HOSTILE_REQUEST
from ws_helpers import WsUpstream, ws_routes

pytestmark = pytest.mark.both_indexes  # with SQLite and with PostgreSQL (conftest.py)

SECRET = "sk-test-0123456789abcdef"
JSON_HEADERS = [("Content-Type", "application/json"), ("Authorization", "Bearer " + SECRET)]


@pytest.fixture
def api(logserver):
    return ApiClient(logserver.url)


def har_of(api, exchange_id):
    """The one-exchange HAR download: (raw bytes, its entry), checked."""
    status, headers, body = api.raw("/api/requests/%s/har" % exchange_id)
    assert status == 200, body
    assert headers["Content-Disposition"] == 'attachment; filename="orproxy-%s.har"' % exchange_id[:8]
    assert headers["Content-Type"].startswith("application/json")
    _, entries = load_har(body)
    assert len(entries) == 1 and entries[0]["_requestId"] == exchange_id
    return body, entries[0]


def read_back(har):
    """The entries as haralyzer reads them (entries without a page are its page "unknown")."""
    pages = HarParser(har).pages
    assert [p.page_id for p in pages] == ["unknown"]
    return pages[0].entries


def chat(model, stream=False):
    body = {"model": model, "messages": [{"role": "user", "content": "Say hi ✓"}]}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return json.dumps(body).encode()


# -- one exchange --------------------------------------------------------------------------

def test_a_json_exchange_with_its_secrets_masked(proxy, api):
    body = chat("fake/har-json")
    target = "/api/v1/chat/completions?api_key=%s&x=1" % SECRET
    status, _, answer, rid = send(proxy.url, "POST", target, JSON_HEADERS, body)
    assert status == 200
    row = api.wait_row(rid, derived_done)
    raw, entry = har_of(api, rid)
    assert b"0123456789abcdef" not in raw  # neither the header nor the query parameter
    request = entry["request"]
    assert request["url"] == proxy.url + "/api/v1/chat/completions?api_key=****cdef&x=1"
    assert (request["method"], request["httpVersion"]) == ("POST", "HTTP/1.1")
    assert request["queryString"] == [{"name": "api_key", "value": "****cdef"}, {"name": "x", "value": "1"}]
    assert {"name": "Authorization", "value": "Bearer ****cdef"} in request["headers"]
    assert not [h for h in request["headers"] if h["name"].lower() == "x-proxy-path"]
    assert request["postData"] == {"mimeType": "application/json", "text": body.decode()}
    assert request["bodySize"] == len(body) and request["headersSize"] > 0
    response = entry["response"]
    assert (response["status"], response["statusText"], response["httpVersion"]) == (200, "OK", "HTTP/1.1")
    assert response["content"]["text"] == answer.decode() and "encoding" not in response["content"]
    assert response["content"]["size"] == response["bodySize"] == len(answer)
    assert response["content"]["mimeType"].startswith("application/json")
    # Timings from the proxy's metadata: the wait is the API's time to first byte.
    assert abs(entry["timings"]["wait"] - row["ttft_ms"]) < 0.01
    assert abs(entry["time"] - row["duration_ms"]) < 0.01
    assert (entry["timings"]["dns"], entry["timings"]["connect"], entry["timings"]["send"]) == (-1, -1, 0)
    assert entry["startedDateTime"] == datetime.utcfromtimestamp(row["started_at"]).isoformat(
        timespec="milliseconds") + "Z"
    assert entry["_state"] == "complete" and "comment" not in entry
    exchange = entry["_exchange"]
    assert (exchange["id"], exchange["model"], exchange["route"], exchange["completion_tokens"]) == (
        rid, "fake/har-json", "openrouter", 150)

    [read] = read_back(json.loads(raw))
    assert (read.request.method, read.request.url, read.status) == ("POST", request["url"], 200)
    assert read.request.text == body.decode() and json.loads(read.response.text) == json.loads(answer)
    assert read.request.get_header_value("authorization") == "Bearer ****cdef"
    assert abs(read.startTime.timestamp() - row["started_at"]) < 0.001
    assert read.timings["wait"] + read.timings["receive"] == pytest.approx(read.time, abs=0.01)


def test_an_sse_exchange_lists_its_events(proxy, api):
    status, _, answer, rid = send(proxy.url, "POST", "/v1/chat/completions?events=6", JSON_HEADERS,
                                  chat("fake/har-sse", stream=True))
    assert status == 200 and answer.endswith(b"data: [DONE]\n\n")
    row = api.wait_row(rid, derived_done)
    raw, entry = har_of(api, rid)
    content = entry["response"]["content"]
    assert content["mimeType"].startswith("text/event-stream")
    assert content["text"] == answer.decode()
    events = content["_sseEvents"]
    assert len(events) == 1 + 6 + 1 + 1 + 1  # role, 6 tokens, finish, usage, [DONE]
    assert events[-1] == {"event": "message", "data": "[DONE]"}
    chunks = [json.loads(e["data"]) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == stream_text(6)
    assert entry["_exchange"]["streamed"] is True and entry["_exchange"]["completion_tokens"] == 6
    # the stream's first event came long before its end: wait is the time to first token
    assert abs(entry["timings"]["wait"] - row["ttft_ms"]) < 0.01
    [read] = read_back(json.loads(raw))
    assert read.response.mimeType.startswith("text/event-stream") and read.response.text == answer.decode()


def test_a_gzip_response_is_decoded(proxy, api):
    status, headers, body, rid = send(proxy.url, "GET", "/v1/gzip", [("Accept-Encoding", "gzip")])
    assert status == 200 and dict(headers)["Content-Encoding"] == "gzip"
    plain = gzip.decompress(body)
    api.wait_row(rid, lambda r: r["state"] == "complete")
    raw, entry = har_of(api, rid)
    response = entry["response"]
    assert {"name": "Content-Encoding", "value": "gzip"} in response["headers"]
    assert response["bodySize"] == len(body)
    content = response["content"]
    assert content["text"] == plain.decode() and "encoding" not in content
    assert (content["size"], content["compression"]) == (len(plain), len(plain) - len(body))
    assert "postData" not in entry["request"] and entry["request"]["bodySize"] == 0
    [read] = read_back(json.loads(raw))
    assert json.loads(read.response.text) == json.loads(plain)


def test_a_binary_body_is_base64_and_a_huge_one_is_cut_at_the_bound(proxy, api):
    status, _, body, rid = send(proxy.url, "GET", "/v1/bytes?n=1000")
    assert status == 200 and body == pattern_bytes(1000)
    api.wait_row(rid, lambda r: r["state"] == "complete")
    _, entry = har_of(api, rid)
    content = entry["response"]["content"]
    assert content["encoding"] == "base64" and base64.b64decode(content["text"]) == body
    assert "_truncated" not in content

    size = 12 * 1024 * 1024  # past the 8 MiB a body gets in an entry
    status, _, body, rid = send(proxy.url, "GET", "/v1/bytes?n=%d" % size, timeout=60)
    assert status == 200 and len(body) == size
    api.wait_row(rid, lambda r: r["state"] == "complete", timeout=30)
    _, entry = har_of(api, rid)
    content = entry["response"]["content"]
    assert content["_truncated"] is True and entry["response"]["bodySize"] == size
    assert base64.b64decode(content["text"]) == body[:8 * 1024 * 1024]
    assert "only the first 8388608 bytes" in entry["comment"]


# -- WebSocket -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ws_upstream(tmp_path_factory):
    upstream = WsUpstream(tmp_path_factory.mktemp("har_ws_upstream"))
    yield upstream
    upstream.process.stop(5)


def test_a_websocket_session_has_its_messages_in_chromes_form(make_proxy, ws_upstream, api):
    proxy = make_proxy(routes=ws_routes(ws_upstream.url))
    url = "ws://127.0.0.1:%d/ws/echo" % proxy.port
    text, data = "héllo ✓ " * 3, bytes(range(256))
    before = time.time()
    with connect(url, compression=None) as ws:
        rid = ws.response.headers["X-Request-Id"]
        ws.send(text)
        assert ws.recv() == text
        ws.send(data)
        assert ws.recv() == data
    row = api.wait_row(rid, lambda r: r["state"] == "complete", timeout=15)
    _, entry = har_of(api, rid)
    assert entry["_resourceType"] == "websocket"
    assert entry["request"]["url"] == url and entry["request"]["method"] == "GET"
    assert entry["response"]["status"] == 101
    assert {"name": "Upgrade", "value": "websocket"} in entry["response"]["headers"]
    messages = entry["_webSocketMessages"]
    encoded = base64.b64encode(data).decode()
    assert [(m["type"], m["opcode"], m["data"]) for m in messages if m["opcode"] != 8] == [
        ("send", 1, text), ("receive", 1, text), ("send", 2, encoded), ("receive", 2, encoded)]
    assert [m["type"] for m in messages if m["opcode"] == 8] == ["send", "receive"]  # the client closed
    times = [m["time"] for m in messages]
    assert times == sorted(times) and before <= times[0] and times[-1] <= row["ended_at"]
    assert entry["timings"]["receive"] > 0  # the session's length


# -- in flight, incomplete -----------------------------------------------------------------

@pytest.fixture
def quick_logserver(make_logserver):
    """A logging server of its own that marks an exchange incomplete after 3 s of silence."""
    return make_logserver("--stale-after", "3s")


def test_exchanges_in_flight_and_incomplete_are_exported_with_what_is_there(make_proxy, quick_logserver):
    proxy = make_proxy(logging={"server_url": quick_logserver.url})
    api = ApiClient(quick_logserver.url)
    with requests.get(proxy.url + "/v1/hang", stream=True, timeout=30) as resp:
        rid = resp.headers["X-Request-Id"]
        chunks = resp.iter_content(None)  # kept: closing it (as garbage) would close the connection
        first = next(chunks)
        assert first.startswith(b"data: ")

        def exported_with_the_event():
            if api.raw("/api/requests/%s/har" % rid)[0] == 404:  # not logged yet: the proxy answers first
                return None
            _, entry = har_of(api, rid)
            if entry["_state"] == "in_flight" and entry["response"]["content"].get("_sseEvents"):
                return entry
            return None
        entry = wait_until(exported_with_the_event, 10, 0.05, "the event in the HAR of the exchange in flight")
        assert entry["response"]["content"]["text"] == first.decode()
        assert entry["comment"].startswith("in flight when exported")
        assert "receive" in entry["timings"]["comment"] and entry["timings"]["receive"] == 0
        assert entry["_exchange"]["state"] == "in_flight"

        # Nothing more arrives: after --stale-after the exchange is final, and incomplete.
        api.wait_row(rid, lambda r: r["state"] == "incomplete", timeout=20)
        _, entry = har_of(api, rid)
        assert entry["_state"] == "incomplete" and "nothing arrived" in entry["_incompleteReason"]
        assert entry["comment"].startswith("incomplete: ")
        assert entry["response"]["content"]["text"] == first.decode()
        assert entry["response"]["status"] == 200


# -- many ----------------------------------------------------------------------------------

def test_a_filter_of_1000_exchanges_is_one_streamed_document_newest_first(proxy, api):
    model = "fake/har-many-%s" % uuid.uuid4().hex[:8]
    with requests.Session() as session:
        for i in range(1000):
            resp = session.post(proxy.url + "/v1/chat/completions", data=chat(model), timeout=10,
                                headers=dict(JSON_HEADERS))
            assert resp.status_code == 200
    wait_until(lambda: (lambda s: s["count"] == 1000 and s["in_flight"] == 0)(api.ok("/api/stats", model=model)),
               60, 0.2, "1,000 exchanges logged whole")
    listed = [item["id"] for item in api.all_items(model=model, limit=1000)]

    with requests.get(api.url + "/api/har", params={"model": model}, stream=True, timeout=60) as resp:
        assert resp.status_code == 200 and resp.headers["Transfer-Encoding"] == "chunked"
        assert resp.headers["Content-Disposition"].startswith('attachment; filename="orproxy-')
        body = resp.content
    har, entries = load_har(body)
    assert [e["_requestId"] for e in entries] == listed  # newest first, as the list
    assert all(e["_exchange"]["model"] == model and e["response"]["status"] == 200 for e in entries)
    assert len(read_back(har)) == 1000

    status, _, body = api.raw("/api/har?model=%s&limit=10&route=fake" % model)
    assert status == 200
    assert [e["_requestId"] for e in load_har(body)[1]] == listed[:10]
    status, _, body = api.raw("/api/har?model=%s&route=openrouter" % model)  # no match: an empty document
    assert status == 200 and load_har(body)[1] == []


@pytest.mark.parametrize("query, parameter", [
    ("status=6xx", "status"), ("limit=0", "limit"), ("limit=x", "limit"), ("cursor=abc", "cursor"),
    ("bogus=1", "bogus"), ("since=yesterday", "since")])
def test_a_bad_filter_is_a_400_naming_it(api, query, parameter):
    status, data = api.call("GET", "/api/har?" + query, check=False)
    assert status == 400 and data["error"]["parameter"] == parameter
    api.check("GET", "/api/har", status, data)


def test_one_exchange_errors(api):
    missing = str(uuid.uuid4())
    status, data = api.get("/api/requests/%s/har" % missing)
    assert status == 404 and missing in data["error"]["message"]
    status, data = api.get("/api/requests/not-a-uuid/har")
    assert status == 400 and data["error"]["parameter"] == "id"
    status, data = api.call("POST", "/api/har")
    assert status == 405


def test_the_openapi_document_describes_both_routes(api):
    paths = api.doc["paths"]
    for path in ("/api/requests/{id}/har", "/api/har"):
        operation = paths[path]["get"]
        assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Har"}
    names = [p["name"] for p in paths["/api/har"]["get"]["parameters"]]
    assert {"model", "status", "route", "since", "q", "limit"} <= set(names)


# -- memory --------------------------------------------------------------------------------

def _rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _write_http_parts(log_dir, documents, response_size):
    """Real .bin parts for seeded exchanges: a JSON request, a text response of `response_size` bytes."""
    line = b"the quick brown fox jumps over the lazy dog " * 24 + b"\n"  # 1 KiB
    text = line * (response_size // len(line))
    for document in documents:
        request = document["parts"]["request"]
        body = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
        with open(os.path.join(log_dir, request["file"]), "wb") as f:
            f.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: upstream\r\nContent-Type: application/json\r\n"
                    b"X-Proxy-Path: http://127.0.0.1:5601/v1/chat/completions\r\n\r\n" + body)
        with open(os.path.join(log_dir, document["parts"]["response"]["file"]), "wb") as f:
            f.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + text)
    return len(text)


def test_a_large_export_is_streamed_in_bounded_memory(tmp_path, index_args):
    """300 exchanges of 1 MiB each: a document of 300 MiB, while the server grows by far less."""
    log_dir = tmp_path / "logs"
    size = _write_http_parts(str(log_dir), seed(str(log_dir), 300, bins=False), 1024 * 1024)
    server = seeded_logserver(log_dir, tmp_path, index_args()).start()
    try:
        api = ApiClient(server.url)
        wait_until(lambda: api.ok("/api/health")["exchanges"] == 300 and not api.ok("/api/health")["rebuilding"],
                   30, 0.1, "the seeded exchanges indexed")
        load_har(api.raw("/api/har", limit=2)[2])  # warm: imports, threads, the first pages
        baseline = peak = _rss_kib(server.process.pid)
        received, chunks = 0, []
        with requests.get(server.url + "/api/har", stream=True, timeout=120) as resp:
            assert resp.status_code == 200
            for chunk in resp.iter_content(1024 * 1024):
                received += len(chunk)
                chunks.append(chunk)
                peak = max(peak, _rss_kib(server.process.pid))
        growth_mib = (peak - baseline) / 1024
        entries = load_har(b"".join(chunks))[1]
        assert len(entries) == 300 and all(len(e["response"]["content"]["text"]) == size for e in entries)
        assert received > 300 * size
        assert growth_mib < 128, "the server grew by %.0f MiB while streaming %.0f MiB" % (
            growth_mib, received / 2**20)
    finally:
        server.stop()


HUGE = {"a gzip bomb (200 MB of zeros)", "a brotli bomb (1 GB of zeros)", "a gzip of a gzip", "an SSE line of 100 MiB"}


@pytest.mark.parametrize("name", list(BOMBS))
def test_a_hostile_body_makes_a_bounded_valid_entry(logserver, api, name):
    exchange_id = str(uuid.uuid4())
    for kind, data in (("request", HOSTILE_REQUEST), ("response", BOMBS[name]())):
        status, _, _ = http_request("PUT", "%s/%s/%s" % (logserver.url, exchange_id, kind), data, timeout=60)
        assert status == 201
    api.wait_row(exchange_id, lambda r: r["api"] is not None, timeout=60)
    status, _, body = http_request("GET", "%s/api/requests/%s/har" % (logserver.url, exchange_id), timeout=60)
    # 8 MiB of body at most: base64 makes it 4/3, JSON's escapes of text 2x at most (" and \\)
    assert status == 200 and len(body) < 2 * BODY_LIMIT + (1 << 20)
    [entry] = load_har(body)[1]
    content = entry["response"]["content"]
    assert len(content["text"]) <= BODY_LIMIT * 4 // 3 + 4
    if name in HUGE:
        assert content["_truncated"] and "only the first %d bytes" % BODY_LIMIT in entry["comment"]
    assert logserver.alive
