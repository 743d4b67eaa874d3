"""POST /api/requests/{id}/replay through the real proxy and logging server, to the fake
upstream, which records what it received (orproxy/testing/recorder.py): the logged request
sent again byte for byte with the caller's key, edits, a streamed answer, `replay_of`
kept by a reindex, the refusals (400, 404, 409, 415, 502, other origins), and the key in
no file and no server output."""
import gzip
import json
import socket
import uuid

import pytest

from api_helpers import ApiClient
from servers import new_logserver
from helpers import http_request, wait_until
from live_helpers import Stack
from log_helpers import host_port, send, split_head
from replay_helpers import RECORD, files_holding, header, new_key, received, replay

pytestmark = pytest.mark.both_indexes  # with SQLite and with PostgreSQL (conftest.py)

CHAT = "/v1/chat/completions"
ORIGINAL_KEY = "sk-original-0123456789abcdef"


@pytest.fixture
def api(logserver):
    return ApiClient(logserver.url)


def original(proxy, tag, body, path=CHAT, headers=()):
    """Send a request through the proxy, recorded by the fake upstream under `tag`; its id."""
    sent = [("Content-Type", "application/json"), ("Authorization", "Bearer " + ORIGINAL_KEY),
            (RECORD, tag), *headers]
    status, _, _, rid = send(proxy.url, "POST", path, sent, body)
    assert rid, status
    return rid


def complete(api, rid, predicate=lambda row: True):
    return api.wait_row(rid, lambda r: r["state"] == "complete" and predicate(r))


def no_key_anywhere(key, logserver, *proxies):
    """The key is in no file of the log dir (the index too), the proxies' directories (their
    spools) and the servers' stdout and stderr."""
    roots = [logserver, logserver.workdir, *(p.workdir for p in proxies)]
    assert files_holding(key, *roots) == []
    assert files_holding(key[-4:], logserver)  # the search does look: the proxy's mask kept these


def test_replay_as_logged_reaches_the_upstream_byte_for_byte_with_the_callers_key(proxy, logserver,
                                                                                  fake_upstream, api):
    tag, key = uuid.uuid4().hex, new_key()
    body = ('{"model":  "fake/replayed", "messages": [{"role": "user", "content": "h\u00e9llo \u2603"}],'
            '\n "temperature": 0.25}').encode()
    rid = original(proxy, tag, body, headers=[("X-Custom", "kept as it was")])
    complete(api, rid)

    status, answer = replay(api, rid, {"key": key})
    assert status == 201, answer
    assert answer["replay_of"] == rid and answer["id"] != rid and answer["status"] == 200
    assert answer["url"] == "/api/requests/" + answer["id"]
    assert answer["sent_to"] == proxy.url + CHAT and answer["sent_without"] == []

    first, again = received(fake_upstream, tag)
    assert again["body"] == body == first["body"]
    assert (again["method"], again["target"]) == ("POST", CHAT)
    assert header(again, "Authorization") == "Bearer " + key
    assert header(again, "X-Orproxy-Replay-Of") == rid
    assert header(again, "X-Custom") == "kept as it was"
    others = lambda record: sorted((n.lower(), v) for n, v in record["headers"]  # noqa: E731
                                   if n.lower() not in ("authorization", "x-orproxy-replay-of"))
    assert others(again) == others(first)  # Host, Content-Length and every other header alike

    row = complete(api, answer["id"], lambda r: r["replay_of"] == rid)
    assert row["model_requested"] == "fake/replayed" and row["status"] == 200
    replays = lambda: [i["id"] for i in api.ok("/api/requests", replay_of=rid)["items"]]  # noqa: E731
    wait_until(lambda: replays() == [answer["id"]], 5, 0.02, "the replay listed")  # (the row above: its file)
    logged = logserver.read(answer["id"], "request")
    assert b"\r\nAuthorization: Bearer ****" + key[-4:].encode() + b"\r\n" in logged  # masked by the proxy
    assert b"\r\nX-Orproxy-Replay-Of: " + rid.encode() + b"\r\n" in logged
    no_key_anywhere(key, logserver, proxy)


