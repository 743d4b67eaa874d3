"""The free-text search's part of a query: the phrase a `q` becomes, the clause that
finds it in the `texts` table (SQLite FTS5, store/index.py), and the snippets of a page.

A phrase is matched two ways (`fit`): as the set of matching rows, or by a check of each
row as the newest-first scan meets it. The set is best for a rare phrase; the check for a
common one, whose newest 50 are met after a few hundred rows while its set would be tens
of thousands of rows built first (100 ms at 100,000 exchanges).
"""
from __future__ import annotations

import re
import sqlite3
from typing import Any

_WORD_RE = re.compile(r"\w+")
_TOKEN_WORD_RE = re.compile(r"[^\W_]+")  # a word as FTS5's unicode61 tokenizer splits them
SNIPPET_CHARS = 80  # of text on each side of a match
MATCHING = "rowid IN (SELECT rowid FROM texts WHERE texts MATCH ?)"
_MATCHING_EACH = "EXISTS (SELECT 1 FROM texts WHERE texts MATCH ? AND texts.rowid = exchanges.rowid)"
COMMON_SHARE = 20  # a phrase in more than 1 in 20 exchanges is common


def to_phrase(text: str) -> str | None:
    """The free text as an FTS5 phrase of its words (punctuation, which the index splits
    words at, cannot change the query's meaning); None if it has no word."""
    words = _WORD_RE.findall(text)
    return '"' + " ".join(words) + '"' if words else None


def fit(conn: sqlite3.Connection, clauses: list[str], phrase: str | None) -> list[str]:
    """`clauses` with their text search as a per-row check if the phrase is common (the
    module docstring says why); a count of at most 1 in COMMON_SHARE rows tells."""
    if not phrase:
        return list(clauses)
    rows = conn.execute("SELECT coalesce(max(rowid), 0) FROM exchanges").fetchone()[0]
    bound = max(rows // COMMON_SHARE, 1000)
    found = conn.execute("SELECT count(*) FROM (SELECT 1 FROM texts WHERE texts MATCH ? LIMIT ?)",
                         (phrase, bound)).fetchone()[0]
    if found < bound:
        return list(clauses)
    return [c.replace(MATCHING, _MATCHING_EACH) for c in clauses]


def add_snippets(conn: sqlite3.Connection, items: list[dict[str, Any]], phrase: str) -> None:
    """Each item found in the texts gets `snippet`: the words around the match, as segments
    [{"text", "match"}] (a UI shows them without parsing markup). Cut here from the stored
    text, not by FTS5's snippet(), which tokenises each whole text again: 20 ms a page."""
    ids = [item["id"] for item in items]
    texts = dict(conn.execute(f"SELECT id, (SELECT body FROM texts WHERE texts.rowid = exchanges.rowid) "
                              f"FROM exchanges WHERE id IN ({', '.join('?' * len(ids))})", ids).fetchall())
    words = [word.lower() for word in _TOKEN_WORD_RE.findall(phrase)]
    if not words:
        return
    pattern = re.compile(r"[\W_]+".join(map(re.escape, words)))  # a literal first: a fast scan
    for item in items:
        text = texts.get(item["id"])
        found = _match(text, pattern) if text else None
        if found:  # (a match the index made by folding accents has none here: no snippet)
            item["snippet"] = _snippet(text, *found)


def _match(text: str, pattern: re.Pattern[str]) -> tuple[int, int] | None:
    """Where the phrase is in `text`, in any case, as whole words (as FTS5 matched it)."""
    lower = text.lower()
    if len(lower) != len(text):  # a character whose lower case is longer: positions differ
        lower = "".join(c if len(c.lower()) != 1 else c.lower() for c in text)
    for found in pattern.finditer(lower):
        start, end = found.span()
        if not (start and lower[start - 1].isalnum()) and not (end < len(lower) and lower[end].isalnum()):
            return start, end
    return None


def _snippet(text: str, start: int, end: int) -> list[dict[str, Any]]:
    """The match and about SNIPPET_CHARS around it, cut at spaces, whitespace made one space."""
    before, after = text[max(start - SNIPPET_CHARS, 0):start], text[end:end + SNIPPET_CHARS]
    if start > SNIPPET_CHARS and " " in before:
        before = "…" + before[before.index(" ") + 1:]
    if end + SNIPPET_CHARS < len(text) and " " in after:
        after = after[:after.rindex(" ")] + "…"
    pieces = [(" ".join(before.split()) + (" " if before[-1:].isspace() else ""), False),
              (text[start:end], True),
              ((" " if after[:1].isspace() else "") + " ".join(after.split()), False)]
    return [{"text": piece, "match": match} for piece, match in pieces if piece]
