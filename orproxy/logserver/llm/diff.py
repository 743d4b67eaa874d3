"""What changed from one turn of a conversation to another: which messages were added,
removed or changed, and the changes to the system prompt, the tools, the model and the
parameters (`GET /api/requests/{id}/diff`).

Messages are aligned by their canonical keys (conversation.py), so a turn that continues
the one before shows its few new messages and one run of the same ones, however long the
conversation. A changed text (a message, the system prompt, a tool's declaration) gets a
character-level diff from diff-match-patch, tidied to whole words and bounded in time: it
falls back to a coarser diff rather than take longer than DIFF_SECONDS.
"""
from __future__ import annotations

from difflib import SequenceMatcher
from typing import Any

from diff_match_patch import diff_match_patch

from orproxy import jsoncodec
from orproxy.logserver.llm.conversation import Conversation, Message

DIFF_SECONDS = 0.5       # per text diffed
TEXT_CHARS = 64 * 1024   # of an added or removed message's text shown
_OPS = {-1: "-", 0: "=", 1: "+"}


def compare(before: Conversation, after: Conversation, answer_at: int | None = None) -> dict[str, Any]:
    """The diff of `after` against `before` (the earlier turn), as the API answers it.
    `answer_at`: where in `after` the earlier turn's answer is (an added message marked
    `answer`, not news from the client)."""
    messages = _messages(before.messages, after.messages)
    for entry in messages:
        if entry["op"] == "added" and entry["to"] == answer_at:
            entry["answer"] = True
    counts = {op: sum(m.get("count", 1) for m in messages if m["op"] == op)
              for op in ("same", "added", "removed", "changed")}
    return {"model": None if before.model == after.model else {"from": before.model, "to": after.model},
            "system": _text_change(before.system, after.system),
            "tools": _tools(before.tools, after.tools),
            "params": _params(before.params, after.params),
            "messages": messages, "counts": counts}


def text_diff(old: str, new: str) -> list[list[str]]:
    """[op, text] pieces (op "=", "-" or "+") turning `old` into `new`."""
    dmp = diff_match_patch()
    dmp.Diff_Timeout = DIFF_SECONDS
    pieces = dmp.diff_main(old, new)
    dmp.diff_cleanupSemantic(pieces)
    return [[_OPS[op], text] for op, text in pieces]


def _messages(before: list[Message], after: list[Message]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    matcher = SequenceMatcher(None, [m.key for m in before], [m.key for m in after], autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            out.append({"op": "same", "from": i1, "to": j1, "count": i2 - i1})
            continue
        pairs = min(i2 - i1, j2 - j1) if tag == "replace" else 0
        for k in range(pairs):
            old, new = before[i1 + k], after[j1 + k]
            if old.role == new.role:
                out.append({"op": "changed", "from": i1 + k, "to": j1 + k, "role": new.role,
                            "diff": text_diff(old.text, new.text)})
            else:
                out.append(_whole("removed", old, i1 + k, None))
                out.append(_whole("added", new, None, j1 + k))
        out += [_whole("removed", before[i], i, None) for i in range(i1 + pairs, i2)]
        out += [_whole("added", after[j], None, j) for j in range(j1 + pairs, j2)]
    return out


def _whole(op: str, message: Message, old: int | None, new: int | None) -> dict[str, Any]:
    text = message.text
    entry = {"op": op, "from": old, "to": new, "role": message.role, "text": text[:TEXT_CHARS]}
    if len(text) > TEXT_CHARS:
        entry["truncated"] = True
    return entry


def _text_change(old: str | None, new: str | None) -> dict[str, Any]:
    if old == new:
        return {"op": "same"}
    if old is None:
        return {"op": "added", "text": new}
    if new is None:
        return {"op": "removed", "text": old}
    return {"op": "changed", "diff": text_diff(old, new)}


def _tools(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name in sorted(set(before) | set(after)):
        if name not in before:
            out.append({"name": name, "op": "added", "declaration": after[name]})
        elif name not in after:
            out.append({"name": name, "op": "removed", "declaration": before[name]})
        else:
            old, new = _pretty(before[name]), _pretty(after[name])
            if old != new:
                out.append({"name": name, "op": "changed", "diff": text_diff(old, new)})
    return out


def _params(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if name not in before:
            out.append({"name": name, "op": "added", "to": new})
        elif name not in after:
            out.append({"name": name, "op": "removed", "from": old})
        elif _pretty(old) != _pretty(new):
            out.append({"name": name, "op": "changed", "from": old, "to": new})
    return out


def _pretty(value: Any) -> str:
    try:
        return jsoncodec.dumps(value, indent=True, sort_keys=True).decode()
    except TypeError:
        return repr(value)
