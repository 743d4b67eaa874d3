"""The logging server's REST API through the real proxy and logging server: metadata that
matches what the client saw, LLM fields derived for OpenAI, OpenRouter and Anthropic
traffic (JSON and SSE, gzip and brotli), the parsed exchange view, raw files, delete,
stats, 400/404/405/409 answers, several gunicorn workers. Every JSON answer is validated
against the server's own OpenAPI document (api_helpers.ApiClient)."""
import gzip
import json
import socket
import time
import uuid
from pathlib import Path

import brotli
import pytest
from openapi_spec_validator import validate

from api_helpers import ApiClient, derived_done
from servers import STARTUP_TIMEOUT
from helpers import http_request, start_gunicorn, stream_text, wait_until
from live_helpers import StreamingChat

pytestmark = pytest.mark.both_indexes  # with SQLite and with PostgreSQL (conftest.py)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "llm"
CHAT = {"model": "fake/model-a", "messages": [{"role": "user", "content": "Say hi"}]}


@pytest.fixture
def api(logserver):
    return ApiClient(logserver.url)


def call(proxy, path, payload, headers=None, query=""):
    """POST JSON through the proxy; return (status, headers dict, body, request id, sent body)."""
    body = json.dumps(payload).encode()
    status, resp_headers, data = http_request(
        "POST", proxy.url + path + query, body,
        dict({"Content-Type": "application/json", "Authorization": "Bearer sk-test-0123456789abcdef"},
             **(headers or {})))
    resp_headers = dict(resp_headers)
    return status, resp_headers, data, resp_headers["X-Request-Id"], body


def put(url, exchange_id, kind, data):
    status, _, body = http_request("PUT", "%s/%s/%s" % (url, exchange_id, kind), data)
    assert status == 201, body


def test_the_openapi_document_is_valid_openapi_31(api):
    validate(api.doc)
    assert api.doc["openapi"].startswith("3.1")
    for path in ("/api/requests", "/api/requests/{id}", "/api/requests/{id}/request",
                 "/api/requests/{id}/response", "/api/requests/{id}/exchange", "/api/stats",
                 "/api/health"):
        assert path in api.doc["paths"], path
    assert "delete" in api.doc["paths"]["/api/requests/{id}"]


def test_metadata_matches_what_the_client_saw(proxy, api):
    started = time.time()
    # 5 ms of upstream work: below 1 ms of generation there is no rate (schema._tokens_per_s),
    # and the whole exchange can take less than that on loopback
    query = "?x=1&first_delay_ms=5"
    status, headers, body, rid, sent = call(proxy, "/api/v1/chat/completions", CHAT, query=query)
    assert status == 200
    # indexed too (until then the detail is built from the metadata file: no seq yet)
    row = api.wait_row(rid, lambda r: derived_done(r) and r["seq"] is not None)
    assert row["id"] == rid
    assert (row["status"], row["method"], row["path"], row["route"]) == (
        200, "POST", "/api/v1/chat/completions" + query, "openrouter")
    assert row["response_bytes"] == len(body)
    assert row["request_bytes"] == len(sent)
    assert row["state"] == "complete" and row["error"] is None and row["streamed"] is False
    assert started - 1 <= row["started_at"] <= row["ended_at"] <= time.time()
    assert 0 <= row["ttft_ms"] <= row["duration_ms"]
    assert row["upstream_url"].endswith("/api/v1/chat/completions" + query)
    assert row["client_addr"].startswith("127.0.0.1")
    # derived from the bodies (the fake upstream answers like OpenAI)
    assert (row["api"], row["model"], row["model_requested"]) == ("openai", "fake/model-a", "fake/model-a")
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (12, 150, 162)
    assert row["finish_reason"] == "stop" and row["message_count"] == 1
    assert row["prompt_preview"] == "Say hi"
    assert row["tokens_per_s"] and row["tokens_per_s"] > 0
    assert row["files"]["request"]["url"] == "/api/requests/%s/request" % rid
    assert row["metadata"]["proxy"]["status"] == 200
    # the list row is the same as the detail's
    page = api.ok("/api/requests", q=rid[:8])
    assert [i["id"] for i in page["items"]] == [rid]
    assert page["items"][0] == {k: v for k, v in row.items() if k not in ("metadata", "files")}


