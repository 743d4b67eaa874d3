"""The tee: one block stream, two consumers. Both directions of every exchange use it.

The consumer that matters (upstream for the request, the client for the response) gets
each block as the caller iterates; the log stream gets the same block without ever
blocking (LogStream.write only enqueues).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from orproxy.logclient.stream import LogStream, NullStream


def tee(blocks: Iterable[bytes], log: LogStream | NullStream, count: Callable[[int], None]) -> Iterator[bytes]:
    for block in blocks:
        log.write(block)
        count(len(block))
        yield block
