"""LLM-aware fields of one exchange, read from its request and response bodies.

Computed on the logging server, never on the proxy's hot path (issue 3). The request's
fields and the token counts are read the same way for every API; which API it is, and the
answer's own fields (finish reason, tool calls, reply preview), come from its module in
apis/. JSON or streamed (bodies.py assembles a stream first). Every field is optional: an
unknown or malformed body leaves it None.

Token counts are normalised so that they compare across APIs:
  prompt_tokens      every input token, cached ones included (Anthropic: input_tokens +
                     cache_read_input_tokens + cache_creation_input_tokens)
  completion_tokens  output tokens (reasoning included, as the APIs count them)
  total_tokens       as reported, else prompt + completion
  cached_tokens      input tokens read from a cache (OpenAI prompt_tokens_details.cached_tokens,
                     Anthropic cache_read_input_tokens)
  cache_write_tokens input tokens written to a cache (Anthropic cache_creation_input_tokens)
  reasoning_tokens   completion_tokens_details.reasoning_tokens (OpenAI, OpenRouter)
  cost               usage.cost when the upstream reports it (OpenRouter, in credits = USD),
                     plus cost_details.upstream_inference_cost for bring-your-own-key
                     requests (usage.cost is then OpenRouter's fee alone)

The conversation's fields (session_id, turn_key, conversation_id, previous_id) need the
other exchanges, so store/deriving.py fills them (llm/conversation.py, store/linking.py).
"""
from __future__ import annotations

from typing import Any

from orproxy.logserver.llm import apis
from orproxy.logserver.llm.bodies import ParsedBody
from orproxy.logserver.llm.values import as_count, as_dict, as_number, as_str, error_message, preview, text_of

VERSION = 2  # bump when the rules change: reindex then recomputes stored fields (2: conversations)

FIELDS = ("api", "provider", "model_requested", "model_answered", "stream", "message_count",
          "tools_offered", "tool_calls", "finish_reason", "prompt_tokens", "completion_tokens",
          "total_tokens", "cached_tokens", "cache_write_tokens", "reasoning_tokens", "cost",
          "error_message", "prompt_preview", "reply_preview", "response_id",
          "session_id", "turn_key", "answer_key", "conversation_id", "previous_id")


REQUEST_GUESS = "request_api"  # kept beside the request's fields: see request_fields()


def request_fields(request: ParsedBody | None, path: str | None = None) -> dict[str, Any]:
    """The fields the request alone gives (the rest None), known while the answer is still
    to come: model_requested, stream, message_count, prompt_preview, tools_offered, and
    `api` as far as the path and the request tell (the answer may correct it). Also
    REQUEST_GUESS, what the request's own keys suggest, so that `answer_fields` can
    finish the fields later without parsing the request again."""
    req = as_dict(request.json) if request is not None else {}
    out: dict[str, Any] = dict.fromkeys(FIELDS)
    # apis.detect looks at the path and the answer first and at the request last: the
    # request's part is the same whatever the answer turns out to be.
    out[REQUEST_GUESS] = apis.detect(request=req)
    out["api"] = apis.detect(path) or out[REQUEST_GUESS]
    out["model_requested"] = as_str(req.get("model"))
    if isinstance(req.get("stream"), bool):
        out["stream"] = req["stream"]
    messages = req.get("messages") if isinstance(req.get("messages"), list) else req.get("input")
    if isinstance(messages, list):
        out["message_count"] = len(messages)
        out["prompt_preview"] = preview(_last_user_text(messages))
    elif isinstance(messages, str):
        out["message_count"] = 1
        out["prompt_preview"] = preview(messages)
    if isinstance(req.get("tools"), list):
        out["tools_offered"] = len(req["tools"])
    return out


def answer_fields(requested: dict[str, Any], response: ParsedBody | None,
                  path: str | None = None) -> dict[str, Any]:
    """Every field (FIELDS), from `request_fields()`'s result and the response."""
    answer = as_dict(response.answer) if response is not None else {}
    out = {name: requested.get(name) for name in FIELDS}
    out["api"] = apis.detect(path, answer=answer) or requested.get(REQUEST_GUESS)
    out["model_answered"] = as_str(answer.get("model"))
    out["provider"] = as_str(answer.get("provider"))
    out["error_message"] = error_message(answer.get("error"))
    api = apis.named(out["api"])
    if api is not None:
        api.answer_fields(answer, out)
    out.update(usage_fields(as_dict(answer.get("usage"))))
    out["answer_key"] = apis.answer_key(answer, out["api"]) if response is not None and response.whole_answer else None
    return out


def derive(request: ParsedBody | None, response: ParsedBody | None, path: str | None = None) -> dict[str, Any]:
    """The derived fields (FIELDS) of one exchange; None where the bodies do not say."""
    return answer_fields(request_fields(request, path), response, path)


def _last_user_text(messages: list[Any]) -> str | None:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role", "user") == "user":
            text = text_of(message.get("content"))
            if text:
                return text
    return None


def usage_fields(usage: dict[str, Any]) -> dict[str, Any]:
    """Token counts and cost, normalised across APIs (see the module docstring)."""
    out: dict[str, Any] = {"prompt_tokens": None, "completion_tokens": None, "total_tokens": None,
                           "cached_tokens": None, "cache_write_tokens": None, "reasoning_tokens": None,
                           "cost": _reported_cost(usage)}
    if not usage:
        return out
    if "prompt_tokens" in usage or "completion_tokens" in usage:  # OpenAI chat, OpenRouter
        prompt, completion = as_count(usage.get("prompt_tokens")), as_count(usage.get("completion_tokens"))
        details = as_dict(usage.get("prompt_tokens_details"))
        out["cached_tokens"] = as_count(details.get("cached_tokens"))
        out["cache_write_tokens"] = as_count(details.get("cache_write_tokens"))  # OpenRouter
        out["reasoning_tokens"] = as_count(as_dict(usage.get("completion_tokens_details")).get("reasoning_tokens"))
    elif "input_tokens" in usage or "output_tokens" in usage:
        completion = as_count(usage.get("output_tokens"))
        read = as_count(usage.get("cache_read_input_tokens"))
        written = as_count(usage.get("cache_creation_input_tokens"))
        prompt = as_count(usage.get("input_tokens"))
        if read is not None or written is not None:  # Anthropic: input_tokens excludes the cache
            prompt = (prompt or 0) + (read or 0) + (written or 0)
            out["cached_tokens"], out["cache_write_tokens"] = read, written
        else:  # OpenAI responses: input_tokens includes cached ones
            out["cached_tokens"] = as_count(as_dict(usage.get("input_tokens_details")).get("cached_tokens"))
            out["reasoning_tokens"] = as_count(as_dict(usage.get("output_tokens_details")).get("reasoning_tokens"))
    else:
        return out
    out["prompt_tokens"], out["completion_tokens"] = prompt, completion
    total = as_count(usage.get("total_tokens"))
    if total is None and (prompt is not None or completion is not None):
        total = (prompt or 0) + (completion or 0)
    out["total_tokens"] = total
    return out


def _reported_cost(usage: dict[str, Any]) -> float | None:
    cost = as_number(usage.get("cost"))
    upstream = as_number(as_dict(usage.get("cost_details")).get("upstream_inference_cost"))
    if cost is not None and upstream is not None and usage.get("is_byok") is True:
        return cost + upstream
    return cost
