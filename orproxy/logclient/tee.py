"""The tee: one block stream, two consumers. Both directions of every exchange use it.

The consumer that matters (upstream for the request, the client for the response) gets
each block as the caller iterates; the log stream gets the same block without ever
blocking (Part.write only queues or spools).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from orproxy.logclient.part import NullPart, Part


def tee(blocks: Iterable[bytes], log: Part | NullPart, count: Callable[[int], None]) -> Iterator[bytes]:
    for block in blocks:
        log.write(block)
        count(len(block))
        yield block
