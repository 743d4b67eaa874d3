"""The UI's server side without a browser: the live feed (/api/live WebSocket, /api/events
SSE), the live tail (/api/requests/{id}/tail), the static files, and their behaviour under
several gunicorn workers and when the server stops. Real processes (conftest.py); the unit
tests of the pure parts are in tests/test_livefeed_units.py."""
import json
import threading
import time
import uuid

import jsonschema
import pytest
import requests
import websocket

from api_helpers import ApiClient
from helpers import http_request, start_gunicorn, stream_text, wait_until
from live_helpers import Stack, StreamingChat, send_chat, sse_events, wait_row

pytestmark = pytest.mark.both_indexes  # with SQLite and with PostgreSQL (conftest.py)


def ws_url(http_url, path="/api/live", **params):
    query = "&".join("%s=%s" % kv for kv in params.items())
    return http_url.replace("http://", "ws://") + path + ("?" + query if query else "")


class LiveClient(object):
    """A WebSocket live feed client collecting messages in a thread."""

    def __init__(self, url):
        self.ws = websocket.create_connection(url, timeout=5)
        self.messages = []
        self.closed = threading.Event()
        self.close_code = None
        self.hello = json.loads(self.ws.recv())
        assert self.hello["type"] == "hello", self.hello
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            while True:
                opcode, data = self.ws.recv_data(control_frame=False)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    self.close_code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
                    break
                self.messages.append(json.loads(data))
        except Exception:
            pass
        finally:
            self.closed.set()

    def rows(self):
        return [item for m in self.messages if m["type"] == "rows" for item in m["items"]]

    def removed(self):
        return [i for m in self.messages if m["type"] == "rows" for i in m["removed"]]

    def deleted(self):
        return [i for m in self.messages if m["type"] == "rows" for i in m["deleted"]]

    def wait_row(self, exchange_id, predicate=lambda r: True, timeout=10.0):
        def found():
            for row in reversed(self.rows()):
                if row["id"] == exchange_id and predicate(row):
                    return row
            return None
        return wait_until(found, timeout, 0.02, "row %s on the live feed" % exchange_id)

    def close(self):
        try:
            self.ws.close()
        except Exception:  # the server has gone: no close handshake, but the socket closes
            pass
        finally:
            self.ws.shutdown()


@pytest.fixture
def live(logserver):
    clients = []

    def connect(**params):
        client = LiveClient(ws_url(logserver.url, **params))
        clients.append(client)
        return client
    yield connect
    for client in clients:
        client.close()


def model_name(tag):
    return "live-%s-%s" % (tag, uuid.uuid4().hex[:8])


# -- the live feed ---------------------------------------------------------------------

def test_a_streaming_request_appears_in_flight_within_a_second_then_finishes(live, proxy):
    client = live()
    model = model_name("stream")
    chat = StreamingChat(proxy.url, model, events=20, interval_ms=100).start()
    started = time.monotonic()
    row = client.wait_row(chat.id, lambda r: r["state"] == "in_flight", timeout=3)
    assert time.monotonic() - started < 1.0
    assert not chat.done.is_set(), "the row must show while the answer is still streaming"
    assert row["method"] == "POST" and row["path"].startswith("/api/v1/chat/completions?events=20")
    chat.wait()
    done = client.wait_row(chat.id, lambda r: r["state"] == "complete" and r["completion_tokens"] is not None)
    assert done["status"] == 200
    assert done["model"] == model
    assert (done["prompt_tokens"], done["completion_tokens"]) == (12, 20)
    seqs = [m["seq"] for m in client.messages if m["type"] == "rows"]
    assert seqs == sorted(seqs)


