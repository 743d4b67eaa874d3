"""OpenAI Responses (`POST .../v1/responses`).

A JSON answer is a `response` whose `output` lists items (messages, function calls,
reasoning). A streamed one is typed events `response.*`: deltas of output text, reasoning
and function-call arguments, items added, and at the end `response.completed` (or
`.incomplete`, `.failed`) with the whole response in it, which is the assembled answer.
"""
from __future__ import annotations

from typing import Any

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
    items = [i for i in answer.get("output") or [] if isinstance(i, dict)]
    if "output" in answer:
        out["tool_calls"] = [i["name"] for i in items if i.get("type") == "function_call" and isinstance(i.get("name"), str)]
    texts = [text_of(i.get("content")) for i in items if i.get("type") == "message"]
    out["reply_preview"] = preview(" ".join(t for t in texts if t))
