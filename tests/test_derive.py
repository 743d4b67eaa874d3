"""LLM fields derived from logged bodies (no sockets): OpenAI, OpenRouter and Anthropic
shapes from their public docs (tests/fixtures/llm), JSON and SSE, plain, gzip, brotli and
deflate; the SSE parser; streamed answers assembled; malformed bodies yield empty fields;
the request's fields derived on their own while the answer is still to come."""
import gzip
import json
import zlib
from pathlib import Path

import brotli
import pytest

from orproxy.logserver.llm.bodies import parse_body
from orproxy.logserver.llm.derive import FIELDS, derive, usage_fields
from orproxy.logserver.llm.httpfile import HeadSniffer, decode_body, parse_head, read_message
from orproxy.logserver.llm.sse import parse_sse

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "llm"
ENCODERS = {
    None: lambda b: b,
    "gzip": lambda b: gzip.compress(b),
    "br": lambda b: brotli.compress(b),
    "deflate": lambda b: zlib.compress(b),
}


def fixture(name):
    return (FIXTURES / name).read_bytes()


def logged(tmp_path, start_line, body, content_type=None, encoding=None, name="part.bin"):
    """A .bin file as the logging server writes it, read back as a Message."""
    headers = []
    if content_type:
        headers.append("Content-Type: " + content_type)
    if encoding:
        headers.append("Content-Encoding: " + encoding)
    head = "\r\n".join([start_line, *headers, "X-Proxy-Path: http://127.0.0.1:5601/v1/x", "", ""])
    path = tmp_path / name
    path.write_bytes(head.encode() + ENCODERS[encoding](body))
    with open(path, "rb") as f:
        return read_message(f, 1 << 20)


def exchange(tmp_path, request_name, response_name, encoding=None, path="/v1/chat/completions"):
    ctype = "text/event-stream" if response_name.endswith(".sse") else "application/json"
    request = logged(tmp_path, "POST %s HTTP/1.1" % path, fixture(request_name),
                     "application/json", name="req.bin")
    response = logged(tmp_path, "HTTP/1.1 200 OK", fixture(response_name), ctype, encoding,
                      name="resp.bin")
    return parse_body(request), parse_body(response)


@pytest.mark.parametrize("encoding", [None, "gzip", "br", "deflate"])
def test_openai_json(tmp_path, encoding):
    request, response = exchange(tmp_path, "openai_chat_request.json", "openai_chat.json", encoding)
    fields = derive(request, response, "/v1/chat/completions")
    assert set(fields) == set(FIELDS)
    assert fields["api"] == "openai"
    assert fields["model_requested"] == "gpt-4o"
    assert fields["model_answered"] == "gpt-4o-2024-08-06"
    assert fields["provider"] is None
    assert fields["stream"] is None
    assert fields["message_count"] == 2
    assert fields["tools_offered"] == 1
    assert fields["tool_calls"] == []
    assert fields["finish_reason"] == "stop"
    assert (fields["prompt_tokens"], fields["completion_tokens"], fields["total_tokens"]) == (19, 10, 29)
    assert (fields["cached_tokens"], fields["reasoning_tokens"], fields["cost"]) == (0, 0, None)
    assert fields["prompt_preview"] == "Hello!"
    assert fields["reply_preview"] == "Hello! How can I assist you today?"