def test_openai_sse_through_the_proxy(proxy, api):
    payload = dict(CHAT, stream=True, stream_options={"include_usage": True})
    status, _, body, rid, _ = call(proxy, "/v1/chat/completions", payload, query="?events=6")
    assert status == 200 and body.endswith(b"data: [DONE]\n\n")
    row = api.wait_row(rid, derived_done)
    assert (row["streamed"], row["stream"], row["route"]) == (True, True, "fake")
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (12, 6, 18)
    assert row["finish_reason"] == "stop"
    assert row["content_type"].startswith("text/event-stream")
    assert row["reply_preview"] == stream_text(6).strip()
    view = api.ok("/api/requests/%s/exchange" % rid)
    response = view["response"]
    assert response["status"] == 200
    events = response["body"]["events"]
    assert response["body"]["kind"] == "sse" and len(events) == 1 + 6 + 1 + 1 + 1
    assert events[-1]["data"] == "[DONE]" and events[-1]["json"] is None
    assert response["body"]["assembled"]["choices"][0]["message"]["content"] == stream_text(6)
    request = view["request"]
    assert request["method"] == "POST" and request["target"] == "/v1/chat/completions?events=6"
    assert ["Authorization", "Bearer ****cdef"] in request["headers"]
    assert request["body"]["json"] == payload
    assert request["body"]["text"] == json.dumps(payload, indent=2)
    assert view["llm"]["completion_tokens"] == 6


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_messages_through_the_proxy(proxy, api, stream):
    payload = {"model": "claude-fake", "max_tokens": 100, "stream": stream,
               "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]}
    status, _, body, rid, _ = call(proxy, "/v1/messages", payload, {"anthropic-version": "2023-06-01"},
                                   query="?events=4")
    assert status == 200
    row = api.wait_row(rid, derived_done)
    assert row["api"] == "anthropic" and row["model"] == "claude-fake"
    assert row["finish_reason"] == "end_turn" and row["prompt_tokens"] == 12
    assert row["completion_tokens"] == (4 if stream else 150)
    assert row["prompt_preview"] == "Hello"
    if stream:
        view = api.ok("/api/requests/%s/exchange" % rid)
        assembled = view["response"]["body"]["assembled"]
        assert assembled["content"] == [{"type": "text", "text": stream_text(4)}]
        assert [e["event"] for e in view["response"]["body"]["events"]][:3] == [
            "message_start", "content_block_start", "ping"]


@pytest.mark.parametrize("encoding", ["gzip", "br"])
def test_encoded_llm_bodies_are_decoded(logserver, api, encoding):
    """The proxy logs bodies still content-encoded; an exchange PUT as the proxy sends it."""
    compress = gzip.compress if encoding == "gzip" else brotli.compress
    rid = str(uuid.uuid4())
    request = (b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: openrouter.ai\r\n"
               b"Content-Type: application/json\r\nX-Proxy-Path: http://127.0.0.1:5601/api/v1/chat/completions"
               b"\r\n\r\n" + (FIXTURES / "openrouter_request.json").read_bytes())
    sse = compress((FIXTURES / "openrouter_stream.sse").read_bytes())
    response = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: "
                + encoding.encode() + b"\r\n\r\n" + sse)
    put(logserver.url, rid, "request", request)
    put(logserver.url, rid, "response", response)
    now = time.time()
    put(logserver.url, rid, "metadata", json.dumps({
        "id": rid, "route": "openrouter", "method": "POST", "path": "/api/v1/chat/completions",
        "status": 200, "error": None, "streamed": True, "started_at": now - 2, "first_byte_at": now - 1.5,
        "ended_at": now, "request_bytes": 300, "response_bytes": len(sse), "log_dropped_bytes": 0}).encode())
    row = api.wait_row(rid, derived_done)
    assert (row["provider"], row["model"], row["cost"]) == ("Anthropic", "anthropic/claude-3.7-sonnet", 0.0051)
    assert (row["prompt_tokens"], row["cached_tokens"], row["reasoning_tokens"]) == (1500, 1200, 12)
    assert row["ttft_ms"] == pytest.approx(500, abs=1)
    assert row["tokens_per_s"] == pytest.approx(40 / 1.5, rel=0.01)
    view = api.ok("/api/requests/%s/exchange" % rid)
    body = view["response"]["body"]
    assert body["encoding"] == encoding and body["size"] == len(sse)
    assert body["comments"] == 2
    assert body["assembled"]["choices"][0]["message"]["content"] == "Forty-two."
    status, headers, raw = api.raw("/api/requests/%s/response" % rid)
    assert status == 200 and raw == response
    assert headers["Content-Type"] == "application/octet-stream"


