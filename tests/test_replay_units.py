"""Unit tests of what a replay sends (orproxy/logserver/web/replay_plan.py) and of the
`replay_of` a logged request head carries (httpfile.py); no sockets."""
import gzip
import json
import uuid

import pytest

from orproxy.logserver.llm.httpfile import parse_head
from orproxy.logserver.web.query import ParamError
from orproxy.logserver.web.replay import parse_origin, scrub
from orproxy.logserver.web.replay_plan import BadAsk, RefusedReplay, parse_ask, plan

RID = "4f2cb051-6ec2-490c-b30c-ace08281d76c"
KEY = "sk-or-v1-caller0123456789"


def logged(*headers, line="POST /api/v1/chat/completions HTTP/1.1",
           called="http://127.0.0.1:5601/api/v1/chat/completions"):
    lines = [line, "Host: openrouter.ai", *headers] + (["X-Proxy-Path: " + called] if called else [])
    return parse_head(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))


def sent(head, body=b'{"model": "m"}', ask=None):
    return plan(head, body, RID, parse_ask(ask or {}))


def test_as_logged_the_body_is_the_same_bytes_and_the_framing_is_recomputed():
    body = b'{"model":  "m", "x": "\xc3\xa9"}'
    p = sent(logged("Content-Type: application/json", "Content-Length: 999", "Transfer-Encoding: chunked",
                    "Connection: keep-alive", "X-Orproxy-Replay-Of: " + str(uuid.uuid4()), "Accept: */*"), body)
    assert p.body is body
    assert (p.scheme, p.host, p.port, p.method, p.target) == ("http", "127.0.0.1", 5601, "POST",
                                                              "/api/v1/chat/completions")
    assert p.headers == [("Host", "127.0.0.1:5601"), ("Content-Type", "application/json"), ("Accept", "*/*"),
                         ("Content-Length", str(len(body))), ("X-Orproxy-Replay-Of", RID)]
    assert p.origin == "http://127.0.0.1:5601" and p.sent_without == []


def test_the_key_replaces_each_masked_secret_after_its_scheme_word_and_cookies_are_left_out():
    head = logged("Authorization: Bearer ****abcd", "X-Api-Key: ****wxyz", "Api-Key: ****",
                  "Cookie: ****", "X-Other: ****ab but not masked")
    p = sent(head, ask={"key": KEY})
    values = dict(p.headers)
    assert values["Authorization"] == "Bearer " + KEY and values["X-Api-Key"] == KEY == values["Api-Key"]
    assert "Cookie" not in values and values["X-Other"] == "****ab but not masked"
    assert p.sent_without == ["Cookie"]
    without = sent(head)
    assert without.sent_without == ["Authorization", "X-Api-Key", "Api-Key", "Cookie"]
    assert [n for n, _ in without.headers if n in ("Authorization", "X-Api-Key", "Api-Key", "Cookie")] == []


def test_a_key_with_nothing_masked_goes_as_authorization_and_headers_win_over_it():
    assert ("Authorization", "Bearer " + KEY) in sent(logged(), ask={"key": KEY}).headers
    p = sent(logged("Authorization: Bearer ****abcd", "X-Twice: 1", "X-Twice: 2", "X-Gone: 1"),
             ask={"key": KEY, "headers": {"authorization": "Basic dXNlcjpwYXNz", "x-twice": "3",
                                          "X-Gone": None, "X-New": "n"}})
    assert [h for h in p.headers if h[0].lower() in ("authorization", "x-twice", "x-gone", "x-new")] == [
        ("Authorization", "Basic dXNlcjpwYXNz"), ("X-Twice", "3"), ("X-New", "n")]


def test_masked_query_values_take_the_key_or_the_replay_is_refused():
    head = logged(called="http://localhost:5601/v1beta/models/g:streamGenerateContent?alt=sse&key=****XYZ9&k=v")
    with pytest.raises(ParamError) as refused:
        sent(head)
    assert refused.value.parameter == "key" and "'key'" in str(refused.value)
    p = sent(head, ask={"key": "AIza+/="})
    assert p.target == "/v1beta/models/g:streamGenerateContent?alt=sse&key=AIza%2B%2F%3D&k=v"
    assert p.shown_url.endswith("key=****XYZ9&k=v")


def test_edits_merge_into_a_decoded_body_and_null_removes():
    document = {"model": "a", "messages": [{"role": "user", "content": "x"}], "top_p": 1, "stream": False}
    head = logged("Content-Type: application/json", "Content-Encoding: gzip")
    p = sent(head, gzip.compress(json.dumps(document).encode()),
             {"edits": {"model": "b", "top_p": None, "temperature": 0, "messages": []}})
    assert json.loads(p.body) == {"model": "b", "messages": [], "stream": False, "temperature": 0}
    assert "Content-Encoding" not in dict(p.headers) and dict(p.headers)["Content-Length"] == str(len(p.body))
    replaced = sent(logged(), b"not json", {"body": [1, "two"]})
    assert replaced.body == b'[1,"two"]' and dict(replaced.headers)["Content-Type"] == "application/json"