def test_edits_change_model_messages_and_params_of_a_compressed_body(proxy, fake_upstream, api):
    tag = uuid.uuid4().hex
    document = {"model": "fake/before", "messages": [{"role": "user", "content": "before"}],
                "temperature": 0.9, "top_p": 0.5}
    rid = original(proxy, tag, gzip.compress(json.dumps(document).encode()),
                   headers=[("Content-Encoding", "gzip")])
    complete(api, rid)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "after"}]
    status, answer = replay(api, rid, {"edits": {"model": "fake/after", "messages": messages,
                                                 "temperature": 0.1, "top_p": None, "seed": 7}})
    assert status == 201, answer
    assert answer["sent_without"] == ["Authorization"]  # masked in the log, and no key given

    again = received(fake_upstream, tag)[-1]
    assert json.loads(again["body"]) == {"model": "fake/after", "messages": messages, "temperature": 0.1,
                                         "seed": 7}
    assert header(again, "Content-Encoding") is None and header(again, "Authorization") is None
    assert header(again, "Content-Length") == str(len(again["body"]))
    row = complete(api, answer["id"], lambda r: r["replay_of"] == rid)
    assert (row["model_requested"], row["message_count"], row["status"]) == ("fake/after", 2, 200)


def test_a_whole_new_body_and_headers_replace_the_logged_ones(proxy, fake_upstream, api):
    tag = uuid.uuid4().hex
    rid = original(proxy, tag, b'{"model": "fake/a", "messages": []}', headers=[("X-Drop-Me", "1")])
    complete(api, rid)
    new = {"model": "fake/b", "messages": [{"role": "user", "content": "new"}]}
    status, answer = replay(api, rid, {"body": new, "headers": {"X-Drop-Me": None, "X-Api-Key": "xk-0123456789ab",
                                                                  "Anthropic-Version": "2023-06-01"}})
    assert status == 201, answer
    again = received(fake_upstream, tag)[-1]
    assert json.loads(again["body"]) == new
    assert header(again, "X-Drop-Me") is None and header(again, "Anthropic-Version") == "2023-06-01"
    assert header(again, "X-Api-Key") == "xk-0123456789ab"


def test_a_streamed_replay_answers_at_the_head_and_is_logged_whole(proxy, fake_upstream, api):
    tag = uuid.uuid4().hex
    body = json.dumps({"model": "fake/stream", "messages": [{"role": "user", "content": "count"}]}).encode()
    rid = original(proxy, tag, body, path=CHAT + "?events=40&interval_ms=150")  # answered as JSON
    complete(api, rid)
    # Replayed as a stream: 40 events 150 ms apart. The answer comes with the head, seconds
    # before the stream ends, which the logging server reads on in the background.
    status, answer = replay(api, rid, {"edits": {"stream": True}, "key": new_key()})
    assert status == 201 and answer["content_type"] == "text/event-stream", answer
    assert answer["sent_to"] == proxy.url + CHAT + "?events=40&interval_ms=150"
    row = api.wait_row(answer["id"])
    assert row["state"] == "in_flight" and row["replay_of"] == rid  # listed at once, still streaming
    done = api.wait_row(answer["id"], lambda r: r["state"] == "complete" and r["reply_preview"], timeout=30)
    assert done["streamed"] is True and done["error"] is None and done["reply_preview"].startswith("tok0 tok1")
    exchange = api.ok("/api/requests/%s/exchange" % answer["id"])
    events = exchange["response"]["body"]["events"]
    assert events[-1]["data"] == "[DONE]" and sum("tok39" in e["data"] for e in events) == 1


def test_replay_of_is_kept_by_a_rebuild_of_the_index_from_the_files(tmp_path, make_proxy, index_args):
    server = new_logserver(tmp_path / "logs", tmp_path / "server", index_args()).start()
    try:
        proxy = make_proxy(logging={"server_url": server.url})
        own = ApiClient(server.url)
        rid = original(proxy, uuid.uuid4().hex, b'{"model": "fake/x", "messages": []}')
        complete(own, rid)
        status, answer = replay(own, rid, {})
        assert status == 201, answer
        complete(own, answer["id"], lambda r: r["replay_of"] == rid)
        server.stop()
        for path in (tmp_path / "logs" / ".ids").glob("index.sqlite3*"):
            path.unlink()
        server.start()  # finds files and no index: rebuilds it from the files
        own = ApiClient(server.url)
        row = own.wait_row(answer["id"], lambda r: r["replay_of"] == rid, timeout=20)
        assert row["metadata"]["parts"]["request"]["head"]["replay_of"] == rid
        # the row above may come from the files while the rebuild is still going: the list waits for it
        wait_until(lambda: [i["id"] for i in own.ok("/api/requests", replay_of=rid.upper())["items"]]
                   == [answer["id"]], 20, 0.1, "the replay listed by replay_of")
    finally:
        server.stop()


# -- what is refused, and then nothing is sent -----------------------------------------

@pytest.fixture
def logged_one(proxy, fake_upstream, api):
    """An exchange logged whole, and what the fake upstream received of it (to check that
    a refused replay sent nothing more)."""
    tag = uuid.uuid4().hex
    rid = original(proxy, tag, b'{"model": "fake/x", "messages": []}')
    complete(api, rid)
    return rid, lambda: len(received(fake_upstream, tag))


