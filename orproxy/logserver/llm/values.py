"""Values taken out of parsed JSON that may be anything: a logged body is whatever the
upstream sent, and a log viewer must show what it can, never raise. Shared by derive.py
and the API modules (apis/), so each reads "a non-empty string", "a count" the same way.
"""
from __future__ import annotations

import math
from typing import Any

PREVIEW = 200  # characters of a prompt or reply preview


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_str(value: Any) -> str | None:
    """A non-empty string, else None."""
    return value if isinstance(value, str) and value else None


def as_text(value: Any) -> str:
    """A string, else "" (a piece to append)."""
    return value if isinstance(value, str) else ""


def as_count(value: Any) -> int | None:
    """A non-negative integer (not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def as_number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def as_index(value: Any) -> int:
    """A stream's `index` of a choice, block or output item; 0 when it has none."""
    return value if isinstance(value, int) else 0


def preview(text: str | None) -> str | None:
    """The start of a text, its whitespace folded, at most PREVIEW characters."""
    if not text:
        return None
    text = " ".join(text.split())
    return text if len(text) <= PREVIEW else text[:PREVIEW - 1] + "…"


def text_of(content: Any) -> str | None:
    """The text of a message's content: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return " ".join(texts) if texts else None
    return None


def error_message(error: Any) -> str | None:
    """What an API's `error` value says: its message, else its type or code, or itself."""
    if isinstance(error, dict):
        return as_str(error.get("message")) or as_str(error.get("type")) or as_str(error.get("code"))
    return as_str(error)
