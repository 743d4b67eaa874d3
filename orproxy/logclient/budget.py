"""The memory budget for log data not yet sent, shared by every log stream of the process.

Logging must never hold the traffic back, so log data waits in memory while the logging
server is slow; this bounds how much (CONTRACT.md: a slow or absent logging server never
delays a proxied request, and memory stays bounded). Whoever queues bytes reserves them
first and releases them once they are sent or given up.
"""
from __future__ import annotations

TOTAL_BUDGET = 64 * 1024 * 1024  # bytes queued for all log streams of the process together


class Budget:
    __slots__ = ("limit", "used")

    def __init__(self, limit: int = TOTAL_BUDGET) -> None:
        self.limit = limit
        self.used = 0

    def reserve(self, size: int) -> bool:
        """Take `size` bytes of the budget if they fit; False (nothing taken) if not."""
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def overdraw(self, size: int) -> None:
        """Take `size` bytes even past the limit: the few bytes of a truncation marker,
        which the log must carry to say where it stops."""
        self.used += size

    def release(self, size: int) -> None:
        self.used -= size
