"""The text of an exchange that the free-text search (`q`) finds it by, bounded.

What a person would search for: the messages (a turn that continues another gives only
the messages the previous turn did not have, so that a 200-turn conversation is not
indexed 200 times over, and a search finds the turn where a text first appeared), the
answer's text and tool calls, and for other APIs the strings of a JSON body or a text
body. A streamed answer's text is read from its events' text fields by a regular
expression, not by parsing every event: that is 100 times faster on a long stream
(0.5 ms against 50 for 2,000 events here), and the derived fields only skim long streams.

The index adds the exchange's short columns (`LABELS`: path, route, models, error) to
that text (`indexed_text`), so that one full-text lookup finds an exchange by any of them
too, in flight as well (its request's derivation gives an empty text for them): a
substring scan of those columns read every row, 130 ms at 100,000 exchanges.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Any

from orproxy import jsoncodec
from orproxy.logserver.llm.bodies import ParsedBody
from orproxy.logserver.llm.conversation import Conversation

REQUEST_CHARS = 192 * 1024  # of the new messages (or the request body)
RESPONSE_CHARS = 64 * 1024  # of the answer (or the response body)
# A text field of an LLM answer or event, its JSON string literal captured
_TEXT_FIELD_RE = re.compile(
    r'"(?=[ctdpar])(content|text|delta|partial_json|arguments|thinking|reasoning|reasoning_content|refusal)"'
    r'\s*:\s*"([^"\\]*(?:\\.[^"\\]*)*)"')  # the literal's loop unrolled: runs, not chars
LABELS = ("path", "route", "model_requested", "model", "error", "error_message")  # index columns
_NOISE_KEYS = frozenset(("id", "object", "type", "role", "model", "finish_reason", "stop_reason",
                         "created", "system_fingerprint", "tool_call_id", "call_id", "signature"))


def exchange_text(conversation: Conversation | None, new_from: int, request: ParsedBody | None,
                  response_text: str | None, llm: bool) -> str:
    """The searchable text: the request's part of it, then the answer's."""
    if conversation is not None:
        asked = conversation_text(conversation, new_from)
    else:
        asked = body_text(request)
    answered = answer_text(response_text) if llm else body_text_of(response_text)
    return "\n".join(t for t in (asked[:REQUEST_CHARS], answered[:RESPONSE_CHARS]) if t)


def indexed_text(row: dict[str, Any], text: str) -> str:
    """What the full-text index holds for an exchange: its text, then its LABELS' values."""
    labels = " ".join(str(row[c]) for c in LABELS if row.get(c))
    return f"{text}\n{labels}" if text and labels else text or labels


_WORD_RE = re.compile(r"[^\W_]+")  # a word as SQLite FTS5's unicode61 tokenizer splits them
_ACCENT_RE = re.compile("[\u0300-\u036f]")  # the combining diacritics of Latin letters


def folded_words(text: str) -> str:
    """The words of `text` as the SQLite index matches them: lower case, Latin accents
    dropped (remove_diacritics), one space between. PostgreSQL's index is given this
    (store/pgindex.py), and so is either's phrase (web/textsearch.py), so that both
    split and fold words alike."""
    text = text.lower()
    if not text.isascii():
        text = _ACCENT_RE.sub("", unicodedata.normalize("NFD", text))
    return " ".join(_WORD_RE.findall(text))


def conversation_text(conversation: Conversation, new_from: int) -> str:
    """The system prompt (of a first turn) and the messages from `new_from` on."""
    texts = [conversation.system or ""] if new_from == 0 else []
    size = 0
    for message in conversation.messages[new_from:]:
        text = message.text
        texts.append(text)
        size += len(text)
        if size > REQUEST_CHARS:
            break
    return "\n".join(t for t in texts if t)


def answer_text(raw: str | None) -> str:
    """The text fields of an LLM answer's raw JSON or event stream, in order: a field's
    pieces joined as they came (a stream's deltas), another field on a new line."""
    if not raw:
        return ""
    keys, literals, size = [], [], 0
    for match in _TEXT_FIELD_RE.finditer(raw):
        if match.group(2):
            keys.append(match.group(1))
            literals.append(match.group(2))
            size += len(match.group(2))
            if size > RESPONSE_CHARS * 2:  # escapes make a literal longer than its text
                break
    if not literals:
        return ""
    try:
        values = jsoncodec.loads('["' + '","'.join(literals) + '"]')  # one decode for all
    except ValueError:
        return ""
    out, last = [], None
    for key, value in zip(keys, values):
        out.append(value if key == last else "\n" + value)
        last = key
    return "".join(out).strip()


def body_text(body: ParsedBody | None) -> str:
    """A body that is not an LLM conversation: a JSON body's strings, or its text."""
    if body is None or body.kind in ("empty", "binary"):
        return ""
    if body.kind == "json":
        strings: list[str] = []
        _strings(body.json, strings, [0])
        return "\n".join(strings)
    return (body.text or "")[:REQUEST_CHARS]


def body_text_of(text: str | None) -> str:
    """The same for a response body given as its decoded text."""
    if not text:
        return ""
    if text.lstrip()[:1] in ("{", "["):
        try:
            return body_text(ParsedBody("json", text, jsoncodec.loads(text)))
        except ValueError:
            pass
    return text[:RESPONSE_CHARS]


def _strings(value: Any, out: list[str], size: list[int], key: str | None = None) -> None:
    if size[0] > REQUEST_CHARS:
        return
    if isinstance(value, str):
        if value and key not in _NOISE_KEYS:
            out.append(value)
            size[0] += len(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            _strings(v, out, size, k)
    elif isinstance(value, list):
        for v in value:
            _strings(v, out, size, key)