@pytest.mark.parametrize("raw, status, parameter, words", [
    (b'{"key": "sk-0123456789abcdef"', 400, None, "not JSON"),
    (b'["edits"]', 400, None, "must be an object"),
    (b'{"model": "fake/y"}', 400, "model", "unknown field"),
    (b'{"sk-or-v1-0123456789abcdef": 1}', 400, None, "unknown field"),
    (b'{"edits": "model=x"}', 400, "edits", "must be an object"),
    (b'{"edits": {"model": "x"}, "body": {}}', 400, "edits", "not both"),
    (b'{"key": "sk with spaces 0123456789"}', 400, "key", "printable"),
    (b'{"headers": {"Host": "evil.example"}}', 400, "headers", "set by the replay"),
    (b'{"headers": {"X-A": "one\\r\\nX-B: two"}}', 400, "headers", "one line"),
    (b'{"body": null}', 400, "body", "leave it out"),
])
def test_bad_asks_are_400s_naming_the_problem(logged_one, api, raw, status, parameter, words):
    rid, count = logged_one
    code, answer = replay(api, rid, raw=raw)
    assert code == status and words in answer["error"]["message"], answer
    assert answer["error"].get("parameter") == parameter
    assert "0123456789" not in json.dumps(answer)  # no value sent ever comes back
    assert count() == 1


def test_edits_of_a_body_that_is_not_json_are_refused(proxy, fake_upstream, api):
    tag = uuid.uuid4().hex
    status, _, _, rid = send(proxy.url, "POST", "/v1/sink", [("Content-Type", "text/plain"), (RECORD, tag)],
                             b"plain text")
    complete(api, rid)
    code, answer = replay(api, rid, {"edits": {"model": "x"}})
    assert code == 400 and answer["error"]["parameter"] == "edits" and "not a JSON object" in answer["error"]["message"]
    assert len(received(fake_upstream, tag)) == 1
    code, answer = replay(api, rid, {})  # as it was logged: fine
    assert code == 201, answer
    assert received(fake_upstream, tag)[-1]["body"] == b"plain text"


def test_unknown_and_malformed_ids_and_other_methods(api):
    code, answer = replay(api, str(uuid.uuid4()), {})
    assert code == 404 and "no exchange" in answer["error"]["message"]
    code, answer = replay(api, "not-a-uuid", {})
    assert code == 400 and answer["error"]["parameter"] == "id"
    status, _, _ = http_request("GET", api.url + "/api/requests/%s/replay" % uuid.uuid4())
    assert status == 405


def test_only_json_is_taken(logged_one, api):
    rid, count = logged_one
    for content_type in ("text/plain", None, "application/x-www-form-urlencoded"):
        code, answer = replay(api, rid, {}, headers={"Content-Type": content_type})
        assert code == 415 and "application/json" in answer["error"]["message"]
    assert count() == 1


def test_a_masked_query_key_needs_the_callers_key(proxy, logserver, fake_upstream, api):
    tag, key = uuid.uuid4().hex, new_key()
    path = CHAT + "?alt=1&key=AIzaSyOriginalKey0123456789"
    rid = original(proxy, tag, b'{"model": "fake/g", "messages": []}', path=path)
    complete(api, rid)
    code, answer = replay(api, rid, {})
    assert code == 400 and answer["error"]["parameter"] == "key" and "masked" in answer["error"]["message"]
    assert len(received(fake_upstream, tag)) == 1
    code, answer = replay(api, rid, {"key": key})
    assert code == 201, answer
    assert answer["sent_to"] == proxy.url + CHAT + "?alt=1&key=****6789"
    assert received(fake_upstream, tag)[-1]["target"] == CHAT + "?alt=1&key=" + key
    complete(api, answer["id"])
    no_key_anywhere(key, logserver, proxy)


def test_a_proxy_that_is_down_is_a_502_naming_it(make_proxy, fake_upstream, api):
    proxy = make_proxy()
    rid = original(proxy, uuid.uuid4().hex, b'{"model": "fake/x", "messages": []}')
    complete(api, rid)
    proxy.stop()
    code, answer = replay(api, rid, {"key": new_key()})
    assert code == 502, answer
    assert answer["error"]["message"] == "the proxy at %s is unreachable: connection refused" % proxy.url


