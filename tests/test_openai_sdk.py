"""The official ``openai`` Python SDK through orproxy (``base_url``), streaming and not,
under both servers; what it sent is logged with its key masked.
"""
import asyncio
import time

import openai
import pytest

from helpers import stream_text

API_KEY = "sk-test-0123456789abcdef0123456789wxyz"
MESSAGES = [{"role": "user", "content": "Say hello"}]


def client(proxy_url, prefix="/v1", **kwargs):
    return openai.OpenAI(base_url=proxy_url + prefix, api_key=API_KEY, max_retries=0,
                         timeout=20, **kwargs)


@pytest.mark.parametrize("prefix", ["/v1", "/api/v1", "/openrouter"])
def test_chat_completion(any_proxy, prefix):
    with client(any_proxy.url, prefix) as c:
        raw = c.chat.completions.with_raw_response.create(model="fake/model-a",
                                                          messages=MESSAGES)
        completion = raw.parse()
    assert raw.headers.get("x-request-id")
    assert completion.object == "chat.completion"
    assert completion.model == "fake/model-a"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content.startswith("This is the fake upstream's answer")
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.total_tokens == 162


def test_chat_completion_stream(any_proxy):
    with client(any_proxy.url) as c:
        stream = c.chat.completions.create(
            model="fake/model-b", messages=MESSAGES, stream=True,
            stream_options={"include_usage": True},
            extra_query={"events": 12, "interval_ms": 20})
        chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == stream_text(12)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12
    assert any(ch.choices and ch.choices[0].finish_reason == "stop" for ch in chunks)
    assert all(ch.model == "fake/model-b" for ch in chunks)


def test_chat_completion_stream_arrives_while_generated(proxy):
    """Tokens reach the SDK as the upstream sends them, not at the end."""
    arrivals = []
    with client(proxy.url) as c:
        stream = c.chat.completions.create(
            model="m", messages=MESSAGES, stream=True,
            extra_query={"events": 5, "interval_ms": 200})
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.monotonic())
    assert len(arrivals) == 5
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert sum(g > 0.1 for g in gaps) >= len(gaps) - 1, gaps


def test_models_list(any_proxy):
    with client(any_proxy.url, "/openrouter") as c:
        ids = [m.id for m in c.models.list()]
    assert ids == ["fake/model-a", "fake/model-b", "claude-fake"]


def test_upstream_error_reaches_the_sdk_as_an_api_error(proxy):
    with client(proxy.url) as c:
        with pytest.raises(openai.RateLimitError) as info:
            c.post("/status/429", cast_to=object, body={})
    assert info.value.status_code == 429
    assert info.value.response.headers.get("x-request-id")


def test_proxy_error_reaches_the_sdk_with_its_code(proxy):
    with client(proxy.url, "/unrouted") as c:
        with pytest.raises(openai.NotFoundError) as info:
            c.chat.completions.create(model="m", messages=MESSAGES)
    assert info.value.code == "no_route"
    assert info.value.response.headers.get("x-request-id")


def test_async_client_stream(any_proxy):
    async def run():
        async with openai.AsyncOpenAI(base_url=any_proxy.url + "/api/v1", api_key=API_KEY,
                                      max_retries=0, timeout=20) as c:
            stream = await c.chat.completions.create(model="m", messages=MESSAGES,
                                                     stream=True, extra_query={"events": 7})
            return [ch async for ch in stream]
    chunks = asyncio.run(run())
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == stream_text(7)


def test_what_the_sdk_sent_is_logged_with_the_key_masked(proxy, logserver):
    with client(proxy.url) as c:
        raw = c.chat.completions.with_raw_response.create(model="m", messages=MESSAGES)
        raw.parse()
    rid = raw.headers["x-request-id"]
    logserver.wait_for_metadata(rid, predicate=lambda d: "proxy" in d
                                and d["parts"].get("request", {}).get("complete"))
    request = logserver.file(rid, "request").read_bytes()
    head, _, body = request.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"\r\nAuthorization: Bearer ****wxyz" in head or b"\r\nauthorization: Bearer ****wxyz" in head
    assert API_KEY[:-4].encode() not in request
    assert b'"Say hello"' in body
