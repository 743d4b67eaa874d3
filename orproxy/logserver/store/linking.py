"""Which earlier turn a request continues: looked up among the turns this process derived
lately, then in the index (llm/conversation.py says what makes one turn continue another).

Memory first, because a conversation's turns follow each other within seconds: the turn
before is almost always one this process has just derived, and may not be in the index yet
(its row is written in the next batch). The index answers for turns that another worker
process derived, or that came before a restart. A rebuild (reindex.py) uses memory alone,
filled as it walks the exchanges oldest first.

Several turns may share a key: a request sent again after an error, or two agents that
began alike. The one chosen started before the request (up to EARLIER_BY after it: clocks
differ) and, of those, gave the answer the request sends back, shares its session, started
before it for certain, was answered without an error, and is the latest. A later look
(relinking.py) sees turns that began after the request too: one of another run that began
alike must not win by being the latest.
"""
from __future__ import annotations

import sqlite3
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from gevent.monkey import get_original

from orproxy.logserver.llm.conversation import Conversation

_allocate_lock = get_original("_thread", "allocate_lock")  # a real lock: the deriver's thread links too
_thread_id = get_original("_thread", "get_ident")

RECENT = 100_000  # keys remembered (a few turns of about 200 bytes each)
PER_KEY = 8       # turns remembered, and read from the index, per key: the latest (an eval
                  # loop may send one prompt a million times; the latest few decide)
EARLIER_BY = 1.0  # seconds of clock difference a turn "before" may show (proxy vs server time)
SETTLING = 30.0   # seconds after a request starts in which a link by its messages is not sure
                  # where others write the index too (relinking.py looks again, 0.2 to 20 s later)
OTHERS_FOR = 600.0  # seconds that others count as writing the index after a turn of theirs was seen


@dataclass(frozen=True)
class Turn:
    id: str
    conversation_id: str | None
    session_id: str | None
    started_at: float
    answered: bool  # ended without an error (or not ended yet)
    answer_key: str | None = None  # its answer's first message (conversation.py), once known


@dataclass(frozen=True)
class Link:
    previous: Turn
    new_from: int  # the request's first message that the previous turn did not have
    sure: bool = True  # it is the turn just before, and its answer is the one sent back (if known)


@dataclass(frozen=True)
class Clue:
    """What a request says of the turn it continues: the response it names (Responses
    API), or the keys of its message prefixes, longest first (conversation.py)."""
    previous_response_id: str | None
    candidates: list[tuple[int, str]]
    sent_back: dict[int, str] = field(default_factory=dict)  # key of the answer at each candidate

    @property
    def longest(self) -> int:
        """new_from of a link to the turn just before (0 for a named response)."""
        return self.candidates[0][0] if self.candidates else 0


def clue(conversation: Conversation) -> Clue | None:
    """None for a request that continues nothing (a first turn)."""
    if conversation.previous_response_id:
        return Clue(conversation.previous_response_id, [])
    candidates = conversation.continuation_candidates()
    sent_back = {i: conversation.messages[i].key for i, _ in candidates}
    return Clue(None, candidates, sent_back) if candidates else None


