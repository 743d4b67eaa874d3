"""A streamed LLM answer put back together as the non-streamed answer it stands for.

OpenAI-style chat chunks become one `chat.completion` object; Anthropic stream events
become one `message` object. The viewer then shows streamed and plain answers the same
way, and the derived fields (derive.py) read both shapes with one set of rules. Anything
unexpected is skipped, never raised: a log viewer must show what it can.
"""
from __future__ import annotations

import json
from typing import Any

from orproxy.logserver.llm.sse import Event

_APPENDED = ("content", "refusal", "reasoning", "reasoning_content")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def openai_chunks(events: list[Event]) -> dict[str, Any] | None:
    """Chat completion chunks (`data: {...}` ... `data: [DONE]`) -> one chat.completion."""
    out: dict[str, Any] = {}
    choices: dict[int, dict[str, Any]] = {}
    seen = False
    for event in events:
        chunk = event.json
        if not isinstance(chunk, dict):
            continue
        if "error" in chunk and not chunk.get("choices"):
            out["error"] = chunk["error"]  # OpenRouter: an error mid-stream
            seen = True
            continue
        if "choices" not in chunk and "usage" not in chunk:
            continue
        seen = True
        for key in ("id", "created", "model", "provider", "system_fingerprint", "service_tier"):
            if chunk.get(key) is not None:
                out.setdefault(key, chunk[key])
        if isinstance(chunk.get("usage"), dict):
            out["usage"] = chunk["usage"]
        for raw in chunk.get("choices") or []:
            if isinstance(raw, dict):
                _merge_choice(choices, raw)
    if not seen:
        return None
    out["object"] = "chat.completion"
    out["choices"] = [choices[i] for i in sorted(choices)]
    return out


def _merge_choice(choices: dict[int, dict[str, Any]], raw: dict[str, Any]) -> None:
    index = raw.get("index", 0) if isinstance(raw.get("index"), int) else 0
    choice = choices.setdefault(index, {"index": index, "message": {"role": "assistant"},
                                        "finish_reason": None})
    if raw.get("finish_reason") is not None:
        choice["finish_reason"] = raw["finish_reason"]
    message = choice["message"]
    delta = _dict(raw.get("delta"))
    for key, value in delta.items():
        if key == "tool_calls" and isinstance(value, list):
            _merge_tool_calls(message, value)
        elif key in _APPENDED and isinstance(value, str):
            message[key] = message.get(key, "") + value
        elif key == "role" and isinstance(value, str):
            message["role"] = value
        elif value is not None and key not in _APPENDED:
            if isinstance(value, list) and isinstance(message.get(key), list):
                message[key].extend(value)  # e.g. OpenRouter reasoning_details, annotations
            else:
                message[key] = value


def _merge_tool_calls(message: dict[str, Any], deltas: list[Any]) -> None:
    calls = message.setdefault("tool_calls", [])
    for delta in deltas:
        if not isinstance(delta, dict):
            continue
        index = delta.get("index") if isinstance(delta.get("index"), int) else len(calls)
        while len(calls) <= index:
            calls.append({"id": None, "type": "function", "function": {"name": None, "arguments": ""}})
        call = calls[index]
        if delta.get("id"):
            call["id"] = delta["id"]
        if delta.get("type"):
            call["type"] = delta["type"]
        function = _dict(delta.get("function"))
        if function.get("name"):
            call["function"]["name"] = function["name"]
        if isinstance(function.get("arguments"), str):
            call["function"]["arguments"] += function["arguments"]


def anthropic_events(events: list[Event]) -> dict[str, Any] | None:
    """Messages API stream events (message_start ... message_stop) -> one message."""
    message: dict[str, Any] | None = None
    blocks: dict[int, dict[str, Any]] = {}
    partial_json: dict[int, str] = {}
    for event in events:
        data = event.json
        if not isinstance(data, dict):
            continue
        kind = data.get("type") or event.event
        if kind == "message_start":
            message = dict(_dict(data.get("message")))
            message["usage"] = dict(_dict(message.get("usage")))
        elif message is None and kind != "error":
            continue
        elif kind == "content_block_start":
            index = data.get("index", len(blocks))
            blocks[index] = dict(_dict(data.get("content_block")))
        elif kind == "content_block_delta":
            _apply_delta(blocks, partial_json, data.get("index", 0), _dict(data.get("delta")))
        elif kind == "message_delta":
            for key, value in _dict(data.get("delta")).items():
                message[key] = value
            message["usage"].update({k: v for k, v in _dict(data.get("usage")).items() if v is not None})
        elif kind == "error":
            message = message if message is not None else {"type": "message"}
            message["error"] = data.get("error", data)
    if message is None:
        return None
    for index, text in partial_json.items():
        try:
            blocks[index]["input"] = json.loads(text) if text else {}
        except ValueError:
            blocks[index]["input"] = text  # cut off mid-stream: keep what came
    message["content"] = [blocks[i] for i in sorted(blocks)]
    return message


def _apply_delta(blocks: dict[int, dict[str, Any]], partial_json: dict[int, str], index: Any,
                 delta: dict[str, Any]) -> None:
    if not isinstance(index, int):
        return
    block = blocks.setdefault(index, {"type": "text", "text": ""})
    kind = delta.get("type")
    if kind == "text_delta":
        block["text"] = block.get("text", "") + str(delta.get("text", ""))
    elif kind == "input_json_delta":
        partial_json[index] = partial_json.get(index, "") + str(delta.get("partial_json", ""))
    elif kind == "thinking_delta":
        block["thinking"] = block.get("thinking", "") + str(delta.get("thinking", ""))
    elif kind == "signature_delta":
        block["signature"] = block.get("signature", "") + str(delta.get("signature", ""))
    elif kind == "citations_delta" and isinstance(delta.get("citation"), dict):
        block.setdefault("citations", []).append(delta["citation"])