def test_filters_pick_rows_and_report_the_ones_that_stop_matching(live, proxy, logserver):
    # The path is known from the first bytes on (the model only once the answer is parsed).
    tag = uuid.uuid4().hex[:10]
    only_this = live(q=tag)
    in_flight = live(state="in_flight", q=tag)
    other = send_chat(proxy.url, model_name("other"))
    chat = StreamingChat(proxy.url, model_name("filter"), events=8, interval_ms=100, query="&tag=" + tag).start()
    in_flight.wait_row(chat.id, lambda r: r["state"] == "in_flight", timeout=3)
    chat.wait()
    only_this.wait_row(chat.id, lambda r: r["state"] == "complete")
    wait_until(lambda: chat.id in in_flight.removed(), 10, 0.02, "the finished row removed from state=in_flight")
    assert all(r["state"] == "in_flight" for r in in_flight.rows())
    wait_row(logserver.url, other, lambda r: r["state"] == "complete")
    time.sleep(0.6)  # two polls: a row of another request would have arrived by now
    assert {r["id"] for r in only_this.rows()} == {chat.id}


def test_since_gives_what_changed_meanwhile(live, proxy, logserver):
    model = model_name("since")
    first = live()
    seq = first.hello["seq"]
    ids = [send_chat(proxy.url, model) for _ in range(3)]
    for rid in ids:
        wait_row(logserver.url, rid, lambda r: r["state"] == "complete" and r["model"] == model)
    late = live(since=seq, model=model)
    for rid in ids:
        late.wait_row(rid, lambda r: r["state"] == "complete", timeout=3)
    assert {r["model"] for r in late.rows()} == {model}


def test_sse_fallback_carries_the_same_messages_and_resumes_from_last_event_id(logserver, proxy):
    model = model_name("sse")
    url = logserver.url + "/api/events?model=" + model
    with requests.get(url, stream=True, timeout=10) as resp:
        assert resp.status_code == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = sse_events(resp)
        _, hello, hello_id = next(events)
        assert hello["type"] == "hello" and hello_id is None
        rid = send_chat(proxy.url, model)
        last_id = None
        for _, message, event_id in events:
            if message["type"] == "rows" and any(i["id"] == rid and i["state"] == "complete" and i["model"]
                                                 for i in message["items"]):
                last_id = event_id
                break
        assert last_id == str(message["seq"])
    later = send_chat(proxy.url, model)
    wait_row(logserver.url, later, lambda r: r["state"] == "complete" and r["model"] == model)
    with requests.get(url, stream=True, timeout=10, headers={"Last-Event-ID": last_id}) as resp:
        events = sse_events(resp)
        next(events)  # hello
        _, message, _ = next(events)
        assert message["type"] == "rows"
        assert later in [i["id"] for i in message["items"]]
        assert rid not in [i["id"] for i in message["items"]]


def test_a_deleted_exchange_is_removed_from_every_live_list(live, proxy, logserver):
    model = model_name("delete")
    everything, by_model, other_model = live(), live(model=model), live(model=model_name("other"))
    kept, doomed = send_chat(proxy.url, model), send_chat(proxy.url, model)
    for rid in (kept, doomed):
        by_model.wait_row(rid, lambda r: r["state"] == "complete" and r["model"] == model)
    seq_before = by_model.messages[-1]["seq"]
    assert requests.delete("%s/api/requests/%s" % (logserver.url, doomed), timeout=5).status_code == 200
    for client in (everything, by_model, other_model):  # whatever the filter: gone is gone
        wait_until(lambda: doomed in client.deleted(), 5, 0.02, "the deletion on the live feed")
        assert doomed in client.removed() and kept not in client.deleted()
    assert kept not in by_model.removed()
    message = next(m for m in by_model.messages if m["type"] == "rows" and doomed in m["deleted"])
    assert message["seq"] > seq_before and doomed not in [i["id"] for i in message["items"]]
    # A client that was away when it happened hears of it when it comes back with `since`.
    late = live(since=seq_before, model=model)
    wait_until(lambda: doomed in late.deleted(), 5, 0.02, "the deletion in the catch-up")
    assert doomed not in [r["id"] for r in late.rows()]
    # The list's max_seq counts the deletion: a client starting from it is not told again.
    max_seq = requests.get(logserver.url + "/api/requests?limit=1", timeout=5).json()["max_seq"]
    assert max_seq >= message["seq"]
    fresh = live(since=max_seq)
    assert fresh.hello["seq"] >= max_seq
    time.sleep(0.6)  # two polls
    assert doomed not in fresh.deleted()