def test_an_exchange_whose_metadata_never_came_is_listed_from_its_files(logserver, api):
    rid = str(uuid.uuid4())
    put(logserver.url, rid, "request", b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nX-Proxy-Path: "
        b"http://p/anthropic/v1/messages\r\n\r\n" + (FIXTURES / "anthropic_request.json").read_bytes())
    put(logserver.url, rid, "response", b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n"
        + (FIXTURES / "anthropic_message.json").read_bytes())
    # (the model alone is known from the request: wait for what the response gives)
    row = api.wait_row(rid, lambda r: r["prompt_tokens"] is not None)
    assert row["state"] == "in_flight"  # the proxy never said it ended
    assert (row["method"], row["path"], row["status"]) == ("POST", "/anthropic/v1/messages", 200)
    assert (row["api"], row["model"], row["prompt_tokens"]) == ("anthropic", "claude-sonnet-4-20250514", 3895)
    assert row["route"] is None and row["duration_ms"] is None
    # (the row above may be the one its file gives, the index's a moment later: PostgreSQL's
    # writes are batched)
    listed = wait_until(lambda: api.ok("/api/requests", state="in_flight", q=rid[:8])["items"], 10, 0.05,
                        "the exchange listed as in flight")
    assert [i["id"] for i in listed] == [rid]


