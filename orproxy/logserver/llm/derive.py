"""LLM-aware fields of one exchange, read from its request and response bodies.

Computed on the logging server, never on the proxy's hot path (issue 3). Handles
OpenAI-compatible chat completions (OpenAI, OpenRouter, llama.cpp, ...), Anthropic
messages and, as far as the shared fields go, OpenAI responses and embeddings; JSON or
streamed. Every field is optional: an unknown or malformed body leaves it None.

Token counts are normalised so that they compare across APIs:
  prompt_tokens      every input token, cached ones included (Anthropic: input_tokens +
                     cache_read_input_tokens + cache_creation_input_tokens)
  completion_tokens  output tokens (reasoning included, as the APIs count them)
  total_tokens       as reported, else prompt + completion
  cached_tokens      input tokens read from a cache (OpenAI prompt_tokens_details.cached_tokens,
                     Anthropic cache_read_input_tokens)
  reasoning_tokens   completion_tokens_details.reasoning_tokens (OpenAI, OpenRouter)
  cost               usage.cost when the upstream reports it (OpenRouter, in credits = USD)
"""
from __future__ import annotations

import math
from typing import Any

from orproxy.logserver.llm.bodies import ParsedBody

VERSION = 1  # bump when the rules change: reindex then recomputes stored fields
PREVIEW = 200