def test_bad_requests_to_the_live_endpoints(logserver):
    resp = requests.get(logserver.url + "/api/live", timeout=5)
    assert resp.status_code == 426 and "api/events" in resp.json()["error"]["message"]
    resp = requests.get(logserver.url + "/api/events?status=nope", timeout=5)
    assert resp.status_code == 400 and resp.json()["error"]["parameter"] == "status"
    resp = requests.get(logserver.url + "/api/events?since=-1", timeout=5)
    assert resp.status_code == 400 and resp.json()["error"]["parameter"] == "since"
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        websocket.create_connection(ws_url(logserver.url, colour="blue"), timeout=5)
    assert info.value.status_code == 400
    assert requests.post(logserver.url + "/api/events", timeout=5).status_code == 405


def test_the_live_endpoints_behave_as_the_openapi_document_says(live, proxy, logserver):
    doc = ApiClient(logserver.url).doc
    paths = doc["paths"]

    def conforms(schema, value, what):
        errors = list(jsonschema.Draft202012Validator(dict(doc, **schema)).iter_errors(value))
        assert not errors, "%s does not match the document: %s" % (what, errors[0].message[:300])

    def error_conforms(path, status, body):
        response = paths[path]["get"]["responses"][str(status)]
        conforms(response["content"]["application/json"]["schema"], json.loads(body), "%s %s" % (path, status))

    ws_doc, sse_doc = paths["/api/live"]["get"], paths["/api/events"]["get"]
    for operation in (ws_doc, sse_doc):
        params = {p["name"]: p for p in operation["parameters"]}
        assert {"model", "route", "state", "q", "until"} <= set(params)
        assert params["since"]["schema"]["type"] == "integer"  # a seq here, not a time
    model = model_name("doc")
    client = live(model=model)
    conforms(ws_doc["responses"]["101"]["x-messages"], client.hello, "hello")
    rid = send_chat(proxy.url, model)
    client.wait_row(rid, lambda r: r["state"] == "complete" and r["completion_tokens"] is not None)
    assert requests.delete("%s/api/requests/%s" % (logserver.url, rid), timeout=5).status_code == 200
    wait_until(lambda: rid in client.deleted(), 5, 0.02, "the deletion")
    for message in client.messages:
        conforms(ws_doc["responses"]["101"]["x-messages"], message, "a WebSocket message")
    for path, query, status in (("/api/live", "", 426), ("/api/live", "?status=nope", 426),
                                ("/api/events", "?status=nope", 400), ("/api/events", "?since=x", 400)):
        got, _, body = http_request("GET", logserver.url + path + query)
        assert got == status, (path, query, got)
        error_conforms(path, status, body)
    assert http_request("POST", logserver.url + "/api/events")[0] == 405 and "405" in sse_doc["responses"]

    url = logserver.url + "/api/events?model=" + model
    message_schema = sse_doc["responses"]["200"]["content"]["text/event-stream"]["x-events"]["message"]
    with requests.get(url, stream=True, timeout=10) as resp:
        events = sse_events(resp)
        _, hello, _ = next(events)
        conforms(message_schema, hello, "an SSE hello")
        other = send_chat(proxy.url, model)
        for name, message, _ in events:
            assert name == "message"
            conforms(message_schema, message, "an SSE message")
            if any(i["id"] == other and i["state"] == "complete" for i in message.get("items", [])):
                break

    tail_doc = paths["/api/requests/{id}/tail"]["get"]
    schemas = tail_doc["responses"]["200"]["content"]["text/event-stream"]["x-events"]
    chat = StreamingChat(proxy.url, model, events=5, interval_ms=20).start()
    wait_row(logserver.url, chat.id)
    with requests.get("%s/api/requests/%s/tail" % (logserver.url, chat.id), stream=True, timeout=10) as resp:
        got = list(sse_events(resp))
    chat.wait()
    assert {n for n, _, _ in got} == {"head", "body", "deltas", "end"}
    for name, data, _ in got:
        conforms(schemas[name], data, "the tail's %s event" % name)
    for path, status in (("/api/requests/%s/tail" % uuid.uuid4(), 404), ("/api/requests/nope/tail", 400),
                         ("/api/requests/%s/tail?x=1" % chat.id, 400)):
        got_status, _, body = http_request("GET", logserver.url + path)
        assert got_status == status and str(status) in tail_doc["responses"]
        error_conforms("/api/requests/{id}/tail", status, body)


