"""Linking a turn whose log arrived before the log of the turn it continues.

The logs of one agent's turns need not arrive in order: each gunicorn worker of the
proxy has its own connection to the logging server, and a turn sent through one worker
can be logged a few milliseconds before the turn before it, sent through another (with
two workers, about half of the turns of a fast agent). Such a turn is derived as the
first of a conversation of its own; its clue (the keys of its message prefixes, or the
response it names) is kept, and the link is looked for again a few times over the next
seconds, in memory and in the index. Once found, the turn is amended with its
`previous_id` and the conversation it continues, and so are the turns that have meanwhile
continued it. The same happens to a turn linked, for want of better, to an earlier turn
than the one just before, or to one of several alike turns whose answer was not the one
sent back (two runs of one agent that began with the same prompt).
"""
from __future__ import annotations

from typing import Any

import gevent

from orproxy.logserver.store.deriving import remember_document
from orproxy.logserver.store.ingest import Ingest
from orproxy.logserver.store.linking import Clue, Linker, followers

RETRY_AFTER = (0.2, 1.0, 4.0, 15.0)  # seconds between the looks: the later ones for a busy server
WAITING = 10_000  # turns looked for at once, at most (more: the newest are not)


class Relinker:
    """Gives each unlinked continuation a few more looks (`watch`, Deriver.on_unlinked)."""

    def __init__(self, ingest: Ingest, linker: Linker) -> None:
        self.ingest = ingest
        self.linker = linker
        self.waiting = 0

    def watch(self, exchange_id: str, started_at: float, session_id: str | None, found: Clue,
              linked_to: str | None) -> None:
        """Look again for the turn before `exchange_id`; `linked_to`: the turn it was linked
        to for now (not surely the one just before), None if none."""
        if self.waiting < WAITING:
            self.waiting += 1
            gevent.spawn(self._look, exchange_id, found, started_at, session_id, linked_to)

    def _look(self, exchange_id: str, found: Clue, started_at: float, session_id: str | None,
              linked_to: str | None) -> None:
        try:
            joined = None  # the conversation it joined, once surely linked
            for delay in RETRY_AFTER:
                gevent.sleep(delay)
                if joined is not None:  # turns that continued it meanwhile, in another process
                    self._join(exchange_id, joined)
                    continue
                link = self.linker.follow(found, started_at, session_id)
                if link is None or link.previous.id == exchange_id:
                    continue
                conversation_id = self.linker.conversation_of(link.previous)
                if link.previous.id != linked_to:
                    self._relink(exchange_id, link.previous.id, conversation_id, link.new_from, linked_to)
                    linked_to = link.previous.id
                if link.sure:
                    joined = conversation_id
        finally:
            self.waiting -= 1

    def _relink(self, exchange_id: str, previous_id: str, conversation_id: str, new_from: int,
                linked_to: str | None) -> None:
        """Link the turn to `previous_id`; it, and the turns that continue it, take
        `conversation_id`, in their files, the index and the linker's memory."""
        if linked_to is None:  # its own conversation joins the earlier one, for turns to come
            self.linker.merge(exchange_id, conversation_id)

        def link(document: dict[str, Any]) -> None:
            derived = document.get("derived")
            if isinstance(derived, dict) and derived.get("previous_id") == linked_to:  # not changed meanwhile
                derived.update(previous_id=previous_id, conversation_id=conversation_id, new_from=new_from)
                remember_document(self.linker, document)

        self.ingest.amend(exchange_id, link)
        self._join(exchange_id, conversation_id)

    def _join(self, exchange_id: str, conversation_id: str) -> None:
        """The indexed turns that continue `exchange_id` take `conversation_id`."""
        def join(document: dict[str, Any]) -> None:
            derived = document.get("derived")
            if isinstance(derived, dict):
                derived["conversation_id"] = conversation_id
                remember_document(self.linker, document)

        index = self.linker.index
        for follower, theirs in (index.read(followers, exchange_id) if index is not None else None) or ():
            if theirs != conversation_id:
                self.ingest.amend(follower, join)
