"""Durations, sizes and points in time as people type them: `7d`, `500M`, `2025-09-09T14:02Z`.

Shared by the command line (`--max-age`, `--max-bytes`) and the API's `since`/`until`, so
both accept the same spellings. Each parser raises ValueError with a message fit for a user.
"""
from __future__ import annotations

import math
import re
import time
from datetime import datetime, timezone

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_duration(text: str) -> float:
    """Seconds from `90`, `90s`, `15m`, `12h`, `7d`, `2w` (a bare number is seconds)."""
    m = _DURATION_RE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a duration (e.g. 3600, 90m, 12h, 7d)")
    return float(m.group(1)) * _DURATION_UNITS[(m.group(2) or "s").lower()]


def parse_size(text: str) -> int:
    """Bytes from `1000000`, `500K`, `500M`, `10G`, `1.5GiB` (K, M, G, T are powers of 1024)."""
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a size (e.g. 500M, 10G, 1073741824)")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def parse_time(text: str, now: float | None = None) -> float:
    """Epoch seconds from epoch seconds, ISO 8601 (no zone = UTC) or `-24h` (before now)."""
    text = text.strip()
    if text.startswith("-"):
        return (time.time() if now is None else now) - parse_duration(text[1:])
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):
            raise ValueError(f"{text!r} is not a time")
        return value
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise ValueError(f"{text!r} is not a time: use epoch seconds, ISO 8601 "
                         "(2025-09-09T14:02:00Z) or -DURATION (-24h)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()
