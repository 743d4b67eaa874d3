"""The one-line-per-request console log of the seed, on stdout and optionally in a file.

`2025-09-09 17:45:32 [a1b2c3d4] POST /api/v1/chat/completions -> https://openrouter.ai/ [openrouter]`
The query string is left out: it may carry API keys (`?key=...`).
"""
from __future__ import annotations

import sys
import time
from typing import TextIO

from orproxy.config import ConfigError
from orproxy.exchange import Exchange


class ConsoleLog:
    def __init__(self, to_stdout: bool, path: str | None) -> None:
        self.outputs: list[TextIO] = [sys.stdout] if to_stdout else []
        if path:
            try:
                self.outputs.append(open(path, "a", encoding="utf-8", buffering=1))
            except OSError as e:
                raise ConfigError(f"logging.file: cannot open {path!r} for appending: {e.strerror}") from None

    def request(self, exchange: Exchange) -> None:
        if not self.outputs:
            return
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(exchange.started_at))
        path = exchange.target.partition("?")[0]
        if exchange.route:
            where = f"{exchange.route.destination} [{exchange.route.name}]"
        else:
            where = "(no route)"
        line = f"{when} [{exchange.short_id}] {exchange.method} {path} -> {where}\n"
        for out in self.outputs:
            out.write(line)
            out.flush()
