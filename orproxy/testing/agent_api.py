"""The fake upstream's agent endpoints (any path with `/agent/` in it): OpenAI chat
completions, Anthropic messages and OpenAI responses whose answers follow the request, so
that tests can hold real conversations through the proxy.

The answer to a request whose last user text is T is the text "Reply to: T", or, when T
says "use tool NAME" and no tool result came after it, a call of tool NAME with arguments
{"q": T}. Usage counts a token per 4 characters. JSON, or SSE when the request says
`"stream": true`. Query parameters: `cost=USD` reports a cost (OpenRouter's usage.cost),
`cached=N` reports N input tokens read from a cache, `pad=N` adds N words to the reply.
"""
import json
import re
import time

from orproxy.testing.answers import SSE, BadParam, int_param, json_request, json_response, query

_TOOL_RE = re.compile(r"use tool (\w+)")
_counter = [0]


def application(environ, start_response):
    path = environ.get("PATH_INFO") or "/"
    try:
        request = json_request(environ)
    except ValueError as exc:
        raise BadParam("bad request: %s" % exc)
    if not isinstance(request, dict):
        raise BadParam("the request is not a JSON object")
    q = query(environ)
    _counter[0] += 1
    for suffix, api in (("/chat/completions", _Chat), ("/messages", _Messages), ("/responses", _Responses)):
        if path.endswith(suffix):
            answer = api(request, q, _counter[0])
            if request.get("stream") is True:
                write = start_response("200 OK", [SSE])
                write(b"")
                return [b"".join(answer.events())]
            return json_response(start_response, "200 OK", answer.json())
    raise BadParam("no agent endpoint for %s" % path)


def _text(content):
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content
                        if isinstance(p, dict) and p.get("type") in ("text", "input_text"))
    return ""


class _Answer:
    """What the answer says, whatever the API: a reply text, or a tool call."""

    def __init__(self, request, q, n):
        self.request, self.n = request, n
        self.model = request.get("model") or "fake-model"
        last, after_tool = self.last_user()
        tool = _TOOL_RE.search(last or "")
        self.tool = tool.group(1) if tool and not after_tool else None
        self.arguments = json.dumps({"q": last})
        pad = int_param(q, "pad", 0)
        self.text = "Reply to: %s%s" % (last, "".join(" word%d" % i for i in range(pad)))
        size = len(json.dumps(request))
        self.prompt_tokens = size // 4 + 1
        self.completion_tokens = len(self.text if self.tool is None else self.arguments) // 4 + 1
        self.cached = int_param(q, "cached", 0)
        self.cost = float(q["cost"]) if q.get("cost") else None

    def last_user(self):
        """(the last user text, whether a tool result came after the last tool call)."""
        raise NotImplementedError

    @staticmethod
    def sse(event, data):
        head = b"event: %s\n" % event.encode() if event else b""
        return head + b"data: " + json.dumps(data).encode() + b"\n\n"


class _Chat(_Answer):
    def last_user(self):
        messages = self.request.get("messages") or []
        for i in range(len(messages) - 1, -1, -1):
            m = messages[i]
            if m.get("role") == "user":
                return _text(m.get("content")), False
            if m.get("role") == "tool":
                return self.question_before(messages, i), True
        return "", False

    @staticmethod
    def question_before(messages, i):
        for m in reversed(messages[:i]):
            if m.get("role") == "user":
                return _text(m.get("content"))
        return ""

    def message(self):
        if self.tool:
            return {"role": "assistant", "content": None, "tool_calls": [{
                "id": "call_%d" % self.n, "type": "function",
                "function": {"name": self.tool, "arguments": self.arguments}}]}
        return {"role": "assistant", "content": self.text}

    def usage(self):
        usage = {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                 "total_tokens": self.prompt_tokens + self.completion_tokens}
        if self.cached:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached}
        if self.cost is not None:
            usage["cost"] = self.cost
        return usage

    def json(self):
        return {"id": "chatcmpl-agent-%d" % self.n, "object": "chat.completion", "created": int(time.time()),
                "model": self.model, "choices": [{"index": 0, "message": self.message(),
                                                  "finish_reason": "tool_calls" if self.tool else "stop"}],
                "usage": self.usage()}

    def events(self):
        base = {"id": "chatcmpl-agent-%d" % self.n, "object": "chat.completion.chunk", "model": self.model}
        yield self.sse(None, dict(base, choices=[{"index": 0, "delta": {"role": "assistant"}}]))
        if self.tool:
            yield self.sse(None, dict(base, choices=[{"index": 0, "delta": {"tool_calls": [{
                "index": 0, "id": "call_%d" % self.n, "type": "function",
                "function": {"name": self.tool, "arguments": self.arguments}}]}}]))
        else:
            for word in re.findall(r"\S+\s*", self.text):
                yield self.sse(None, dict(base, choices=[{"index": 0, "delta": {"content": word}}]))
        yield self.sse(None, dict(base, choices=[{"index": 0, "delta": {},
                                                  "finish_reason": "tool_calls" if self.tool else "stop"}]))
        yield self.sse(None, dict(base, choices=[], usage=self.usage()))
        yield b"data: [DONE]\n\n"