@pytest.mark.parametrize("body, words", [
    (b"not json", "not a JSON object"), (b"[1]", "not a JSON object"), (b"\x1f\x8b broken", "cannot be decoded"),
])
def test_edits_need_a_json_object_body(body, words):
    head = logged("Content-Encoding: gzip") if body.startswith(b"\x1f\x8b") else logged()
    with pytest.raises(ParamError) as refused:
        sent(head, body, {"edits": {"model": "x"}})
    assert refused.value.parameter == "edits" and words in str(refused.value)


@pytest.mark.parametrize("ask, parameter", [
    ({"key": 12}, "key"), ({"key": "has space"}, "key"), ({"key": ""}, "key"), ({"key": "k" * 9000}, "key"),
    ({"headers": []}, "headers"), ({"headers": {"Bad Name": "x"}}, "headers"),
    ({"headers": {"Content-Length": "1"}}, "headers"), ({"headers": {"X": "a\nb"}}, "headers"),
    ({"headers": {"X": 1}}, "headers"), ({"edits": []}, "edits"), ({"body": None}, "body"),
    ({"edits": {"a": 1}, "body": {}}, "edits"), ({"messages": []}, "messages"),
])
def test_mistakes_in_the_ask_name_the_field(ask, parameter):
    with pytest.raises(ParamError) as refused:
        parse_ask(ask)
    assert refused.value.parameter == parameter


@pytest.mark.parametrize("ask", [[], "x", {KEY: 1}, {"Model": 1}])
def test_mistakes_that_no_field_owns_echo_nothing(ask):
    with pytest.raises(BadAsk) as refused:
        parse_ask(ask)
    assert KEY not in str(refused.value)


def test_no_message_holds_a_value_sent():
    secret = "sk-secret-0123456789abcdef"
    for ask in ({"key": secret + " x"}, {"headers": {"X-Key": secret + "\r\n"}}, {secret: 1}, {"key": [secret]}):
        with pytest.raises((ParamError, BadAsk)) as refused:
            parse_ask(ask)
        assert secret not in str(refused.value) and secret not in str(getattr(refused.value, "parameter", ""))
    assert scrub("connect to x?key=%s failed" % KEY, parse_ask({"key": KEY})) == "connect to x?key=**** failed"


@pytest.mark.parametrize("called, words", [
    (None, "no X-Proxy-Path"), ("ws://127.0.0.1:5601/ws", "WebSocket"), ("ftp://127.0.0.1/x", "http(s)"),
    ("http://user@127.0.0.1:5601/v1", "names a user"), ("http://127.0.0.1:99999/v1", "invalid port"),
    ("http://127.0.0.1:5601/a b", "can be sent again"),
])
def test_exchanges_that_cannot_be_replayed(called, words):
    with pytest.raises(RefusedReplay) as refused:
        sent(logged(called=called))
    assert words in str(refused.value)


def test_replay_of_is_read_from_the_request_head_also_without_a_request_line():
    assert parse_head(b"POST /v1 HTTP/1.1\r\nX-Orproxy-Replay-Of: %s\r\n\r\n" % RID.upper().encode()) \
        .summary()["replay_of"] == RID
    go = parse_head(b"X-Orproxy-Replay-Of: %s\r\nContent-Type: application/json\r\n\r\n{}" % RID.encode())
    assert go.summary()["replay_of"] == RID  # the Go proxy logs the header lines only
    assert "replay_of" not in parse_head(b"POST /v1 HTTP/1.1\r\nX-Orproxy-Replay-Of: ../../x\r\n\r\n").summary()
    assert "replay_of" not in parse_head(b"HTTP/1.1 200 OK\r\nX-Orproxy-Replay-Of: %s\r\n\r\n" % RID.encode()).summary()


def test_replay_via_takes_origins_only():
    assert parse_origin("http://proxy.lan:5601/") == "http://proxy.lan:5601"
    assert parse_origin("https://Proxy.Lan") == "https://proxy.lan:443"
    for bad in ("proxy.lan:5601", "http://proxy.lan/v1", "http://u@proxy.lan", "ws://proxy.lan", "http://x:99999"):
        with pytest.raises(ValueError):
            parse_origin(bad)


def test_a_proxy_not_to_replay_through_is_refused_before_the_key_is_asked_for():
    def refuse(host, origin):
        assert (host, origin) == ("proxy.lan", "http://proxy.lan:5601")
        raise RefusedReplay("not this one")
    head = logged(called="http://proxy.lan:5601/v1/x?key=****abcd")
    with pytest.raises(RefusedReplay):
        plan(head, b"", RID, parse_ask({}), refuse)
