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
              linked_to: str | None, conversation_id: str | None) -> None:
        """Look again for the turn before `exchange_id`; `linked_to`: the turn it was linked
        to for now (not surely the one just before), None if none; `conversation_id`: the
        conversation it was given with it."""
        if self.waiting < WAITING:
            self.waiting += 1
            gevent.spawn(self._look, exchange_id, found, started_at, session_id, linked_to,
                         conversation_id if linked_to is not None else None)

    def _look(self, exchange_id: str, found: Clue, started_at: float, session_id: str | None,
              linked_to: str | None, conversation_id: str | None) -> None:
        """Every look: find the turn before again (once surely found, that turn alone) and
        give the turn its conversation as it is now, then the same to the turns that have
        continued it. Each server looks for its own turns, so the turns of one conversation
        derived on two servers converge: a turn linked to one whose conversation another
        server changed meanwhile takes the new one at its next look."""
        try:
            sure = False
            for delay in RETRY_AFTER:
                gevent.sleep(delay)
                link = self.linker.follow(found, started_at, session_id, fresh=True)
                if link is not None and link.previous.id != exchange_id and \
                        not (sure and link.previous.id != linked_to):
                    now = self.linker.conversation_of(link.previous)
                    if link.previous.id != linked_to or now != conversation_id:
                        self._relink(exchange_id, link.previous.id, now, link.new_from, linked_to)
                        linked_to, conversation_id = link.previous.id, now
                    sure = sure or link.sure
                if conversation_id is not None:  # turns that continued it meanwhile, on any server
                    self._join(exchange_id, conversation_id)
        finally:
            self.waiting -= 1

    def _relink(self, exchange_id: str, previous_id: str, conversation_id: str, new_from: int,
                linked_to: str | None) -> None:
        """Link the turn to `previous_id` and `conversation_id`, in its file, the index and
        the linker's memory."""
        if linked_to is None:  # its own conversation joins the earlier one, for turns to come
            self.linker.merge(exchange_id, conversation_id)

        def link(document: dict[str, Any]) -> None:
            derived = document.get("derived")
            if isinstance(derived, dict) and derived.get("previous_id") == linked_to:  # not changed meanwhile
                moved = derived.get("new_from") != new_from
                derived.update(previous_id=previous_id, conversation_id=conversation_id, new_from=new_from)
                remember_document(self.linker, document)
                if moved and self.ingest.deriver is not None:
                    self.ingest.deriver.retext(document)

        self.ingest.amend(exchange_id, link)

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