def test_the_proxys_own_error_is_a_502_naming_it_and_the_new_exchange(make_proxy, api):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = "http://127.0.0.1:%d/" % closed.getsockname()[1]
    proxy = make_proxy(routes=[{"source": "/v1/", "destination": dead, "name": "dead"}])
    status, _, _, rid = send(proxy.url, "POST", CHAT, [("Content-Type", "application/json")], b'{"model": "m"}')
    assert status == 502
    complete(api, rid)
    code, answer = replay(api, rid, {})
    assert code == 502 and answer["error"]["code"] == "upstream_unreachable", answer
    assert answer["replay_of"] == rid and answer["status"] == 502
    row = complete(api, answer["id"])
    assert row["replay_of"] == rid and row["error"] == "upstream_unreachable"


def forged(proxy, tag, host):
    """Send a request through the proxy with `Host: host`; its id. The logged URL's host is
    the Host the client sent."""
    body = b'{"model": "fake/x"}'
    with socket.create_connection(host_port(proxy.url), timeout=10) as sock:
        sock.sendall(b"POST %s HTTP/1.1\r\nHost: %s\r\n%s: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                     % (CHAT.encode(), host.encode(), RECORD.encode(), tag.encode(), len(body), body))
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
    return next(v for n, v in split_head(answer)[1] if n.lower() == "x-request-id")


def test_only_proxies_on_loopback_or_given_with_replay_via_are_replayed_through(tmp_path, make_proxy, fake_upstream,
                                                                               index_args):
    """A forged Host must not take the caller's key elsewhere. 0.0.0.0 is no loopback
    address, but Linux connects it to this machine: the proxy, once allowed."""
    server = new_logserver(tmp_path / "logs", tmp_path / "server", index_args()).start()
    try:
        proxy = make_proxy(logging={"server_url": server.url})
        own, tag = ApiClient(server.url), uuid.uuid4().hex
        elsewhere = "0.0.0.0:%d" % proxy.port
        rid = forged(proxy, tag, elsewhere)
        complete(own, rid)
        code, answer = replay(own, rid, {"key": new_key()})
        assert code == 409 and "--replay-via http://%s to replay" % elsewhere in answer["error"]["message"], answer
        assert len(received(fake_upstream, tag)) == 1
        server.stop()
        server.args = [*server.args, "--replay-via", "http://" + elsewhere]
        server.start()
        code, answer = replay(ApiClient(server.url), rid, {})
        assert code == 201 and answer["sent_to"] == "http://%s%s" % (elsewhere, CHAT), answer
        assert header(received(fake_upstream, tag)[-1], "X-Orproxy-Replay-Of") == rid
    finally:
        server.stop()


def test_replay_via_takes_only_an_origin(run_cli):
    result = run_cli("orlogserver", "--replay-via", "http://proxy.lan:5601/v1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "orlogserver: argument --replay-via: 'http://proxy.lan:5601/v1' is not an http(s) origin such as "
        "http://proxy.lan:5601 (see --help)"]


@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.example", "Content-Type": "text/plain"},
    {"Origin": "http://evil.example"},
    {"Origin": "null", "Content-Type": "text/plain"},
    {"Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"},
])
def test_other_origins_cannot_replay(logged_one, api, headers):
    rid, count = logged_one
    code, answer = replay(api, rid, {"key": new_key()}, headers=headers, check=False)  # the guard's 403
    assert code == 403, answer
    assert count() == 1


def test_with_a_token_the_key_goes_in_the_json_and_the_token_never_upstream(tmp_path_factory, fake_upstream, index_args):
    token = "tok-%s" % uuid.uuid4().hex
    stack = Stack(tmp_path_factory, fake_upstream.url, "replay_token", token=token, index=index_args())
    bearer = {"Authorization": "Bearer " + token}

    def completed(exchange_id):  # GET /api/requests/{id} with the token
        def check():
            status, _, data = http_request("GET", "%s/api/requests/%s" % (stack.logserver.url, exchange_id),
                                           headers=bearer)
            return status == 200 and json.loads(data)["state"] == "complete"
        wait_until(check, 10, message="exchange %s complete" % exchange_id)

    try:
        tag, key = uuid.uuid4().hex, new_key()
        rid = original(stack.proxy, tag, b'{"model": "fake/x", "messages": []}')
        completed(rid)
        own = ApiClient(stack.logserver.url)
        code, answer = replay(own, rid, {"key": key}, check=False)
        assert code == 401 and len(received(fake_upstream, tag)) == 1
        code, answer = replay(own, rid, {"key": key}, headers=bearer, check=False)
        assert code == 201, answer
        again = received(fake_upstream, tag)[-1]
        assert header(again, "Authorization") == "Bearer " + key
        assert token not in json.dumps(again["headers"])
        completed(answer["id"])
        no_key_anywhere(key, stack.logserver, stack.proxy)
    finally:
        stack.close()
