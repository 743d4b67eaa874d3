"""What every object of the store ends with (store/segments.py, store/uploads.py): a footer
of the extents it holds (and the documents written since the last upload) and a trailer of
the footer's length and MAGIC, so that reindex can rebuild PostgreSQL from a listing of the
objects alone (store/transfer.py)."""
from __future__ import annotations

import struct
from typing import Any

from orproxy import jsoncodec
from orproxy.logserver.store.objects import Objects

MAGIC = b"orseg001"
TRAILER = struct.Struct(">Q8s")  # the footer's length, MAGIC


def footer(extents: list[list[Any]], documents: dict[str, str]) -> bytes:
    """The footer and trailer of an object holding `extents` ([id, name, part offset,
    length, position]) and the latest copies of `documents`."""
    data = jsoncodec.dumps({"extents": extents, "documents": documents})
    return data + TRAILER.pack(len(data), MAGIC)


def segment_footer(objects: Objects, key: str, size: int) -> dict[str, Any] | None:
    """An object's footer; None if the object is not one of the store's (no trailer)."""
    if size < TRAILER.size:
        return None
    length, magic = TRAILER.unpack(objects.get_range(key, size - TRAILER.size, TRAILER.size))
    if magic != MAGIC or length > size - TRAILER.size:
        return None
    found = jsoncodec.loads(objects.get_range(key, size - TRAILER.size - length, length))
    return found if isinstance(found, dict) else None
