"""OpenAI Responses (`POST .../v1/responses`).

A JSON answer is a `response` whose `output` lists items (messages, function calls,
reasoning). A streamed one is typed events `response.*`: deltas of output text, reasoning
and function-call arguments, items added, and at the end `response.completed` (or
`.incomplete`, `.failed`) with the whole response in it, which is the assembled answer.
"""
from __future__ import annotations

from typing import Any

from orproxy.logserver.llm.conversation import (Conversation, call_part, content_text, media_part, message,
                                                params_of, result_part, text_part)
from orproxy.logserver.llm.sse import Event
from orproxy.logserver.llm.values import as_dict, as_index, as_str, as_text, preview, text_of

NAME = "openai-responses"
TITLE = "responses"
PATHS = ("/responses",)
TEXT_SIGN = None  # a stream's text is not told apart: every API's markers are kept
_ENDINGS = ("response.completed", "response.incomplete", "response.failed")
SKIM_MARKERS = ('"error"', '"function_call"', *_ENDINGS)


def is_answer(answer: dict[str, Any]) -> bool:
    return answer.get("object") == "response"


def is_request(request: dict[str, Any]) -> bool:
    return False  # told by its path or its answer


def starts_stream(data: dict[str, Any], kind: str) -> bool:
    return kind.startswith("response.")


is_event = starts_stream


def assemble(events: list[Event]) -> dict[str, Any] | None:
    """The last whole response a stream carried (`response.completed` at its end)."""
    found = None
    for event in events:
        data = event.json
        if isinstance(data, dict) and isinstance(data.get("response"), dict):
            found = data["response"]
    return found


def delta(data: dict[str, Any], kind: str) -> dict[str, Any]:
    if kind == "response.output_text.delta":
        return {"text": as_text(data.get("delta"))}
    if kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
        return {"reasoning": as_text(data.get("delta"))}
    if kind == "response.function_call_arguments.delta":
        return {"tool": {"index": as_index(data.get("output_index")), "id": as_text(data.get("item_id")),
                         "name": "", "arguments": as_text(data.get("delta"))}}
    if kind == "response.output_item.added":
        item = as_dict(data.get("item"))
        if item.get("type") == "function_call":
            return {"tool": {"index": as_index(data.get("output_index")), "id": as_text(item.get("id")),
                             "name": as_text(item.get("name")), "arguments": ""}}
    if kind in _ENDINGS:
        return {"finish": kind.split(".", 1)[1]}
    if kind == "response.error":
        return {"error": as_text(data.get("message")) or "error"}
    return {}


def answer_fields(answer: dict[str, Any], out: dict[str, Any]) -> None:
    out["finish_reason"] = as_str(answer.get("status"))
    out["response_id"] = as_str(answer.get("id"))  # what a next turn's previous_response_id names
    items = [i for i in answer.get("output") or [] if isinstance(i, dict)]
    if "output" in answer:
        out["tool_calls"] = [i["name"] for i in items if i.get("type") == "function_call" and isinstance(i.get("name"), str)]
    texts = [text_of(i.get("content")) for i in items if i.get("type") == "message"]
    out["reply_preview"] = preview(" ".join(t for t in texts if t))


# -- the request as a conversation (conversation.py) --------------------------------------------

_CONVERSATION_KEYS = ("model", "input", "instructions", "tools", "previous_response_id")
_TEXTS = ("input_text", "output_text", "text", "refusal", "summary_text")
_SKIPPED_ITEMS = ("reasoning", "item_reference")


def answer_messages(answer: dict[str, Any]) -> dict[str, Any]:
    """The answer as the request a client sends it back in (its `input` items)."""
    output = answer.get("output")
    return {"input": output} if isinstance(output, list) else {}


def conversation(request: dict[str, Any]) -> Conversation | None:
    items = request.get("input")
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    if not isinstance(items, list):
        return None
    system, messages = [as_text(request.get("instructions"))], []
    for item in items:
        item = as_dict(item)
        kind = item.get("type") or "message"
        role = item.get("role")
        if kind == "message" and role in ("system", "developer"):
            system.append(content_text(item.get("content")))
            continue
        if kind == "message":
            found = message(role, _content_parts(item.get("content")))
        elif kind.endswith("_call_output"):
            found = message("tool", [result_part(item.get("call_id"), item.get("output"))])
        elif kind in ("function_call", "custom_tool_call"):
            found = message("assistant", [call_part(item.get("call_id"), item.get("name"),
                                                    item.get("arguments", item.get("input")))])
        elif kind in _SKIPPED_ITEMS:
            continue
        else:  # a built-in tool's call (web search, code interpreter...): by its id
            found = message("assistant", [media_part(kind, item.get("call_id") or item.get("id"))])
        if found is not None:
            messages.append(found)
    tools = {}
    for tool in request.get("tools") or []:
        tool = as_dict(tool)
        name = tool.get("name") or tool.get("type")
        if isinstance(name, str):
            tools[name] = tool
    return Conversation("\n\n".join(t for t in system if t) or None, messages, tools,
                        as_str(request.get("model")), params_of(request, _CONVERSATION_KEYS),
                        as_str(request.get("previous_response_id")))


def _content_parts(content: Any) -> list[dict[str, Any] | None]:
    if not isinstance(content, list):
        return [text_part(content)]
    parts: list[dict[str, Any] | None] = []
    for part in content:
        part = as_dict(part)
        kind = part.get("type")
        if kind in _TEXTS:
            parts.append(text_part(part.get("text", part.get("refusal"))))
        elif kind:
            parts.append(media_part(str(kind), part.get("image_url") or part.get("file_id")
                                    or part.get("file_data") or part.get("file_url")))
    return parts
