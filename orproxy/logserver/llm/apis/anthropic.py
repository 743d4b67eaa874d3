"""Anthropic Messages (`POST .../v1/messages`), and servers that speak it.

A JSON answer is a `message` whose `content` is a list of blocks (text, thinking,
tool_use). A streamed one is named events: `message_start` (the message without content),
then per block `content_block_start`, `content_block_delta`s (text, thinking, a tool's
input as pieces of JSON, signatures, citations) and `content_block_stop`, then
`message_delta` (stop reason, final usage) and `message_stop`; `ping` and `error` may
come between.
"""
from __future__ import annotations

import json
from typing import Any

from orproxy.logserver.llm.conversation import (Conversation, call_part, content_text, media_part, message,
                                                params_of, result_part, text_part)
from orproxy.logserver.llm.sse import Event
from orproxy.logserver.llm.values import as_dict, as_index, as_str, as_text, error_message, preview

NAME = "anthropic"
TITLE = "messages"
PATHS = ("/messages",)
TEXT_SIGN = '"message_start"'                     # in the first events of a stream's text
SKIM_MARKERS = ("content_block_start", '"error"')  # tool_use blocks start so (bodies.py)

_TOOL_BLOCKS = ("tool_use", "server_tool_use")
_DELTA_EVENTS = ("content_block_delta", "content_block_start", "message_delta", "error")


def is_answer(answer: dict[str, Any]) -> bool:
    return answer.get("type") == "message"


def is_request(request: dict[str, Any]) -> bool:
    """A Messages request: `max_tokens` is required there, and `system` is a key of its own."""
    return "messages" in request and "model" in request and "max_tokens" in request and "system" in request


def starts_stream(data: dict[str, Any], kind: str) -> bool:
    return kind == "message_start"


def is_event(data: dict[str, Any], kind: str) -> bool:
    return kind in _DELTA_EVENTS


# -- the streamed answer put together ---------------------------------------------------------

def assemble(events: list[Event]) -> dict[str, Any] | None:
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
            message = dict(as_dict(data.get("message")))
            message["usage"] = dict(as_dict(message.get("usage")))
        elif message is None and kind != "error":
            continue
        elif kind == "content_block_start":
            index = data.get("index", len(blocks))
            blocks[index] = dict(as_dict(data.get("content_block")))
        elif kind == "content_block_delta":
            _apply_delta(blocks, partial_json, data.get("index", 0), as_dict(data.get("delta")))
        elif kind == "message_delta":
            for key, value in as_dict(data.get("delta")).items():
                message[key] = value
            message["usage"].update({k: v for k, v in as_dict(data.get("usage")).items() if v is not None})
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


# -- one event's increment, for the live tail --------------------------------------------------

def delta(data: dict[str, Any], kind: str) -> dict[str, Any]:
    index = as_index(data.get("index"))
    if kind == "content_block_delta":
        d = as_dict(data.get("delta"))
        if d.get("type") == "text_delta":
            return {"text": as_text(d.get("text"))}
        if d.get("type") == "thinking_delta":
            return {"reasoning": as_text(d.get("thinking"))}
        if d.get("type") == "input_json_delta":
            return {"tool": {"index": index, "id": "", "name": "", "arguments": as_text(d.get("partial_json"))}}
    elif kind == "content_block_start":
        block = as_dict(data.get("content_block"))
        if block.get("type") in _TOOL_BLOCKS:
            return {"tool": {"index": index, "id": as_text(block.get("id")), "name": as_text(block.get("name")),
                             "arguments": ""}}
    elif kind == "message_delta":
        reason = as_text(as_dict(data.get("delta")).get("stop_reason"))
        return {"finish": reason} if reason else {}
    elif kind == "error":
        return {"error": as_text(as_dict(data.get("error")).get("message")) or "error"}
    return {}


# -- the answer's fields (derive.py) -----------------------------------------------------------

def answer_fields(answer: dict[str, Any], out: dict[str, Any]) -> None:
    if answer.get("type") == "error":
        out["error_message"] = error_message(answer.get("error"))
    out["finish_reason"] = as_str(answer.get("stop_reason"))
    blocks = [b for b in answer.get("content") or [] if isinstance(b, dict)]
    if "content" in answer:
        out["tool_calls"] = [b["name"] for b in blocks
                             if b.get("type") in _TOOL_BLOCKS and isinstance(b.get("name"), str)]
    texts = [b["text"] for b in blocks if b.get("type") == "text" and isinstance(b.get("text"), str)]
    out["reply_preview"] = preview("".join(texts))


# -- the request as a conversation (conversation.py) --------------------------------------------

_CONVERSATION_KEYS = ("model", "messages", "system", "tools")
_SKIPPED_BLOCKS = ("thinking", "redacted_thinking")  # sent back or not, as the client likes


def answer_messages(answer: dict[str, Any]) -> dict[str, Any]:
    """The answer as the request a client sends it back in (its `messages`)."""
    content = answer.get("content")
    return {"messages": [{"role": "assistant", "content": content}]} if isinstance(content, list) else {}


def conversation(request: dict[str, Any]) -> Conversation | None:
    raw_messages = request.get("messages")
    if not isinstance(raw_messages, list):
        return None
    messages = []
    for raw in raw_messages:
        raw = as_dict(raw)
        content = raw.get("content")
        blocks = content if isinstance(content, list) else [{"type": "text", "text": content}]
        found = message(raw.get("role"), [_block_part(as_dict(b)) for b in blocks])
        if found is not None:
            messages.append(found)
    tools = {t["name"]: t for t in request.get("tools") or [] if isinstance(t, dict) and isinstance(t.get("name"), str)}
    return Conversation(content_text(request.get("system")) or None, messages, tools,
                        as_str(request.get("model")), params_of(request, _CONVERSATION_KEYS))


def _block_part(block: dict[str, Any]) -> dict[str, Any] | None:
    kind = block.get("type")
    if kind == "text":
        return text_part(block.get("text"))
    if kind in _TOOL_BLOCKS:
        return call_part(block.get("id"), block.get("name"), block.get("input"))
    if kind == "tool_result" or (isinstance(kind, str) and kind.endswith("_tool_result")):
        return result_part(block.get("tool_use_id"), block.get("content"), block.get("is_error") is True)
    if kind in _SKIPPED_BLOCKS or not kind:
        return None
    source = as_dict(block.get("source"))
    return media_part(str(kind), source.get("url") or source.get("file_id") or source.get("data") or block)