class Linker:
    """Finds the turn a conversation continues; `index` (store/index.py) None: memory only."""

    def __init__(self, index: Any = None, recent: int = RECENT) -> None:
        self.index = index
        self.recent = recent
        self._lock = _allocate_lock()
        self._loop_thread = _thread_id()
        self._by_key: OrderedDict[str, dict[str, Turn]] = OrderedDict()
        self._by_response: OrderedDict[str, Turn] = OrderedDict()
        self._merged: OrderedDict[str, str] = OrderedDict()  # conversation ids found to be others'
        self._others_seen_at = float("-inf")  # when the index last held a recent turn not derived here

    def remember(self, turn: Turn, turn_key: str | None, response_id: str | None) -> None:
        """A derived exchange: a later turn may continue it (by its key or its answer's id)."""
        with self._lock:
            if turn_key:
                same = self._by_key.setdefault(turn_key, {})
                same.pop(turn.id, None)
                same[turn.id] = turn
                if len(same) > PER_KEY:
                    del same[next(iter(same))]
                self._by_key.move_to_end(turn_key)
                if len(self._by_key) > self.recent:
                    self._by_key.popitem(last=False)
            if response_id:
                self._by_response[response_id] = turn
                self._by_response.move_to_end(response_id)
                if len(self._by_response) > self.recent:
                    self._by_response.popitem(last=False)

    def find(self, conversation: Conversation, started_at: float, session_id: str | None) -> Link | None:
        """The turn `conversation` continues, and where its new messages start; None if
        it continues none known (a first turn, or one whose previous turn is not logged)."""
        found = clue(conversation)
        return self.follow(found, started_at, session_id) if found is not None else None

    def follow(self, clue_found: Clue, started_at: float, session_id: str | None,
               fresh: bool = False) -> Link | None:
        """`find` for a request's clue. `fresh`: read the index even if memory has a link
        (relinking.py's later looks: the turn just before may have been indexed since by
        another process or server)."""
        if clue_found.previous_response_id:
            with self._lock:
                turn = self._by_response.get(clue_found.previous_response_id)
            if turn is None:
                turn = self._read(_turn_by_response, clue_found.previous_response_id)
                self._note_others([turn] if turn is not None else [])
            return Link(turn, 0) if turn is not None else None
        candidates = clue_found.candidates
        with self._lock:
            turns = {key: list(self._by_key.get(key, {}).values()) for _, key in candidates}
        found = _best(clue_found, turns, started_at, session_id)
        if fresh or found is None or not found.sure:
            found = self._with_index(clue_found, turns, started_at, session_id)
        now = time.time()
        if found is not None and found.sure and now - started_at < SETTLING and now - self._others_seen_at < OTHERS_FOR:
            # Other processes or servers write the index too: one of them may hold a later
            # alike turn (the one just before, of another run that began alike) that is
            # not indexed yet. Looked for again. (Alone, memory holds every recent turn:
            # no look, whose index reads would cost more than the exchange's logging.)
            found = Link(found.previous, found.new_from, sure=False)
        return found

    def _with_index(self, clue_found: Clue, turns: dict[str, list[Turn]], started_at: float,
                    session_id: str | None) -> Link | None:
        """The best link of the turns in memory and in the index: the longest prefix's key
        read first, the others only if no turn before has it (a link is at the longest
        prefix that some turn has)."""
        keys = list(turns)
        for chunk in (keys[:1], keys[1:]):
            for key, indexed in (self._read(_turns_by_key, chunk) or {}).items() if chunk else ():
                known = {t.id for t in turns[key]}
                news = [t for t in indexed if t.id not in known]
                turns[key] += news
                self._note_others(news)
            found = _best(clue_found, turns, started_at, session_id)
            if found is not None and found.new_from == clue_found.longest:
                return found
        return found

    def _note_others(self, read: list[Turn]) -> None:
        """Turns read from the index that memory lacked: a recent one was derived by another
        process or server, so others write the index (`follow` doubts recent links)."""
        now = time.time()
        if any(now - t.started_at < SETTLING for t in read):
            self._others_seen_at = now

    def conversation_of(self, turn: Turn) -> str:
        """The conversation `turn` belongs to, after any merge (`merge`)."""
        conversation_id = turn.conversation_id or turn.id
        with self._lock:
            for _ in range(100):  # a chain of merges, never a cycle (bounded all the same)
                if conversation_id not in self._merged:
                    break
                conversation_id = self._merged[conversation_id]
        return conversation_id

    def merge(self, conversation_id: str, into: str) -> None:
        """Conversation `conversation_id` turned out to continue `into` (relinking.py):
        turns remembered as of the one are of the other from now on."""
        with self._lock:
            self._merged[conversation_id] = into
            if len(self._merged) > self.recent:
                self._merged.popitem(last=False)

    def _read(self, fn: Any, *args: Any) -> Any:
        """A read of the index: on its reader threads from the loop; from the deriver's own
        thread (a large exchange) on that thread, which may block."""
        if self.index is None:
            return None
        if _thread_id() == self._loop_thread:
            return self.index.read(fn, *args)
        return self.index.read_here(fn, *args)


def _best(found: Clue, turns: dict[str, list[Turn]], started_at: float, session_id: str | None) -> Link | None:
    """At the longest prefix that some turn had, the best of those turns (module docstring).
    Sure: at the longest prefix of all, by a turn whose answer is the one sent back (or not
    known), of the request's session if it has one (an alike turn of another session may be
    all that is indexed yet, with the session's own still on its way from another server)."""
    for i, key in found.candidates:
        before = [t for t in turns[key] if t.started_at <= started_at + EARLIER_BY]
        if before:
            sent_back = found.sent_back.get(i)
            best = max(before, key=lambda t: (t.answer_key is not None and t.answer_key == sent_back,
                                              session_id is not None and t.session_id == session_id,
                                              t.started_at <= started_at, t.answered, t.started_at))
            sure = (i == found.longest and best.answer_key in (None, sent_back)
                    and (session_id is None or best.session_id == session_id))
            return Link(best, i, sure)
    return None


_TURN_COLUMNS = "id, conversation_id, session_id, started_at, status, error, turn_key, answer_key"


def _turn(row: sqlite3.Row) -> Turn:
    answered = row["error"] is None and (row["status"] is None or row["status"] < 400)
    return Turn(row["id"], row["conversation_id"], row["session_id"], row["started_at"] or 0.0, answered,
                row["answer_key"])


def _turns_by_key(conn: sqlite3.Connection, keys: list[str]) -> dict[str, list[Turn]]:
    """The latest PER_KEY turns of each key (index by_turn_key_time: a few steps each)."""
    found: dict[str, list[Turn]] = {}
    for key in keys:
        rows = conn.execute(f"SELECT {_TURN_COLUMNS} FROM exchanges WHERE turn_key = ? "
                            "ORDER BY started_at DESC LIMIT ?", (key, PER_KEY)).fetchall()
        if rows:
            found[key] = [_turn(row) for row in rows]
    return found


def followers(conn: sqlite3.Connection, exchange_id: str, most: int = 10_000) -> list[tuple[str, str | None]]:
    """The indexed turns that continue `exchange_id`, and theirs, and so on: (id, conversation_id)."""
    found: list[tuple[str, str | None]] = []
    ids = [exchange_id]
    while ids and len(found) < most:
        rows = conn.execute(f"SELECT id, conversation_id FROM exchanges WHERE previous_id IN "
                            f"({', '.join('?' * len(ids))})", ids).fetchall()[:500]
        found += [(row[0], row[1]) for row in rows]
        ids = [row[0] for row in rows]
    return found


def _turn_by_response(conn: sqlite3.Connection, response_id: str) -> Turn | None:
    row = conn.execute(f"SELECT {_TURN_COLUMNS} FROM exchanges WHERE response_id = ? "
                       "ORDER BY started_at DESC LIMIT 1", (response_id,)).fetchone()
    return _turn(row) if row is not None else None
