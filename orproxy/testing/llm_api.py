"""The fake upstream's LLM endpoints: OpenAI chat completions, Anthropic messages (each as
JSON or SSE) and a models list, shaped as the providers answer.

Every streamed event's JSON carries the wall-clock ``time.time_ns()`` at which it was
written (``orproxy_sent_ns``), so a client can measure what a proxy adds per event.
"""
import json
import time

from orproxy.testing.answers import (NO_CACHE, SSE, STATS, BadParam, error, int_param,
                                     json_request, json_response, query, sleep_ms)

__all__ = ["chat_completions", "messages", "models", "stream_piece", "stream_text"]


def stream_piece(i):
    """The text of content event i in the chat/messages streams."""
    return "tok%d " % i


def stream_text(events=5):
    """The full text a client assembles from a chat/messages stream of ``events``."""
    return "".join(stream_piece(i) for i in range(events))


def _stream_params(environ):
    q = query(environ)
    return (int_param(q, "events", 5), int_param(q, "interval_ms", 0),
            int_param(q, "first_delay_ms", 0))


def _parse(environ, start_response):
    """(request JSON, stream parameters), or the 400 answer for a bad request."""
    try:
        return json_request(environ), _stream_params(environ), None
    except (ValueError, BadParam) as exc:
        return None, None, error(start_response, 400, "bad request: %s" % exc,
                                 "invalid_request_error")


def _start_stream(start_response):
    write = start_response("200 OK", [SSE, NO_CACHE])
    write(b"")          # pywsgi sends no head until a write: flush it now


# --------------------------------------------------------------------------------------
# OpenAI chat completions

_CHAT_CONTENT = ("This is the fake upstream's answer, padded to make the completion about "
                 "one kilobyte long like a short real one. " * 8)[:720]
_CREATED = 1700000000
_USAGE = {"prompt_tokens": 12, "completion_tokens": 150, "total_tokens": 162}

# Template with two holes: the request counter and the JSON-encoded model.
_CHAT_JSON = (
    b'{"id":"chatcmpl-fake-%d","object":"chat.completion","created":'
    + str(_CREATED).encode() + b',"model":%s,"system_fingerprint":null,"choices":['
    + json.dumps({"index": 0, "message": {"role": "assistant", "content": _CHAT_CONTENT,
                                          "refusal": None},
                  "logprobs": None, "finish_reason": "stop"}).encode()
    + b'],"usage":' + json.dumps(_USAGE).encode() + b'}'
)

# Holes: counter, model, delta JSON, finish_reason JSON, sent_ns.
_CHUNK = (b'data: {"id":"chatcmpl-fake-%d","object":"chat.completion.chunk","created":'
          + str(_CREATED).encode() + b',"model":%s,"system_fingerprint":null,'
          b'"choices":[{"index":0,"delta":%s,"logprobs":null,"finish_reason":%s}],'
          b'"orproxy_sent_ns":%d}\n\n')
_USAGE_CHUNK = (b'data: {"id":"chatcmpl-fake-%d","object":"chat.completion.chunk","created":'
                + str(_CREATED).encode() + b',"model":%s,"system_fingerprint":null,'
                b'"choices":[],"usage":%s,"orproxy_sent_ns":%d}\n\n')
_DONE = b"data: [DONE]\n\n"


def chat_completions(environ, start_response):
    """POST .../chat/completions; ``"stream": true`` gives SSE (with a usage chunk when
    ``stream_options.include_usage``) [events=5, interval_ms=0, first_delay_ms=0]."""
    req, params, bad = _parse(environ, start_response)
    if bad is not None:
        return bad
    events, interval_ms, first_delay_ms = params
    n = STATS["requests"]
    model = json.dumps(req.get("model") or "fake-model").encode()
    if not req.get("stream"):
        sleep_ms(first_delay_ms)
        return json_response(start_response, "200 OK", _CHAT_JSON % (n, model))
    opts = req.get("stream_options")
    include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
    _start_stream(start_response)
    return _chat_stream(n, model, events, interval_ms, first_delay_ms, include_usage)


def _chat_stream(n, model, events, interval_ms, first_delay_ms, include_usage):
    sleep_ms(first_delay_ms)
    yield _CHUNK % (n, model, b'{"role":"assistant","content":""}', b"null", time.time_ns())
    for i in range(events):
        if i:
            sleep_ms(interval_ms)
        delta = json.dumps({"content": stream_piece(i)}).encode()
        yield _CHUNK % (n, model, delta, b"null", time.time_ns())
    yield _CHUNK % (n, model, b"{}", b'"stop"', time.time_ns())
    if include_usage:
        usage = {"prompt_tokens": 12, "completion_tokens": events,
                 "total_tokens": 12 + events}
        yield _USAGE_CHUNK % (n, model, json.dumps(usage).encode(), time.time_ns())
    yield _DONE


# --------------------------------------------------------------------------------------
# Anthropic messages

def messages(environ, start_response):
    """POST .../messages: the Messages API, JSON or SSE (parameters as chat_completions)."""
    req, params, bad = _parse(environ, start_response)
    if bad is not None:
        return bad
    events, interval_ms, first_delay_ms = params
    n = STATS["requests"]
    model = req.get("model") or "claude-fake"
    msg_id = "msg_fake_%d" % n
    if not req.get("stream"):
        sleep_ms(first_delay_ms)
        body = {"id": msg_id, "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": _CHAT_CONTENT}],
                "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": 12, "output_tokens": 150}}
        return json_response(start_response, "200 OK", body)
    _start_stream(start_response)
    return _messages_stream(msg_id, model, events, interval_ms, first_delay_ms)


def _anthropic_event(name, data):
    data["orproxy_sent_ns"] = time.time_ns()
    return b"event: %s\ndata: %s\n\n" % (name.encode(), json.dumps(data).encode())


def _messages_stream(msg_id, model, events, interval_ms, first_delay_ms):
    sleep_ms(first_delay_ms)
    yield _anthropic_event("message_start", {"type": "message_start", "message": {
        "id": msg_id, "type": "message", "role": "assistant", "model": model,
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 1}}})
    yield _anthropic_event("content_block_start", {
        "type": "content_block_start", "index": 0,
        "content_block": {"type": "text", "text": ""}})
    yield _anthropic_event("ping", {"type": "ping"})
    for i in range(events):
        if i:
            sleep_ms(interval_ms)
        yield _anthropic_event("content_block_delta", {
            "type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": stream_piece(i)}})
    yield _anthropic_event("content_block_stop", {"type": "content_block_stop", "index": 0})
    yield _anthropic_event("message_delta", {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": events}})
    yield _anthropic_event("message_stop", {"type": "message_stop"})


# --------------------------------------------------------------------------------------
# Models

_MODELS_BODY = json.dumps({"object": "list", "data": [
    {"id": "fake/model-a", "object": "model", "created": _CREATED, "owned_by": "fake"},
    {"id": "fake/model-b", "object": "model", "created": _CREATED, "owned_by": "fake"},
    {"id": "claude-fake", "object": "model", "created": _CREATED, "owned_by": "fake"},
]}).encode()


def models(environ, start_response):
    """GET .../models: a small OpenAI models list."""
    return json_response(start_response, "200 OK", _MODELS_BODY)
