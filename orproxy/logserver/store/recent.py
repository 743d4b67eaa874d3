"""What every body store does alike once it can open a part: keep the parts just written in
memory for deriving, and read a part back parsed (store/logdir.py, store/objectstore.py)."""
from __future__ import annotations

from collections import OrderedDict
from typing import BinaryIO

from orproxy.logserver.llm.httpfile import Head, Message, parse_message, read_message
from orproxy.logserver.store.record import ExchangeRecord

RECENT_BYTES = 32 * 1024 * 1024  # small parts kept in memory for deriving: a whole batch's


class PartReading:
    """A store's `keep_recent` and `read_part`, over its `open_part`."""

    def __init__(self) -> None:
        self._recent: OrderedDict[str, tuple[bytes, Head | None]] = OrderedDict()  # part name -> bytes, head
        self._recent_bytes = 0

    def open_part(self, record: ExchangeRecord, kind: str) -> BinaryIO | None:
        raise NotImplementedError

    def keep_recent(self, name: str, data: bytes, head: Head | None = None) -> None:
        """A part's whole content, just written (and its head if parsed already), for one
        `take_recent` to read instead of the store (every small exchange's fields are
        derived from it)."""
        self.take_recent(name)
        self._recent[name] = (data, head)
        self._recent_bytes += len(data)
        while self._recent_bytes > RECENT_BYTES:
            self._recent_bytes -= len(self._recent.popitem(last=False)[1][0])

    def take_recent(self, name: str) -> tuple[bytes, Head | None] | None:
        kept = self._recent.pop(name, None)
        if kept is not None:
            self._recent_bytes -= len(kept[0])
        return kept

    def read_part(self, record: ExchangeRecord, kind: str, limit: int,
                  raw_limit: int | None = None) -> Message | None:
        """A part read back (its body decoded up to `limit` bytes, of at most `raw_limit`
        stored ones): from memory if it was just written (`keep_recent`), else as stored;
        None if there is none."""
        kept = self.take_recent(str(record.part(kind).get("file", "")))
        if kept is not None:
            return parse_message(kept[0], limit, raw_limit, head=kept[1])
        f = self.open_part(record, kind)
        if f is None:
            return None
        with f:
            try:
                return read_message(f, limit, raw_limit)
            except OSError:
                return None
