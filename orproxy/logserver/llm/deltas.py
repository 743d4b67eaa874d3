"""What one streamed LLM event adds to the answer, for the live tail's growing text.

assemble.py rebuilds a whole answer once the stream has ended; the tail instead shows
the answer while it grows, event by event, so it needs each event's increment: text,
reasoning, a tool call's name or arguments, an error. Shapes: OpenAI chat chunks (and
OpenRouter's, with `reasoning`), Anthropic Messages events, OpenAI Responses events.
Anything else adds nothing; nothing here raises.
"""
from __future__ import annotations

from typing import Any


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def delta(data: Any, event_name: str | None = None) -> dict[str, Any]:
    """The increment of one event's parsed JSON: any of `text`, `reasoning`, `tool`
    ({index, id, name, arguments}: pieces to append), `error`, `finish`."""
    if not isinstance(data, dict):
        return {}
    if "choices" in data or ("error" in data and "type" not in data):
        return _openai_chat(data)
    kind = data.get("type") or event_name
    if isinstance(kind, str) and kind.startswith("response."):
        return _openai_responses(kind, data)
    return _anthropic(kind, data)


def _openai_chat(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if data.get("error"):
        out["error"] = _str(_dict(data["error"]).get("message")) or str(data["error"])
    choices = data.get("choices")
    choice = _dict(choices[0]) if isinstance(choices, list) and choices else {}
    d = _dict(choice.get("delta"))
    text = _str(d.get("content")) or _str(d.get("refusal"))
    reasoning = _str(d.get("reasoning")) or _str(d.get("reasoning_content"))
    if text:
        out["text"] = text
    if reasoning:
        out["reasoning"] = reasoning
    calls = d.get("tool_calls")
    if isinstance(calls, list) and calls:
        call = _dict(calls[0])
        function = _dict(call.get("function"))
        out["tool"] = {"index": call.get("index") if isinstance(call.get("index"), int) else 0,
                       "id": _str(call.get("id")), "name": _str(function.get("name")),
                       "arguments": _str(function.get("arguments"))}
    if choice.get("finish_reason"):
        out["finish"] = _str(choice["finish_reason"])
    return out


def _anthropic(kind: Any, data: dict[str, Any]) -> dict[str, Any]:
    index = data.get("index") if isinstance(data.get("index"), int) else 0
    if kind == "content_block_delta":
        d = _dict(data.get("delta"))
        if d.get("type") == "text_delta":
            return {"text": _str(d.get("text"))}
        if d.get("type") == "thinking_delta":
            return {"reasoning": _str(d.get("thinking"))}
        if d.get("type") == "input_json_delta":
            return {"tool": {"index": index, "id": "", "name": "", "arguments": _str(d.get("partial_json"))}}
    elif kind == "content_block_start":
        block = _dict(data.get("content_block"))
        if block.get("type") in ("tool_use", "server_tool_use"):
            return {"tool": {"index": index, "id": _str(block.get("id")), "name": _str(block.get("name")),
                             "arguments": ""}}
    elif kind == "message_delta":
        reason = _str(_dict(data.get("delta")).get("stop_reason"))
        return {"finish": reason} if reason else {}
    elif kind == "error":
        return {"error": _str(_dict(data.get("error")).get("message")) or "error"}
    return {}


def _openai_responses(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    if kind == "response.output_text.delta":
        return {"text": _str(data.get("delta"))}
    if kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
        return {"reasoning": _str(data.get("delta"))}
    if kind == "response.function_call_arguments.delta":
        index = data.get("output_index") if isinstance(data.get("output_index"), int) else 0
        return {"tool": {"index": index, "id": _str(data.get("item_id")), "name": "",
                         "arguments": _str(data.get("delta"))}}
    if kind == "response.output_item.added":
        item = _dict(data.get("item"))
        if item.get("type") == "function_call":
            index = data.get("output_index") if isinstance(data.get("output_index"), int) else 0
            return {"tool": {"index": index, "id": _str(item.get("id")), "name": _str(item.get("name")),
                             "arguments": ""}}
    if kind in ("response.completed", "response.incomplete", "response.failed"):
        return {"finish": kind.split(".", 1)[1]}
    if kind == "response.error" or kind == "error":
        return {"error": _str(data.get("message")) or "error"}
    return {}
