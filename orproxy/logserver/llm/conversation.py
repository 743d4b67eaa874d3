"""A request seen as a turn of a conversation: its system prompt, its messages in one
canonical form whatever the API, its tools and its parameters, and the keys that link it
to the turn it continues.

Canonical, because a client echoes an earlier turn in its own way: Anthropic clients move
`cache_control` marks and send thinking blocks back or not, OpenAI clients re-serialise a
tool call's arguments, the Responses API lists reasoning items. A message keeps only what
the conversation says (its role, its texts, tool calls and results, media by reference),
so that the same message hashes the same in every turn that repeats it.

Linking works on the requests alone. A turn's `turn_key` hashes its messages (not the
system prompt or the tools, whose changes the diff shows). A later request that continues
it holds those messages followed by an assistant message (the answer, with the tool
results and the next question after it), so its candidates are the keys of its prefixes
that end before an assistant message, longest first. No answer need be parsed whole (a
long stream is only skimmed), and tool results appended between turns change nothing.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from orproxy import jsoncodec

ROLES = ("user", "assistant", "tool")  # a message's canonical role; system prompts stand apart


@dataclass
class Message:
    """One message: a role and its parts, each a small dict with a `type`:
    text (text), tool_call (id, name, arguments: canonical JSON), tool_result (id, text,
    error), media (kind, ref: a URL or a digest of inline data)."""

    role: str
    parts: list[dict[str, Any]]
    _key: str | None = field(default=None, repr=False, compare=False)

    @property
    def key(self) -> str:
        if self._key is None:
            self._key = _digest(_json([self.role, self.parts]))
        return self._key

    @property
    def text(self) -> str:
        """What a reader (and the search) sees of it: its texts, tool calls and results."""
        out = []
        for part in self.parts:
            kind = part["type"]
            if kind == "text" or kind == "tool_result":
                out.append(part["text"])
            elif kind == "tool_call":
                out.append(f"{part['name']}({part['arguments']})")
        return "\n".join(t for t in out if t)


@dataclass
class Conversation:
    """A request's conversation (see the module docstring)."""

    system: str | None
    messages: list[Message]
    tools: dict[str, Any] = field(default_factory=dict)  # name -> its declaration
    model: str | None = None
    params: dict[str, Any] = field(default_factory=dict)  # every other top-level key
    previous_response_id: str | None = None  # the Responses API's own link

    def keys(self) -> list[str]:
        """keys()[i] is the key of the first i messages (keys()[0] of none)."""
        chain = [_digest("")]
        for message in self.messages:
            chain.append(_digest(chain[-1] + message.key))
        return chain

    @property
    def turn_key(self) -> str | None:
        """The key a later turn continuing this one finds it by; None without messages."""
        return self.keys()[-1] if self.messages else None

    def continuation_candidates(self) -> list[tuple[int, str]]:
        """(i, key of messages[:i]) for every assistant message i after the first message,
        longest first: a turn this one continues has exactly messages[:i]."""
        chain = self.keys()
        return [(i, chain[i]) for i in range(len(self.messages) - 1, 0, -1)
                if self.messages[i].role == "assistant"]


def _json(value: Any) -> str:
    try:
        return jsoncodec.dumps(value, sort_keys=True).decode()
    except TypeError:  # a lone surrogate, an integer past 64 bits: still one text per value
        return repr(value)


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=10).hexdigest()


# -- canonical parts, for the API modules -----------------------------------------------------

def text_part(text: Any) -> dict[str, Any] | None:
    """A text part, its ends stripped (clients differ there); None if it is empty."""
    if not isinstance(text, str) or not text.strip():
        return None
    return {"type": "text", "text": text.strip()}


def call_part(call_id: Any, name: Any, arguments: Any) -> dict[str, Any]:
    """A tool call; `arguments` a JSON string or a value, kept as canonical JSON."""
    return {"type": "tool_call", "id": call_id if isinstance(call_id, str) else "",
            "name": name if isinstance(name, str) else "", "arguments": canonical_json(arguments)}


def result_part(call_id: Any, content: Any, error: bool = False) -> dict[str, Any]:
    part = {"type": "tool_result", "id": call_id if isinstance(call_id, str) else "",
            "text": content_text(content)}
    if error:
        part["error"] = True
    return part


def media_part(kind: str, ref: Any) -> dict[str, Any]:
    """An image, file or audio part: by its URL, or by a digest of its inline data."""
    if isinstance(ref, str) and len(ref) > 300:
        ref = "sha:" + _digest(ref)
    return {"type": "media", "kind": kind, "ref": ref if isinstance(ref, str) else canonical_json(ref)}


def canonical_json(value: Any) -> str:
    """A JSON value (or a string holding one) as compact JSON with sorted keys; a string
    that is not JSON stays as it is."""
    if isinstance(value, str):
        try:
            value = jsoncodec.loads(value)
        except ValueError:
            return value.strip()
    return _json(value)


def content_text(content: Any) -> str:
    """The text of a content value: a string, or the texts of a list of parts."""
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict)]
        return "\n".join(t.strip() for t in texts if isinstance(t, str) and t.strip())
    return "" if content is None else canonical_json(content)


def message(role: Any, parts: list[dict[str, Any] | None]) -> Message | None:
    """A canonical message, or None for a role that is no message (system) or no parts."""
    kept = [p for p in parts if p is not None]
    if role not in ROLES or not kept:
        return None
    return Message(role, kept)


def params_of(request: dict[str, Any], conversation_keys: tuple[str, ...]) -> dict[str, Any]:
    """The request's other top-level keys: sampling parameters, limits, formats."""
    return {k: v for k, v in request.items() if k not in conversation_keys}
