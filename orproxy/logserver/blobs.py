"""The log directory: where each exchange's files go, and its metadata file.

Files are the source of truth (CONTRACT.md): `<ts>_<uuid8>_request.bin`, `..._response.bin`
and `..._metadata.json`, where `<ts>` is `YYYY-MM-DD_HH-MM-SS.mmm` in local time. Every
name is built here from a validated UUID and a fixed kind, never from client text, so
nothing can be written outside the log dir.

Which timestamp belongs to an exchange is kept as a symlink `.ids/<uuid> -> <ts>_<uuid8>`:
created atomically by whichever part arrives first, readable by every worker process.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import time
from contextlib import contextmanager
from typing import Any, Iterator

UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
KINDS = ("request", "response", "metadata")


def timestamp(now: float) -> str:
    return time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"


class LogDir:
    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.ids = os.path.join(self.path, ".ids")
        os.makedirs(self.ids, exist_ok=True)
        self._lock = open(os.path.join(self.ids, ".lock"), "a")

    def exchange_prefix(self, exchange_id: str, now: float) -> tuple[str, bool]:
        """`<ts>_<uuid8>` of an exchange, and whether this call created it."""
        exchange_id = exchange_id.lower()
        link = os.path.join(self.ids, exchange_id)
        prefix = f"{timestamp(now)}_{exchange_id[:8]}"
        try:
            os.symlink(prefix, link)
            return prefix, True
        except FileExistsError:
            return os.readlink(link), False

    def find_prefix(self, exchange_id: str) -> str | None:
        try:
            return os.readlink(os.path.join(self.ids, exchange_id.lower()))
        except OSError:
            return None

    def part_path(self, exchange_id: str, kind: str, now: float) -> str:
        """A new .bin file for one part, named by the part's own arrival time (as the seed)."""
        return os.path.join(self.path, f"{timestamp(now)}_{exchange_id[:8].lower()}_{kind}.bin")

    def metadata_path(self, prefix: str) -> str:
        return os.path.join(self.path, f"{prefix}_metadata.json")

    @contextmanager
    def metadata(self, exchange_id: str, now: float) -> Iterator[dict[str, Any]]:
        """Read, let the caller change, and atomically rewrite an exchange's metadata file.

        A lock file serialises writers across worker processes; readers always see a whole
        file because it is replaced by rename.
        """
        prefix, _ = self.exchange_prefix(exchange_id, now)
        path = self.metadata_path(prefix)
        fcntl.flock(self._lock, fcntl.LOCK_EX)  # no greenlet switch happens inside: files only
        try:
            try:
                with open(path, encoding="utf-8") as f:
                    document = json.load(f)
            except (OSError, ValueError):
                document = {"id": exchange_id.lower(), "timestamp": prefix.rsplit("_", 1)[0], "parts": {}}
            yield document
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(document, f, indent=1)
            os.replace(tmp, path)
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
