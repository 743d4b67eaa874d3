"""OpenAI-compatible chat completions (`POST .../chat/completions`, and the older
`.../completions`): OpenAI, OpenRouter, llama.cpp, LM Studio and most local servers.

A JSON answer is a `chat.completion`; a streamed one is `data: {chunk}` events ending in
`data: [DONE]`, each chunk a `chat.completion.chunk` whose `choices[].delta` adds to the
answer. OpenRouter adds `reasoning` and `reasoning_details` to the deltas, `provider` and
`usage.cost` to the chunks, and reports an error mid-stream as a chunk `{"error": ...}`.
"""
from __future__ import annotations

from typing import Any

from orproxy.logserver.llm.conversation import (Conversation, call_part, content_text, media_part,
                                                message, params_of, result_part, text_part)
from orproxy.logserver.llm.sse import Event
from orproxy.logserver.llm.values import as_dict, as_index, as_str, as_text, preview, text_of

NAME = "openai"
TITLE = "chat completions"
PATHS = ("/chat/completions", "/completions")
TEXT_SIGN = '"choices"'                    # in the first events of a stream's text
SKIM_MARKERS = ('"tool_calls"', '"error"')  # events a skimmed stream must keep (bodies.py)

_APPENDED = ("content", "refusal", "reasoning", "reasoning_content")


def is_answer(answer: dict[str, Any]) -> bool:
    return "choices" in answer


def is_request(request: dict[str, Any]) -> bool:
    return "messages" in request and "model" in request


def starts_stream(data: dict[str, Any], kind: str) -> bool:
    return "choices" in data or data.get("object") == "chat.completion.chunk"


def is_event(data: dict[str, Any], kind: str) -> bool:
    return "choices" in data or ("error" in data and "type" not in data)


# -- the streamed answer put together ---------------------------------------------------------

def assemble(events: list[Event]) -> dict[str, Any] | None:
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
    index = as_index(raw.get("index"))
    choice = choices.setdefault(index, {"index": index, "message": {"role": "assistant"},
                                        "finish_reason": None})
    if raw.get("finish_reason") is not None:
        choice["finish_reason"] = raw["finish_reason"]
    message = choice["message"]
    delta = as_dict(raw.get("delta"))
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
        function = as_dict(delta.get("function"))
        if function.get("name"):
            call["function"]["name"] = function["name"]
        if isinstance(function.get("arguments"), str):
            call["function"]["arguments"] += function["arguments"]


# -- one event's increment, for the live tail --------------------------------------------------

def delta(data: dict[str, Any], kind: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if data.get("error"):
        out["error"] = as_text(as_dict(data["error"]).get("message")) or str(data["error"])
    choices = data.get("choices")
    choice = as_dict(choices[0]) if isinstance(choices, list) and choices else {}
    d = as_dict(choice.get("delta"))
    text = as_text(d.get("content")) or as_text(d.get("refusal"))
    reasoning = as_text(d.get("reasoning")) or as_text(d.get("reasoning_content"))
    if text:
        out["text"] = text
    if reasoning:
        out["reasoning"] = reasoning
    calls = d.get("tool_calls")
    if isinstance(calls, list) and calls:
        call = as_dict(calls[0])
        function = as_dict(call.get("function"))
        out["tool"] = {"index": as_index(call.get("index")), "id": as_text(call.get("id")),
                       "name": as_text(function.get("name")), "arguments": as_text(function.get("arguments"))}
    if choice.get("finish_reason"):
        out["finish"] = as_text(choice["finish_reason"])
    return out


# -- the answer's fields (derive.py) -----------------------------------------------------------

def answer_fields(answer: dict[str, Any], out: dict[str, Any]) -> None:
    choices = [c for c in answer.get("choices") or [] if isinstance(c, dict)]
    if not choices:
        return
    out["finish_reason"] = as_str(choices[0].get("finish_reason"))
    names = []
    for choice in choices:
        for call in as_dict(choice.get("message")).get("tool_calls") or []:
            name = as_dict(as_dict(call).get("function")).get("name")
            if isinstance(name, str):
                names.append(name)
    out["tool_calls"] = names
    message = as_dict(choices[0].get("message"))
    out["reply_preview"] = preview(text_of(message.get("content")) or as_str(choices[0].get("text")))


# -- the request as a conversation (conversation.py) --------------------------------------------

_CONVERSATION_KEYS = ("model", "messages", "tools", "functions")
_MEDIA = {"image_url": "image", "input_audio": "audio", "file": "file"}


def answer_messages(answer: dict[str, Any]) -> dict[str, Any]:
    """The answer as the request a client sends it back in (its `messages`)."""
    choices = answer.get("choices")
    message = as_dict(choices[0]).get("message") if isinstance(choices, list) and choices else None
    return {"messages": [message]} if isinstance(message, dict) else {}


def conversation(request: dict[str, Any]) -> Conversation | None:
    raw_messages = request.get("messages")
    if not isinstance(raw_messages, list):
        return None
    system, messages = [], []
    for raw in raw_messages:
        raw = as_dict(raw)
        role = raw.get("role")
        if role in ("system", "developer"):
            system.append(content_text(raw.get("content")))
            continue
        if role in ("tool", "function"):
            found = message("tool", [result_part(raw.get("tool_call_id") or raw.get("name"), raw.get("content"))])
        else:
            found = message(role, [*_content_parts(raw.get("content")), *_calls(raw)])
        if found is not None:
            messages.append(found)
    tools = {}
    for tool in request.get("tools") or request.get("functions") or []:
        tool = as_dict(tool)
        name = as_dict(tool.get("function")).get("name") or tool.get("name")
        if isinstance(name, str):
            tools[name] = tool
    return Conversation("\n\n".join(t for t in system if t) or None, messages, tools,
                        as_str(request.get("model")), params_of(request, _CONVERSATION_KEYS))


def _content_parts(content: Any) -> list[dict[str, Any] | None]:
    if not isinstance(content, list):
        return [text_part(content)]
    parts = []
    for part in content:
        part = as_dict(part)
        kind = part.get("type")
        if kind == "text" or kind == "refusal":
            parts.append(text_part(part.get(kind)))
        elif kind in _MEDIA:
            value = as_dict(part.get(kind))
            parts.append(media_part(_MEDIA[kind], value.get("url") or value.get("file_id")
                                    or value.get("data") or value.get("file_data")))
        elif kind:
            parts.append(media_part(str(kind), part))
    return parts


def _calls(raw: dict[str, Any]) -> list[dict[str, Any]]:
    calls = [as_dict(c) for c in raw.get("tool_calls") or [] if isinstance(c, dict)]
    parts = [call_part(c.get("id"), as_dict(c.get("function")).get("name"),
                       as_dict(c.get("function")).get("arguments")) for c in calls]
    legacy = as_dict(raw.get("function_call"))
    if legacy:
        parts.append(call_part(None, legacy.get("name"), legacy.get("arguments")))
    return parts