@pytest.mark.parametrize("encoding", [None, "gzip", "br"])
def test_openai_sse_with_usage(tmp_path, encoding):
    request, response = exchange(tmp_path, "openai_chat_request.json", "openai_chat_stream.sse", encoding)
    assert response.kind == "sse"
    assert len(response.stream.events) == 7 and response.stream.events[-1].data == "[DONE]"
    fields = derive(request, response, "/v1/chat/completions")
    assert fields["model_answered"] == "gpt-4o-mini-2024-07-18"
    assert fields["finish_reason"] == "stop"
    assert (fields["prompt_tokens"], fields["completion_tokens"], fields["total_tokens"]) == (9, 12, 21)
    assert fields["reply_preview"] == "Hello! How can I help?"
    message = response.assembled["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "Hello! How can I help?"}
    assert response.assembled["object"] == "chat.completion"


def test_openai_tool_calls_json_and_streamed(tmp_path):
    request, response = exchange(tmp_path, "openai_chat_request.json", "openai_tool_calls.json")
    fields = derive(request, response)
    assert fields["tool_calls"] == ["get_current_weather"]
    assert fields["finish_reason"] == "tool_calls"
    request, response = exchange(tmp_path, "openai_chat_request.json", "openai_tool_calls_stream.sse")
    fields = derive(request, response)
    assert fields["tool_calls"] == ["get_weather"]
    assert fields["finish_reason"] == "tool_calls"
    call = response.assembled["choices"][0]["message"]["tool_calls"][0]
    assert call["id"] == "call_DdmO9pD3xa9XTPNJ32zg2hcA"
    assert json.loads(call["function"]["arguments"]) == {"location": "Paris, France"}


@pytest.mark.parametrize("encoding", [None, "gzip"])
def test_openrouter_json_cost_and_provider(tmp_path, encoding):
    request, response = exchange(tmp_path, "openrouter_request.json", "openrouter_chat.json", encoding,
                                 path="/api/v1/chat/completions")
    fields = derive(request, response, "/api/v1/chat/completions")
    assert fields["provider"] == "OpenAI"
    assert fields["model_requested"] == fields["model_answered"] == "openai/gpt-4o"
    assert fields["cost"] == 0.95
    assert (fields["prompt_tokens"], fields["completion_tokens"], fields["total_tokens"]) == (194, 2, 196)
    assert fields["cached_tokens"] == 0
    assert fields["prompt_preview"] == "What is the meaning of life?"


@pytest.mark.parametrize("encoding", [None, "br"])
def test_openrouter_sse_comments_reasoning_and_cost(tmp_path, encoding):
    request, response = exchange(tmp_path, "openrouter_request.json", "openrouter_stream.sse", encoding)
    assert response.stream.comments == 2
    fields = derive(request, response, "/api/v1/chat/completions")
    assert fields["provider"] == "Anthropic"
    assert fields["model_answered"] == "anthropic/claude-3.7-sonnet"
    assert fields["finish_reason"] == "stop"
    assert fields["cost"] == 0.0051
    assert (fields["prompt_tokens"], fields["cached_tokens"], fields["reasoning_tokens"]) == (1500, 1200, 12)
    message = response.assembled["choices"][0]["message"]
    assert message["content"] == "Forty-two."
    assert message["reasoning"] == "Let me think."


@pytest.mark.parametrize("encoding", [None, "gzip", "br"])
def test_anthropic_json(tmp_path, encoding):
    request, response = exchange(tmp_path, "anthropic_request.json", "anthropic_message.json", encoding,
                                 path="/v1/messages")
    fields = derive(request, response, "/anthropic/v1/messages")
    assert fields["api"] == "anthropic"
    assert fields["model_answered"] == "claude-sonnet-4-20250514"
    assert fields["stream"] is True
    assert fields["tools_offered"] == 1
    assert fields["finish_reason"] == "end_turn"
    # prompt_tokens counts cached input too: 2095 + 1800 read + 0 written
    assert (fields["prompt_tokens"], fields["completion_tokens"], fields["total_tokens"]) == (3895, 503, 4398)
    assert fields["cached_tokens"] == 1800
    assert fields["reasoning_tokens"] is None
    assert fields["reply_preview"] == "Hi! My name is Claude."
    assert fields["prompt_preview"] == "What is the weather like in San Francisco?"


@pytest.mark.parametrize("encoding", [None, "gzip", "br"])
def test_anthropic_sse_with_tool_use(tmp_path, encoding):
    request, response = exchange(tmp_path, "anthropic_request.json", "anthropic_stream.sse", encoding,
                                 path="/v1/messages")
    fields = derive(request, response, "/v1/messages")
    assert fields["api"] == "anthropic"
    assert fields["finish_reason"] == "tool_use"
    assert fields["tool_calls"] == ["get_weather"]
    assert (fields["prompt_tokens"], fields["completion_tokens"], fields["total_tokens"]) == (472, 89, 561)
    message = response.assembled
    assert message["stop_reason"] == "tool_use"
    assert message["content"][0] == {"type": "text", "text": "Okay, let's check the weather for San Francisco, CA:"}
    assert message["content"][1]["input"] == {"location": "San Francisco, CA"}
    assert [e.event for e in response.stream.events][:3] == ["message_start", "content_block_start", "ping"]


def test_anthropic_thinking_stream(tmp_path):
    request, response = exchange(tmp_path, "anthropic_request.json", "anthropic_thinking_stream.sse")
    fields = derive(request, response, "/v1/messages")
    assert (fields["prompt_tokens"], fields["cached_tokens"], fields["completion_tokens"]) == (3040, 2000, 150)
    thinking, text = response.assembled["content"]
    assert thinking["type"] == "thinking" and "453 = 400 + 50 + 3" in thinking["thinking"]
    assert thinking["signature"].startswith("EqQBCgIY")
    assert text == {"type": "text", "text": "27 * 453 = 12,231"}
    assert fields["reply_preview"] == "27 * 453 = 12,231"


def test_a_stream_cut_off_midway_still_yields_what_came(tmp_path):
    body = fixture("anthropic_stream.sse")
    cut = body[:body.index(b'"partial_json":" \\"San')]
    response = parse_body(logged(tmp_path, "HTTP/1.1 200 OK", cut, "text/event-stream", "gzip"))
    fields = derive(None, response, "/v1/messages")
    assert fields["tool_calls"] == ["get_weather"]
    assert fields["prompt_tokens"] == 472 and fields["finish_reason"] is None
    assert response.stream.events[-1].complete is False
    assert response.assembled["content"][1]["input"] == '{"location":'


@pytest.mark.parametrize("body, ctype", [
    (b"", "application/json"),
    (b"{not json", "application/json"),
    (b"[1, 2, 3]", "application/json"),
    (b'{"choices": "nope", "usage": [1], "model": 5}', "application/json"),
    (b'{"choices": [null, 3, {"message": "x", "finish_reason": 7}], "usage": {"prompt_tokens": "a"}}', None),
    (b"data: {\"choices\": [{\"delta\": null}]}\n\ndata: [DONE]\n\n", "text/event-stream"),
    (b"event: message_start\ndata: {\"type\": \"message_start\", \"message\": 3}\n\n", "text/event-stream"),
    (b"event: message_delta\ndata: {\"type\": \"message_delta\"}\n\n", "text/event-stream"),
    (b"\x00\x01\x02binary", "application/octet-stream"),
    (b'{"cost": NaN, "usage": {"cost": Infinity}}', "application/json"),
    (b"<html>502 Bad Gateway</html>", "text/html"),
])
def test_malformed_bodies_leave_fields_empty_and_never_raise(tmp_path, body, ctype):
    response = parse_body(logged(tmp_path, "HTTP/1.1 200 OK", body, ctype))
    request = parse_body(logged(tmp_path, "POST /v1/chat/completions HTTP/1.1", body, ctype, name="r.bin"))
    fields = derive(request, response, "/v1/chat/completions")
    assert set(fields) == set(FIELDS)
    for name in ("prompt_tokens", "completion_tokens", "total_tokens", "cost", "model_answered"):
        assert fields[name] is None, name


def read_stored(path, limit):
    with open(path, "rb") as f:
        return read_message(f, limit)


def test_corrupt_encoding_is_reported_not_raised(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n\r\nnot gzip at all")
    message = read_stored(path, 1000)
    assert message.body.decode_error and message.body.data == b"not gzip at all"
    path.write_bytes(b"HTTP/1.1 200 OK\r\nContent-Encoding: zstd\r\n\r\nabc")
    assert "zstd" in read_stored(path, 1000).body.decode_error


def test_decoding_is_bounded():
    data, truncated, error = decode_body(gzip.compress(b"a" * 10_000_000), "gzip", 1000)
    assert (len(data), truncated, error) == (1000, True, None)
    data, truncated, error = decode_body(brotli.compress(b"b" * 10_000_000), "br", 1000)
    assert (len(data), truncated, error) == (1000, True, None)
    data, truncated, _ = decode_body(b"plain", None, 1000)
    assert (data, truncated) == (b"plain", False)


def test_head_parsing_and_sniffing():
    head = parse_head(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Proxy-Path: "
                      b"http://127.0.0.1:5601/api/v1/chat/completions?a=1\r\n\r\nbody")
    assert head.summary() == {"method": "POST", "path": "/api/v1/chat/completions?a=1"}
    assert parse_head(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n").__class__ is type(None)
    sniffer = HeadSniffer()
    sniffer.feed(b"HTTP/1.1 429 Too Many\r\nContent-")
    assert not sniffer.done
    sniffer.feed(b"Type: application/json\r\n\r\n{}")
    assert sniffer.head.summary() == {"status": 429, "content_type": "application/json"}


def test_sse_parser_follows_the_spec():
    stream = parse_sse("data: a\r\ndata: b\r\n\r\n: comment\n\nevent: x\nid: 7\ndata:c\n\n"
                       "data: \u2028kept\n\ndata: last")
    assert [(e.event, e.data, e.id, e.complete) for e in stream.events] == [
        (None, "a\nb", None, True), ("x", "c", "7", True), (None, "\u2028kept", "7", True),
        (None, "last", "7", False)]
    assert stream.comments == 1


def test_usage_normalisation():
    assert usage_fields({"input_tokens": 10, "output_tokens": 5}) == {
        "prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15, "cached_tokens": None,
        "cache_write_tokens": None, "reasoning_tokens": None, "cost": None}
    responses_api = usage_fields({"input_tokens": 100, "output_tokens": 20, "total_tokens": 120,
                                  "input_tokens_details": {"cached_tokens": 64},
                                  "output_tokens_details": {"reasoning_tokens": 8}})
    assert (responses_api["prompt_tokens"], responses_api["cached_tokens"], responses_api["reasoning_tokens"]) \
        == (100, 64, 8)
    assert usage_fields({"prompt_tokens": 3, "total_tokens": 3})["completion_tokens"] is None
    assert usage_fields({})["total_tokens"] is None
    anthropic = usage_fields({"input_tokens": 5, "cache_read_input_tokens": 100,
                              "cache_creation_input_tokens": 20, "output_tokens": 7})
    assert (anthropic["prompt_tokens"], anthropic["cached_tokens"], anthropic["cache_write_tokens"]) == (125, 100, 20)


def test_reported_cost_adds_the_upstream_inference_cost_of_a_bring_your_own_key_request():
    assert usage_fields({"prompt_tokens": 1, "cost": 0.25})["cost"] == 0.25
    byok = {"prompt_tokens": 1, "cost": 0.01, "is_byok": True, "cost_details": {"upstream_inference_cost": 0.2}}
    assert usage_fields(byok)["cost"] == pytest.approx(0.21)
    not_byok = dict(byok, is_byok=False)
    assert usage_fields(not_byok)["cost"] == 0.01


def _long_stream(first, middle, last, repeat):
    return (first + middle * repeat + last).encode()


def test_long_streams_are_skimmed_for_the_fields_and_give_the_same_answer(tmp_path):
    """A 2,000-event answer is parsed in part for the derived fields (bodies.skim): the
    fields must equal those of a full parse, tool calls in the middle included."""
    chunk = ('data: {"id":"c","object":"chat.completion.chunk","model":"m-1","choices":[{"index":0,'
             '"delta":{"content":"word "},"finish_reason":null}]}\n\n')
    tool = ('data: {"id":"c","object":"chat.completion.chunk","model":"m-1","choices":[{"index":0,'
            '"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":'
            '{"name":"lookup","arguments":"{}"}}]},"finish_reason":null}]}\n\n')
    end = ('data: {"id":"c","object":"chat.completion.chunk","model":"m-1","choices":[{"index":0,'
           '"delta":{},"finish_reason":"tool_calls"}]}\n\n'
           'data: {"id":"c","object":"chat.completion.chunk","model":"m-1","choices":[],'
           '"usage":{"prompt_tokens":7,"completion_tokens":2001,"total_tokens":2008}}\n\ndata: [DONE]\n\n')
    body = _long_stream(chunk * 1000 + tool, chunk, end, 1000)
    message = logged(tmp_path, "HTTP/1.1 200 OK", body, "text/event-stream", "gzip")
    full, skimmed = parse_body(message), parse_body(message, skim=True)
    assert len(skimmed.stream.events) < 100 < len(full.stream.events)
    expected = derive(None, full, "/v1/chat/completions")
    got = derive(None, skimmed, "/v1/chat/completions")
    # but the answer's key (conversation linking) is only given for a whole answer
    assert got.pop("answer_key") is None and expected.pop("answer_key") is not None
    assert got == expected
    assert expected["tool_calls"] == ["lookup"] and expected["completion_tokens"] == 2001
    assert expected["finish_reason"] == "tool_calls" and expected["reply_preview"].startswith("word word")

    start = ('event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message",'
             '"role":"assistant","model":"claude-x","content":[],"usage":{"input_tokens":9,"output_tokens":1}}}\n\n'
             'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
             '"content_block":{"type":"text","text":""}}\n\n')
    delta = ('event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
             '"delta":{"type":"text_delta","text":"more "}}\n\n')
    tool_block = ('event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
                  'event: content_block_start\ndata: {"type":"content_block_start","index":1,"content_block":'
                  '{"type":"tool_use","id":"toolu_1","name":"search","input":{}}}\n\n'
                  'event: content_block_delta\ndata: {"type":"content_block_delta","index":1,'
                  '"delta":{"type":"input_json_delta","partial_json":"{}"}}\n\n'
                  'event: content_block_stop\ndata: {"type":"content_block_stop","index":1}\n\n')
    stop = ('event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"tool_use"},'
            '"usage":{"output_tokens":1500}}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n')
    body = (start + delta * 1500 + tool_block + delta * 500 + stop).encode()
    message = logged(tmp_path, "HTTP/1.1 200 OK", body, "text/event-stream", name="a.bin")
    full, skimmed = parse_body(message), parse_body(message, skim=True)
    assert len(skimmed.stream.events) < 100
    expected = derive(None, full, "/v1/messages")
    got = derive(None, skimmed, "/v1/messages")
    assert got.pop("answer_key") is None and expected.pop("answer_key") is not None
    assert got == expected
    assert expected["tool_calls"] == ["search"] and expected["completion_tokens"] == 1500


def test_an_exchange_derived_in_two_steps_comes_out_as_derived_at_once(tmp_path):
    """The request's fields, derived while the answer streams, are finished with the
    response later, and come out the same as derived in one go."""
    from orproxy.logserver.store.deriving import derive_document, derive_request_document
    from orproxy.logserver.store.linking import Linker
    from orproxy.logserver.store.logdir import LogDir

    log_dir = LogDir(str(tmp_path / "logs"))
    (tmp_path / "logs" / "req.bin").write_bytes(
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Type: application/json\r\n\r\n"
        + fixture("openai_chat_request.json"))
    (tmp_path / "logs" / "resp.bin").write_bytes(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + fixture("openai_chat_stream.sse"))
    request = {"file": "req.bin", "completed_at": 1.0, "head": {"method": "POST", "path": "/v1/chat/completions"}}
    both = {"request": request, "response": {"file": "resp.bin", "completed_at": 2.0}}
    exchange_id = "7e0b3c4d-0000-4000-8000-000000000001"
    early = derive_request_document(log_dir, {"id": exchange_id, "parts": {"request": request}}, Linker()).fields
    assert early["parts"] == ["request"]
    assert (early["api"], early["model_requested"], early["model_answered"]) == ("openai", "gpt-4o", None)
    assert early["conversation_id"] == exchange_id and early["turn_key"]
    at_once = derive_document(log_dir, {"id": exchange_id, "parts": both}, Linker())
    in_two_steps = derive_document(log_dir, {"id": exchange_id, "parts": both, "derived": early}, Linker())
    assert {k: v for k, v in in_two_steps.fields.items() if k != "at"} == \
        {k: v for k, v in at_once.fields.items() if k != "at"}
    assert in_two_steps.fields["model_requested"] == "gpt-4o" and in_two_steps.fields["completion_tokens"]
    assert set(in_two_steps.fields) == {"version", "parts", "at", "new_from", *FIELDS}
    assert in_two_steps.text == at_once.text and in_two_steps.text


def test_the_request_fields_are_derived_when_the_request_ends(tmp_path, monkeypatch):
    """In process: Ingest, Deriver and Index as the logging server wires them, the response
    still arriving when the request ends. The request's fields come with the update that
    ends the request (an exchange in flight is listed by its model); if deriving them
    fails, the end of the response still derives everything."""
    import io
    import uuid

    import gevent

    from orproxy.logserver.store import deriving as deriving_module
    from orproxy.logserver.store.deriving import Deriver
    from orproxy.logserver.store.index import Index
    from orproxy.logserver.store.ingest import Ingest
    from orproxy.logserver.store.logdir import LogDir
    from orproxy.logserver.web import listing

    log_dir = LogDir(str(tmp_path))
    index = Index(log_dir.path)
    ingest = Ingest(log_dir, Deriver(log_dir))
    ingest.subscribe(lambda record, events: index.put(record.document))
    request = b"POST /v1/chat/completions HTTP/1.1\r\n\r\n" + fixture("openai_chat_request.json")
    response = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + fixture("openai_chat.json")

    class Slowly(object):
        """An upload whose pieces arrive 0.1 s apart."""

        def __init__(self, data):
            self.pieces = [data[:40], data[40:]]

        def readline(self, size):
            gevent.sleep(0.1)
            return self.pieces.pop(0) if self.pieces else b""

    def exchange(rid):
        answer = gevent.spawn(ingest.store_part, rid, "response", {"wsgi.input": Slowly(response)})
        gevent.sleep(0.15)  # the response has begun
        ingest.store_part(rid, "request", {"wsgi.input": io.BytesIO(request)})
        index.flush(5)
        early = log_dir.read_metadata(rid), index.read(listing.get_row, rid)
        answer.get()
        index.flush(5)
        return early, (log_dir.read_metadata(rid), index.read(listing.get_row, rid))

    try:
        (document, row), (final, final_row) = exchange(str(uuid.uuid4()))
        assert document["parts"]["response"]["complete"] is False
        assert document["derived"]["parts"] == ["request"]
        assert (row["state"], row["model"], row["model_requested"], row["api"]) == ("in_flight", "gpt-4o", "gpt-4o", "openai")
        assert row["model_answered"] is None and row["prompt_tokens"] is None
        assert final["derived"]["parts"] == ["request", "response"]
        assert (final_row["model"], final_row["model_requested"]) == ("gpt-4o-2024-08-06", "gpt-4o")
        assert final_row["prompt_tokens"]

        def broken(*args):
            raise RuntimeError("a bug")
        monkeypatch.setattr(deriving_module, "derive_request_document", broken)
        (document, row), (final, final_row) = exchange(str(uuid.uuid4()))
        assert document["derived"]["parts"] == ["request"] and "a bug" in document["derived"]["error"]
        assert row["model"] is None
        assert "error" not in final["derived"] and final_row["model_requested"] == "gpt-4o"
        assert final_row["prompt_tokens"]
    finally:
        index.close()
        log_dir.close()