# -- the live tail ---------------------------------------------------------------------

def test_the_tail_follows_a_streaming_answer_and_ends_cleanly(proxy, logserver):
    chat = StreamingChat(proxy.url, model_name("tail"), events=20, interval_ms=100).start()
    wait_row(logserver.url, chat.id)  # the proxy's upload has begun
    got = []
    with requests.get("%s/api/requests/%s/tail" % (logserver.url, chat.id), stream=True, timeout=15) as resp:
        assert resp.status_code == 200
        for name, data, _ in sse_events(resp):
            got.append((time.monotonic(), name, data))
            if name == "end":
                break
    names = [n for _, n, _ in got]
    assert names[0] == "head" and names[-1] == "end"
    assert got[0][2]["status"] == 200
    assert got[-1][2]["reason"] == "complete"
    deltas = [(t, d) for t, n, data in got if n == "deltas" for d in data]
    assert "".join(d.get("text", "") for _, d in deltas) == stream_text(20)
    assert deltas[-1][0] - deltas[0][0] > 0.8, "the text must arrive as it streams, not at the end"
    body = "".join(data["text"] for _, n, data in got if n == "body")
    assert body == chat.wait().text
    assert any(d.get("finish") == "stop" for _, d in deltas)


def test_the_tail_of_a_finished_exchange_is_sent_whole_and_ended(proxy, logserver):
    rid = send_chat(proxy.url, model_name("done"))
    wait_row(logserver.url, rid, lambda r: r["state"] == "complete")
    started = time.monotonic()
    with requests.get("%s/api/requests/%s/tail" % (logserver.url, rid), stream=True, timeout=5) as resp:
        got = list(sse_events(resp))  # the server ends the response by itself
    assert time.monotonic() - started < 2
    assert [n for n, _, _ in got] == ["head", "body", "end"]
    assert json.loads(got[1][1]["text"])["object"] == "chat.completion"


def test_tail_errors(logserver):
    resp = requests.get("%s/api/requests/%s/tail" % (logserver.url, uuid.uuid4()), timeout=5)
    assert resp.status_code == 404
    resp = requests.get("%s/api/requests/not-a-uuid/tail" % logserver.url, timeout=5)
    assert resp.status_code == 400 and resp.json()["error"]["parameter"] == "id"
    resp = requests.get("%s/api/requests/%s/tail?x=1" % (logserver.url, uuid.uuid4()), timeout=5)
    assert resp.status_code == 400


# -- static files ----------------------------------------------------------------------

def test_the_ui_is_served_with_a_strict_content_security_policy(logserver):
    resp = requests.get(logserver.url + "/", timeout=5)
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/html")
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert '<script type="module" src="/static/app.js">' in resp.text
    js = requests.get(logserver.url + "/static/app.js", timeout=5)
    assert js.status_code == 200 and js.headers["Content-Type"].startswith("text/javascript")
    again = requests.get(logserver.url + "/static/app.js", headers={"If-None-Match": js.headers["ETag"]}, timeout=5)
    assert again.status_code == 304
    for bad in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/.hidden", "/static/nope.js"):
        assert requests.get(logserver.url + bad, timeout=5).status_code in (400, 404)
    assert "innerHTML" not in "".join(
        requests.get(logserver.url + "/static/" + name, timeout=5).text
        for name in ("app.js", "dom.js", "list.js", "detail.js", "conversation.js", "message.js", "jsontree.js"))