class _Messages(_Answer):
    def last_user(self):
        for m in reversed(self.request.get("messages") or []):
            if m.get("role") != "user":
                continue
            content = m.get("content")
            blocks = content if isinstance(content, list) else [{"type": "text", "text": content}]
            results = any(isinstance(b, dict) and b.get("type") == "tool_result" for b in blocks)
            text = _text(blocks)
            if text and not results:
                return text, False
            if results:
                return self.question(), True
        return "", False

    def question(self):
        for m in reversed(self.request.get("messages") or []):
            content = m.get("content")
            blocks = content if isinstance(content, list) else [{"type": "text", "text": content}]
            if m.get("role") == "user" and not any(b.get("type") == "tool_result" for b in blocks
                                                   if isinstance(b, dict)):
                return _text(blocks)
        return ""

    def content(self):
        if self.tool:
            return [{"type": "tool_use", "id": "toolu_%d" % self.n, "name": self.tool,
                     "input": json.loads(self.arguments)}]
        return [{"type": "text", "text": self.text}]

    def usage(self):
        usage = {"input_tokens": self.prompt_tokens - self.cached, "output_tokens": self.completion_tokens}
        if self.cached:
            usage["cache_read_input_tokens"] = self.cached
            usage["cache_creation_input_tokens"] = 0
        return usage

    def json(self):
        return {"id": "msg_agent_%d" % self.n, "type": "message", "role": "assistant", "model": self.model,
                "content": self.content(), "stop_reason": "tool_use" if self.tool else "end_turn",
                "usage": self.usage()}

    def events(self):
        start = dict(self.json(), content=[], stop_reason=None, usage=dict(self.usage(), output_tokens=1))
        yield self.sse("message_start", {"type": "message_start", "message": start})
        if self.tool:
            block = dict(self.content()[0], input={})
            yield self.sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block})
            yield self.sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {
                "type": "input_json_delta", "partial_json": self.arguments}})
        else:
            yield self.sse("content_block_start", {"type": "content_block_start", "index": 0,
                                                   "content_block": {"type": "text", "text": ""}})
            for word in re.findall(r"\S+\s*", self.text):
                yield self.sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                       "delta": {"type": "text_delta", "text": word}})
        yield self.sse("content_block_stop", {"type": "content_block_stop", "index": 0})
        yield self.sse("message_delta", {"type": "message_delta", "delta": {
            "stop_reason": "tool_use" if self.tool else "end_turn"}, "usage": {"output_tokens": self.completion_tokens}})
        yield self.sse("message_stop", {"type": "message_stop"})


class _Responses(_Answer):
    def last_user(self):
        items = self.request.get("input")
        if isinstance(items, str):
            return items, False
        for item in reversed(items or []):
            if item.get("type") == "function_call_output":
                return "", True
            if item.get("role") == "user":
                return _text(item.get("content")), False
        return "", False

    def output(self):
        if self.tool:
            return [{"type": "function_call", "id": "fc_%d" % self.n, "call_id": "call_%d" % self.n,
                     "name": self.tool, "arguments": self.arguments, "status": "completed"}]
        return [{"type": "message", "id": "msg_%d" % self.n, "role": "assistant", "status": "completed",
                 "content": [{"type": "output_text", "text": self.text, "annotations": []}]}]

    def json(self):
        return {"id": "resp_agent_%d" % self.n, "object": "response", "status": "completed",
                "model": self.model, "output": self.output(),
                "usage": {"input_tokens": self.prompt_tokens, "output_tokens": self.completion_tokens,
                          "total_tokens": self.prompt_tokens + self.completion_tokens}}

    def events(self):
        whole = self.json()
        yield self.sse("response.created", {"type": "response.created", "response": dict(whole, status="in_progress",
                                                                                         output=[])})
        if not self.tool:
            for word in re.findall(r"\S+\s*", self.text):
                yield self.sse("response.output_text.delta", {"type": "response.output_text.delta",
                                                              "output_index": 0, "delta": word})
        yield self.sse("response.completed", {"type": "response.completed", "response": whole})
