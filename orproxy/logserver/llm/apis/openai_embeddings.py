"""OpenAI embeddings (`POST .../v1/embeddings`): a `list` of vectors and its `usage`.

Never streamed, no text answer: only the API's name and the shared fields (model, token
counts) are derived.
"""
from __future__ import annotations

from typing import Any

from orproxy.logserver.llm.sse import Event

NAME = "openai-embeddings"
TITLE = "embeddings"
PATHS = ("/embeddings",)
TEXT_SIGN = None
SKIM_MARKERS: tuple[str, ...] = ()


def is_answer(answer: dict[str, Any]) -> bool:
    return answer.get("object") == "list" and "usage" in answer


def is_request(request: dict[str, Any]) -> bool:
    return False


def starts_stream(data: dict[str, Any], kind: str) -> bool:
    return False


is_event = starts_stream


def assemble(events: list[Event]) -> dict[str, Any] | None:
    return None


def delta(data: dict[str, Any], kind: str) -> dict[str, Any]:
    return {}


def answer_fields(answer: dict[str, Any], out: dict[str, Any]) -> None:
    """Nothing beyond the shared fields."""