# -- several workers, stopping -----------------------------------------------------------

@pytest.fixture(params=["gevent", "orproxy.worker.GeventWorker"])
def gunicorn_logserver(request, tmp_path):
    process = start_gunicorn("logserver-gunicorn", "orproxy.wsgi:logserver_app()", tmp_path,
                             request.param, env={"ORLOGSERVER_LOG_DIR": tmp_path / "logs"})
    yield process, process.url
    process.stop(timeout=5)


def test_every_client_sees_every_row_with_several_gunicorn_workers(gunicorn_logserver, make_proxy):
    process, url = gunicorn_logserver
    proxy = make_proxy(logging={"server_url": url})
    clients, workers = [], set()
    deadline = time.monotonic() + 10
    while len(workers) < 2 or len(clients) < 4:  # connections land on either worker
        assert time.monotonic() < deadline, "every connection went to one worker"
        client = LiveClient(ws_url(url))
        clients.append(client)
        workers.add(client.hello["worker"])
    try:
        ids = [send_chat(proxy.url, model_name("workers")) for _ in range(4)]
        for client in clients:
            for rid in ids:
                client.wait_row(rid, lambda r: r["state"] == "complete")
        # A deletion, served by one worker, reaches the clients of both.
        assert requests.delete("%s/api/requests/%s" % (url, ids[0]), timeout=5).status_code == 200
        for client in clients:
            wait_until(lambda: ids[0] in client.deleted(), 5, 0.02, "the deletion on every worker's feed")
        # The tail too: whichever worker serves it follows the file another one writes.
        chat = StreamingChat(proxy.url, model_name("workers"), events=10, interval_ms=50).start()
        wait_row(url, chat.id)
        with requests.get("%s/api/requests/%s/tail" % (url, chat.id), stream=True, timeout=10) as resp:
            got = list(sse_events(resp))
        assert got[-1][:2] == ("end", {"reason": "complete", "bytes": got[-1][1]["bytes"]})
        assert "".join(d.get("text", "") for n, ds, _ in got if n == "deltas" for d in ds) == stream_text(10)
    finally:
        for client in clients:
            client.close()
    started = time.monotonic()
    sse = requests.get(url + "/api/events", stream=True, timeout=10)
    live_client = LiveClient(ws_url(url))
    assert process.stop(timeout=20) is not None
    assert time.monotonic() - started < 8, "open feeds must not hold a stopping worker"
    sse.close()
    live_client.close()


def test_stopping_the_logging_server_ends_feeds_and_tails_at_once(tmp_path_factory, fake_upstream, index_args):
    stack = Stack(tmp_path_factory, fake_upstream.url, "stop", index=index_args())
    try:
        client = LiveClient(ws_url(stack.logserver.url))
        sse = requests.get(stack.logserver.url + "/api/events", stream=True, timeout=10)
        chat = StreamingChat(stack.proxy.url, "slow", events=40, interval_ms=100).start()
        wait_row(stack.logserver.url, chat.id)  # the proxy's upload has begun
        tail = requests.get("%s/api/requests/%s/tail" % (stack.logserver.url, chat.id), stream=True, timeout=10)
        # The upload of the answer still streaming keeps the server up (it lets uploads
        # finish); the UI's streams must end at once all the same.
        stopper = threading.Thread(target=stack.logserver.stop, kwargs={"timeout": 15})
        started = time.monotonic()
        stopper.start()
        assert client.closed.wait(3) and client.close_code == 1001
        messages = [m for _, m, _ in sse_events(sse)]  # returns: the server ended the stream
        assert messages[0]["type"] == "hello"
        assert tail.status_code == 200
        events = list(sse_events(tail))
        assert events[-1][:2] == ("end", {"reason": "server stopping"})
        assert time.monotonic() - started < 3
        chat.wait()
        stopper.join(20)
        stack.logserver.start()
        LiveClient(ws_url(stack.logserver.url)).close()
        client.close()
    finally:
        stack.close()
