"""The client's session an exchange belongs to, from what agent CLIs send.

Agents name their session themselves, each its own way; the first of these that a request
carries is its `session_id` (README, "Conversations and sessions"):

  X-Session-Id               the generic one (OpenCode sends it too)
  X-Claude-Code-Session-Id   Claude Code
  session_id, session-id     Codex CLI (the underscore form), and clients copying it
  X-OpenCode-Session         OpenCode
  X-Session-Affinity         OpenCode, Kilo Code
  X-Qwen-Code-Session-Id     Qwen Code
  metadata.user_id           older Claude Code, in an Anthropic request's body:
                             `user_<hash>_account_<uuid>_session_<uuid>`
"""
from __future__ import annotations

import re
from typing import Any

from orproxy.logserver.llm.httpfile import Head
from orproxy.logserver.llm.values import as_dict

HEADERS = ("x-session-id", "x-claude-code-session-id", "session_id", "session-id",
           "x-opencode-session", "x-session-affinity", "x-qwen-code-session-id")
_VALUE_RE = re.compile(r"^[\x21-\x7e]{1,200}$")  # one visible token, not a sentence or a secret's line
_USER_ID_RE = re.compile(r"_session_([0-9A-Za-z-]{8,64})$")


def session_id(head: Head | None, request: Any) -> str | None:
    """The session named by the request's headers (as logged), else by its body; None."""
    if head is not None:
        for name in HEADERS:
            value = (head.header(name) or "").strip()
            if _VALUE_RE.match(value):
                return value
    user_id = as_dict(as_dict(request).get("metadata")).get("user_id")
    if isinstance(user_id, str):
        found = _USER_ID_RE.search(user_id)
        if found:
            return found.group(1)
    return None
