"""The free-text search's part of a query: the phrase a `q` becomes, the clause that
finds it in the `texts` table (SQLite FTS5, store/index.py), and the snippets of a page.

The clause is a membership test (the listing first looks for a page among the newest rows
with `among` instead: listing._among_newest): the phrase's matching rowids are collected once (FTS5
walks the phrase's words' lists: 4 ms for 20,000 matches), and the newest-first scan of
the time index checks each row it meets against them, with no read of the row itself, and
stops at the page's end. That costs about the same whether a phrase is rare (the scan goes
far, at 0.15 µs a row) or common (a long list, a short scan). Driving the query from the
matches instead, then sorting them, costs 3-10 µs a match (60 ms for 20,000): worth it
only for a few, which listing._page counts first when the newest rows held almost none (a
phrase nothing matches is then no scan at all). An FTS5 lookup per row checked costs
40-100 µs a row (2 s for a rare phrase).
"""
from __future__ import annotations

import re
import sqlite3
from typing import Any

from orproxy.logserver.llm.searchtext import folded_words
from orproxy.logserver.store.index import TEXT_MATCHES

_WORD_RE = re.compile(r"\w+")
_ID_PREFIX_RE = re.compile(r"[0-9a-f-]{1,36}")
_TOKEN_WORD_RE = re.compile(r"[^\W_]+")  # a word as FTS5's unicode61 tokenizer splits them
SNIPPET_CHARS = 80  # of text on each side of a match
ID_MATCHES = "SELECT rowid FROM exchanges WHERE id >= ? AND id < ?"  # the rows of an id prefix
_FROM_OLDEST = " AND rowid >= (SELECT min(rowid) FROM {table})"


def union(sets: list[str]) -> str:
    """One query of the rowids of these sets (a rowid may come twice)."""
    return " UNION ALL ".join(sets)


def matching(sets: list[str]) -> str:
    """The clause: the row is in one of these sets of rowids. Its `+` keeps SQLite from
    driving the query by them (the module docstring says why)."""
    return f"+rowid IN ({union(sets)})" if sets else "0 = 1"


def among(clause: str, table: str) -> str:
    """The clause for the rows of `table` alone: only the phrase's matches from the oldest
    rowid in `table` on are collected."""
    return clause.replace(TEXT_MATCHES, TEXT_MATCHES + _FROM_OLDEST.format(table=table))


def to_phrase(text: str) -> str | None:
    """The free text as an FTS5 phrase of its words (punctuation, which the index splits
    words at, cannot change the query's meaning); None if it has no word. Whole words: a
    short prefix costs a merge of the lists of every word it starts (130 ms at 20,000
    exchanges for one of 1 to 3 letters), and prefix indexes would grow the file by a
    quarter each."""
    words = _WORD_RE.findall(text)
    return '"' + " ".join(words) + '"' if words else None


def match_argument(phrase: str) -> str:
    """The phrase as TEXT_MATCHES takes it: its words folded as the index folds them
    (the same phrase to FTS5, which folds it again; PostgreSQL's folds nothing)."""
    return '"' + folded_words(phrase) + '"'


def id_range(text: str) -> tuple[str, str] | tuple[None, None]:
    """The ids that start with `text` as a range [low, high) (ids are lower-case UUIDs),
    or (None, None) if no id can start with it."""
    low = text.lower()
    if not _ID_PREFIX_RE.fullmatch(low):
        return None, None
    return low, low[:-1] + chr(ord(low[-1]) + 1)


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
