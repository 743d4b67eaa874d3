"""The byte pattern the fake upstream serves (/bytes, /break): bytes(range(256)) repeated
from offset 0, so a client can check any stretch of a large body without keeping it."""
import functools
import hashlib

__all__ = ["pattern_bytes", "pattern_sha256", "pattern_blocks"]

_UNIT = bytes(range(256))
_BLOCK = _UNIT * 256          # 64 KiB, starts and ends on a 256 boundary


def pattern_bytes(n, offset=0):
    """The n pattern bytes starting at absolute offset ``offset`` (for small n)."""
    start = offset % 256
    reps = (start + n) // 256 + 1
    return (_UNIT * reps)[start:start + n]


@functools.lru_cache(maxsize=64)
def pattern_sha256(n):
    """sha256 hex of the first n pattern bytes, as /bytes?n=N serves them."""
    h = hashlib.sha256()
    full, rest = divmod(n, len(_BLOCK))
    for _ in range(full):
        h.update(_BLOCK)
    h.update(_BLOCK[:rest])
    return h.hexdigest()


def pattern_blocks(n, block):
    """Yield n pattern bytes in blocks of ``block`` without building n bytes."""
    buf = _UNIT * (block // 256 + 2)    # any window of `block` bytes fits
    pos = 0
    while pos < n:
        size = min(block, n - pos)
        start = pos % 256
        yield buf[start:start + size]
        pos += size