def test_an_exchange_in_flight_is_listed_while_it_streams(proxy, api, logserver):
    payload = dict(CHAT, stream=True)
    sock = socket.create_connection(proxy.url.split("//")[1].split(":"), timeout=10)
    try:
        body = json.dumps(payload).encode()
        sock.sendall(b"POST /v1/chat/completions?events=4&interval_ms=400 HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(65536)
        rid = [line.split(b": ")[1].decode() for line in head.split(b"\r\n")
               if line.lower().startswith(b"x-request-id")][0]
        row = api.wait_row(rid, lambda r: r["status"] == 200)
        assert row["state"] == "in_flight" and row["method"] == "POST"
        assert row["path"] == "/v1/chat/completions?events=4&interval_ms=400"
        items = api.ok("/api/requests", state="in_flight", limit=1000)["items"]
        assert rid in [i["id"] for i in items]
        status, _, partial = api.raw("/api/requests/%s/response" % rid)
        assert status == 200 and partial.startswith(b"HTTP/1.1 200")
        # follow=true streams the file as it grows, to its end
        status, _, followed = api.raw("/api/requests/%s/response" % rid, follow="true")
        assert followed.endswith(b"data: [DONE]\n\n") and followed.startswith(partial[:40])
    finally:
        sock.close()
    row = api.wait_row(rid, derived_done)
    assert row["completion_tokens"] is None and row["finish_reason"] == "stop"  # no usage asked for


def test_list_filters_on_live_traffic(proxy, api):
    ids = {}
    for route_path, model in (("/api/v1/chat/completions", "m-one"), ("/v1/chat/completions", "m-two"),
                              ("/v1/status/429", None)):
        payload = dict(CHAT, model=model) if model else CHAT
        status, _, _, rid, _ = call(proxy, route_path, payload)
        ids[route_path] = rid
        api.wait_row(rid, derived_done if status == 200 else (lambda r: r["state"] == "complete"))
    since = api.ok("/api/requests/" + ids["/api/v1/chat/completions"])["started_at"]
    listed = lambda **p: [i["id"] for i in api.all_items(since=str(since), **p)]  # noqa: E731
    assert listed(route="openrouter") == [ids["/api/v1/chat/completions"]]
    assert listed(model="m-two") == [ids["/v1/chat/completions"]]
    assert listed(model="m-*") == [ids["/v1/chat/completions"], ids["/api/v1/chat/completions"]]
    assert listed(status="4xx") == [ids["/v1/status/429"]]
    row = api.ok("/api/requests/" + ids["/v1/status/429"])
    assert row["error_message"] and row["status"] == 429
    assert ids["/v1/status/429"] in listed(q=" ".join(row["error_message"].split()[:2]))  # whole words


def test_raw_files_and_delete(proxy, api, logserver):
    status, _, _, rid, sent = call(proxy, "/v1/chat/completions", CHAT)
    api.wait_row(rid, derived_done)
    status, headers, raw = api.raw("/api/requests/%s/request" % rid)
    assert status == 200 and raw == logserver.file(rid, "request").read_bytes() and raw.endswith(sent)
    assert int(headers["Content-Length"]) == len(raw)
    status, data = api.call("DELETE", "/api/requests/" + rid)
    assert status == 200 and data["deleted"] is True and data["freed_bytes"] > len(raw)
    assert logserver.files(rid) == []
    assert api.get("/api/requests/" + rid)[0] == 404
    assert api.get("/api/requests/%s/exchange" % rid)[0] == 404
    assert api.raw("/api/requests/%s/response" % rid)[0] == 404
    assert api.call("DELETE", "/api/requests/" + rid)[0] == 404
    assert api.ok("/api/requests", q=rid[:8])["items"] == []


def test_delete_of_an_exchange_in_flight_needs_force(logserver, api):
    rid = str(uuid.uuid4())
    put(logserver.url, rid, "request", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    api.wait_row(rid)
    status, data = api.call("DELETE", "/api/requests/" + rid)
    assert status == 409 and "force" in data["error"]["message"]
    assert api.call("DELETE", "/api/requests/" + rid, {"force": "true"})[0] == 200


def test_an_exchange_still_streaming_is_listed_and_filtered_by_its_model(proxy, api, logserver):
    # The request's fields are derived when the request part ends, long before the answer.
    model = "inflight/model-" + uuid.uuid4().hex[:8]
    chat = StreamingChat(proxy.url, model, events=40, interval_ms=100, content="Count to forty").start()
    items = wait_until(lambda: api.ok("/api/requests", model=model)["items"], 3, 0.05,
                       "the exchange in flight listed under its model")
    assert not chat.done.is_set(), "the answer must still be streaming"
    row = items[0]
    assert [i["id"] for i in items] == [chat.id] and row["state"] == "in_flight"
    assert (row["model"], row["model_requested"], row["model_answered"]) == (model, model, None)
    assert (row["api"], row["stream"], row["message_count"], row["prompt_preview"]) == (
        "openai", True, 1, "Count to forty")
    assert row["completion_tokens"] is None and row["finish_reason"] is None
    assert api.ok("/api/requests", model="inflight/*", state="in_flight")["items"][0]["id"] == chat.id
    derived = logserver.wait_for_metadata(chat.id)["derived"]
    assert derived["parts"] == ["request"] and derived["model_requested"] == model
    chat.wait()
    done = api.wait_row(chat.id, derived_done)
    assert (done["model"], done["model_answered"], done["prompt_preview"]) == (model, model, "Count to forty")
    assert (done["completion_tokens"], done["finish_reason"]) == (40, "stop")


@pytest.mark.parametrize("size", [100, 300_000], ids=["small", "large"])
def test_a_request_whose_answer_has_not_begun_is_listed_with_its_fields(logserver, api, size):
    """Small requests are derived in the update that ends the part, large ones (over
    deriving.INLINE_BYTES) on a thread; the answer, when it comes, completes the fields."""
    rid, model = str(uuid.uuid4()), "waiting/model-" + uuid.uuid4().hex[:8]
    body = json.dumps({"model": model, "max_tokens": 5, "system": "Be brief.",
                       "messages": [{"role": "user", "content": "x" * size}]}).encode()
    put(logserver.url, rid, "request", b"POST /anthropic/v1/messages HTTP/1.1\r\nHost: x\r\n\r\n" + body)
    row = wait_until(lambda: (api.ok("/api/requests", model=model)["items"] or [None])[0], 5, 0.05,
                     "the request's fields")
    assert (row["id"], row["state"], row["api"], row["model"]) == (rid, "in_flight", "anthropic", model)
    assert row["prompt_preview"].startswith("xxx") and row["status"] is None
    answer = (FIXTURES / "anthropic_message.json").read_bytes()
    put(logserver.url, rid, "response", b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + answer)
    row = api.wait_row(rid, lambda r: r["completion_tokens"] is not None)
    assert (row["model_requested"], row["model_answered"]) == (model, json.loads(answer)["model"])
    assert row["message_count"] == 1 and row["finish_reason"] and row["prompt_preview"].startswith("xxx")


def test_stats(proxy, api):
    status, _, _, rid, _ = call(proxy, "/api/v1/chat/completions", dict(CHAT, model="stats-model"))
    api.wait_row(rid, derived_done)
    stats = api.ok("/api/stats", model="stats-model")
    assert stats["count"] >= 1 and stats["prompt_tokens"] == 12 * stats["count"]
    assert [g["name"] for g in stats["by_model"]] == ["stats-model"]
    assert stats["by_route"][0]["name"] == "openrouter"
    assert stats["latency_ms"]["count"] == stats["count"] and stats["latency_ms"]["p50"] > 0
    everything = api.ok("/api/stats", since="-1h")
    assert everything["count"] >= stats["count"]


def test_health(api):
    health = api.ok("/api/health")
    assert health["status"] == "ok" and health["exchanges"] >= 0


@pytest.mark.parametrize("path, params, parameter", [
    ("/api/requests", {"status": "abc"}, "status"),
    ("/api/requests", {"status": "6xx"}, "status"),
    ("/api/requests", {"status": ""}, "status"),
    ("/api/requests", {"limit": "0"}, "limit"),
    ("/api/requests", {"limit": "1001"}, "limit"),
    ("/api/requests", {"limit": "ten"}, "limit"),
    ("/api/requests", {"since": "yesterday"}, "since"),
    ("/api/requests", {"until": "nan"}, "until"),
    ("/api/requests", {"cursor": "not-a-cursor"}, "cursor"),
    ("/api/requests", {"state": "done"}, "state"),
    ("/api/requests", {"streamed": "maybe"}, "streamed"),
    ("/api/requests", {"updated_after": "-1"}, "updated_after"),
    ("/api/requests", {"colour": "red"}, "colour"),
    ("/api/requests", {"q": "x" * 201}, "q"),
    ("/api/requests", {"limit": ["1", "2"]}, "limit"),
    ("/api/stats", {"since": "1h"}, "since"),
    ("/api/stats", {"limit": "5"}, "limit"),
    ("/api/requests/not-a-uuid", {}, "id"),
    ("/api/requests/not-a-uuid/exchange", {}, "id"),
    ("/api/requests/%s" % uuid.uuid4(), {"verbose": "1"}, "verbose"),
    ("/api/health", {"x": "1"}, "x"),
])
def test_bad_parameters_are_400_naming_the_parameter(api, path, params, parameter):
    status, data = api.get(path, **params)
    assert status == 400, data
    assert data["error"]["parameter"] == parameter and data["error"]["message"]


def test_unknown_ids_and_paths_are_404_and_wrong_methods_405(api):
    missing = str(uuid.uuid4())
    for path in ("/api/requests/" + missing, "/api/requests/%s/exchange" % missing,
                 "/api/requests/%s/request" % missing, "/api/nothing", "/api/requests/%s/x" % missing):
        status, data = api.get(path)
        assert status == 404 and "error" in data, path
    status, data = api.call("POST", "/api/requests")
    assert status == 405 and data["error"]["message"]
    status, data = api.call("PUT", "/api/requests/" + missing)
    assert status == 405


def test_filters_with_sql_characters_are_just_text(api):
    for value in ("' OR 1=1 --", "%", "_", "\\", "model\"; DROP TABLE exchanges; --"):
        assert api.ok("/api/requests", q=value, route=value, model=value)["items"] == []
    assert api.ok("/api/health")["status"] == "ok"


def test_updated_after_returns_changes_since_a_seq(proxy, api):
    before = api.ok("/api/requests", limit=1)["max_seq"]
    status, _, _, rid, _ = call(proxy, "/v1/chat/completions", CHAT)
    api.wait_row(rid, derived_done)
    changes = api.ok("/api/requests", updated_after=before, limit=1000)
    assert rid in [i["id"] for i in changes["items"]]
    seqs = [i["seq"] for i in changes["items"]]
    assert seqs == sorted(seqs) and all(s > before for s in seqs)
    assert api.ok("/api/requests", updated_after=changes["max_seq"])["items"] == []


# -- several gunicorn workers ------------------------------------------------------------------


@pytest.fixture
def gunicorn_logserver(tmp_path):
    log_dir = tmp_path / "logs"
    process = start_gunicorn("logserver-gunicorn", "orproxy.wsgi:logserver_app()", tmp_path / "work",
                             env={"ORLOGSERVER_LOG_DIR": log_dir}, timeout=STARTUP_TIMEOUT)
    yield process.url, log_dir, process
    process.stop(timeout=10)


def test_two_gunicorn_workers_index_every_exchange(make_proxy, gunicorn_logserver):
    url, log_dir, process = gunicorn_logserver
    proxy = make_proxy(logging={"server_url": url})
    api = ApiClient(url)
    ids = []
    for i in range(30):
        payload = dict(CHAT, model="worker-%d" % (i % 3), stream=bool(i % 2))
        status, _, _, rid, _ = call(proxy, "/v1/chat/completions", payload)
        assert status == 200
        ids.append(rid)
    for rid in ids:
        row = api.wait_row(rid, derived_done, timeout=20)
        assert row["model"] and row["model"].startswith("worker-") and row["finish_reason"] == "stop", (
            row, process.describe())
    items = api.all_items(limit=7)
    assert sorted(i["id"] for i in items) == sorted(ids)
    assert [i["id"] for i in api.all_items(model="worker-1")] == [i for i in reversed(ids)
                                                                   if ids.index(i) % 3 == 1]
    # every worker answers the same
    for _ in range(6):
        assert api.ok("/api/stats")["count"] == 30
    assert (log_dir / ".ids" / "index.sqlite3").exists()


def test_a_long_stream_is_derived_off_the_loop(logserver, api):
    """A response over the inline limit (deriving.INLINE_BYTES) is derived on a thread,
    from a skimmed parse; the fields are the same as for a short one."""
    rid = str(uuid.uuid4())
    chunk = ('data: {"id":"c","object":"chat.completion.chunk","model":"big-model","choices":[{"index":0,'
             '"delta":{"content":"token "},"finish_reason":null}]}\n\n')
    end = ('data: {"id":"c","object":"chat.completion.chunk","model":"big-model","choices":[{"index":0,'
           '"delta":{},"finish_reason":"length"}]}\n\ndata: {"id":"c","object":"chat.completion.chunk",'
           '"model":"big-model","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4000,'
           '"total_tokens":4003}}\n\ndata: [DONE]\n\n')
    body = (chunk * 4000 + end).encode()
    assert len(body) > 256 * 1024
    put(logserver.url, rid, "request", b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n"
        + json.dumps(dict(CHAT, model="big-model", stream=True)).encode())
    put(logserver.url, rid, "response", b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + body)
    row = api.wait_row(rid, lambda r: r["total_tokens"] is not None)
    assert (row["model"], row["finish_reason"], row["completion_tokens"]) == ("big-model", "length", 4000)
    assert row["reply_preview"].startswith("token token")
    view = api.ok("/api/requests/%s/exchange" % rid)
    assert len(view["response"]["body"]["events"]) == 4003
    assert view["response"]["body"]["assembled"]["choices"][0]["message"]["content"] == "token " * 4000