FIELDS = ("api", "provider", "model_requested", "model_answered", "stream", "message_count",
          "tools_offered", "tool_calls", "finish_reason", "prompt_tokens", "completion_tokens",
          "total_tokens", "cached_tokens", "reasoning_tokens", "cost", "error_message",
          "prompt_preview", "reply_preview")


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _num(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _preview(text: str | None) -> str | None:
    if not text:
        return None
    text = " ".join(text.split())
    return text if len(text) <= PREVIEW else text[:PREVIEW - 1] + "…"


def _text_of(content: Any) -> str | None:
    """The text of a message's content: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return " ".join(texts) if texts else None
    return None


def detect_api(path: str | None, request: dict[str, Any], answer: dict[str, Any]) -> str | None:
    path = (path or "").partition("?")[0].rstrip("/")
    if answer.get("type") == "message" or path.endswith("/messages"):
        return "anthropic"
    if "choices" in answer or path.endswith(("/chat/completions", "/completions")):
        return "openai"
    if answer.get("object") == "response" or path.endswith("/responses"):
        return "openai-responses"
    if path.endswith("/embeddings") or answer.get("object") == "list" and "usage" in answer:
        return "openai-embeddings"
    if "messages" in request and "model" in request:
        return "anthropic" if "max_tokens" in request and "system" in request else "openai"
    return None


REQUEST_GUESS = "request_api"  # kept beside the request's fields: see request_fields()


def request_fields(request: ParsedBody | None, path: str | None = None) -> dict[str, Any]:
    """The fields the request alone gives (the rest None), known while the answer is still
    to come: model_requested, stream, message_count, prompt_preview, tools_offered, and
    `api` as far as the path and the request tell (the answer may correct it). Also
    REQUEST_GUESS, what the request's own keys suggest, so that `answer_fields` can
    finish the fields later without parsing the request again."""
    req = _dict(request.json) if request is not None else {}
    out: dict[str, Any] = dict.fromkeys(FIELDS)
    # detect_api looks at the path and the answer first and at the request last: the
    # request's part is the same whatever the answer turns out to be.
    out[REQUEST_GUESS] = detect_api(None, req, {})
    out["api"] = detect_api(path, {}, {}) or out[REQUEST_GUESS]
    out["model_requested"] = _str(req.get("model"))
    if isinstance(req.get("stream"), bool):
        out["stream"] = req["stream"]
    messages = req.get("messages") if isinstance(req.get("messages"), list) else req.get("input")
    if isinstance(messages, list):
        out["message_count"] = len(messages)
        out["prompt_preview"] = _preview(_last_user_text(messages))
    elif isinstance(messages, str):
        out["message_count"] = 1
        out["prompt_preview"] = _preview(messages)
    if isinstance(req.get("tools"), list):
        out["tools_offered"] = len(req["tools"])
    return out


def answer_fields(requested: dict[str, Any], response: ParsedBody | None,
                  path: str | None = None) -> dict[str, Any]:
    """Every field (FIELDS), from `request_fields()`'s result and the response."""
    answer = _dict(response.answer) if response is not None else {}
    out = {name: requested.get(name) for name in FIELDS}
    api = detect_api(path, {}, answer) or requested.get(REQUEST_GUESS)
    out["api"] = api
    out["model_answered"] = _str(answer.get("model"))
    out["provider"] = _str(answer.get("provider"))
    out["error_message"] = _error_message(answer.get("error"))
    if api == "anthropic":
        _anthropic_answer(answer, out)
    elif api == "openai-responses":
        _responses_answer(answer, out)
    else:
        _openai_answer(answer, out)
    out.update(usage_fields(_dict(answer.get("usage"))))
    return out


def derive(request: ParsedBody | None, response: ParsedBody | None, path: str | None = None) -> dict[str, Any]:
    """The derived fields (FIELDS) of one exchange; None where the bodies do not say."""
    return answer_fields(request_fields(request, path), response, path)


def _last_user_text(messages: list[Any]) -> str | None:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role", "user") == "user":
            text = _text_of(message.get("content"))
            if text:
                return text
    return None


def _error_message(error: Any) -> str | None:
    if isinstance(error, dict):
        return _str(error.get("message")) or _str(error.get("type")) or _str(error.get("code"))
    return _str(error)


def _openai_answer(answer: dict[str, Any], out: dict[str, Any]) -> None:
    choices = [c for c in answer.get("choices") or [] if isinstance(c, dict)]
    if not choices:
        return
    out["finish_reason"] = _str(choices[0].get("finish_reason"))
    names = []
    for choice in choices:
        for call in _dict(choice.get("message")).get("tool_calls") or []:
            name = _dict(_dict(call).get("function")).get("name")
            if isinstance(name, str):
                names.append(name)
    out["tool_calls"] = names
    message = _dict(choices[0].get("message"))
    out["reply_preview"] = _preview(_text_of(message.get("content")) or _str(choices[0].get("text")))


def _anthropic_answer(answer: dict[str, Any], out: dict[str, Any]) -> None:
    if answer.get("type") == "error":
        out["error_message"] = _error_message(answer.get("error"))
    out["finish_reason"] = _str(answer.get("stop_reason"))
    blocks = [b for b in answer.get("content") or [] if isinstance(b, dict)]
    if "content" in answer:
        out["tool_calls"] = [b["name"] for b in blocks
                             if b.get("type") in ("tool_use", "server_tool_use") and isinstance(b.get("name"), str)]
    texts = [b["text"] for b in blocks if b.get("type") == "text" and isinstance(b.get("text"), str)]
    out["reply_preview"] = _preview("".join(texts))


def _responses_answer(answer: dict[str, Any], out: dict[str, Any]) -> None:
    out["finish_reason"] = _str(answer.get("status"))
    items = [i for i in answer.get("output") or [] if isinstance(i, dict)]
    if "output" in answer:
        out["tool_calls"] = [i["name"] for i in items if i.get("type") == "function_call" and isinstance(i.get("name"), str)]
    texts = [_text_of(i.get("content")) for i in items if i.get("type") == "message"]
    out["reply_preview"] = _preview(" ".join(t for t in texts if t))


def usage_fields(usage: dict[str, Any]) -> dict[str, Any]:
    """Token counts and cost, normalised across APIs (see the module docstring)."""
    out: dict[str, Any] = {"prompt_tokens": None, "completion_tokens": None, "total_tokens": None,
                           "cached_tokens": None, "reasoning_tokens": None, "cost": _num(usage.get("cost"))}
    if not usage:
        return out
    if "prompt_tokens" in usage or "completion_tokens" in usage:  # OpenAI chat, OpenRouter
        prompt, completion = _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))
        out["cached_tokens"] = _int(_dict(usage.get("prompt_tokens_details")).get("cached_tokens"))
        out["reasoning_tokens"] = _int(_dict(usage.get("completion_tokens_details")).get("reasoning_tokens"))
    elif "input_tokens" in usage or "output_tokens" in usage:
        completion = _int(usage.get("output_tokens"))
        read = _int(usage.get("cache_read_input_tokens"))
        written = _int(usage.get("cache_creation_input_tokens"))
        prompt = _int(usage.get("input_tokens"))
        if read is not None or written is not None:  # Anthropic: input_tokens excludes the cache
            prompt = (prompt or 0) + (read or 0) + (written or 0)
            out["cached_tokens"] = read
        else:  # OpenAI responses: input_tokens includes cached ones
            out["cached_tokens"] = _int(_dict(usage.get("input_tokens_details")).get("cached_tokens"))
            out["reasoning_tokens"] = _int(_dict(usage.get("output_tokens_details")).get("reasoning_tokens"))
    else:
        return out
    out["prompt_tokens"], out["completion_tokens"] = prompt, completion
    total = _int(usage.get("total_tokens"))
    if total is None and (prompt is not None or completion is not None):
        total = (prompt or 0) + (completion or 0)
    out["total_tokens"] = total
    return out
