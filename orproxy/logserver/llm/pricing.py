"""What an exchange cost: the upstream's own figure when it reports one, else a price
table's for the model that answered (`cost_source` says which).

The table is genai-prices (pydantic's, maintained from the providers' price pages, shipped
inside the package: nothing is fetched at run time). It prices cached input, cache
writes and long-context tiers, at the prices in force when the request was made. The
provider is told by the upstream URL (api.openai.com, api.anthropic.com, openrouter.ai...);
an upstream it does not know (a gateway, a local server) is priced by the model name
alone, and a model no provider sells stays without a cost. Prices of your own come first
(`prices:` in config.yaml, given to `orlogserver --config`): for a private or local model,
or to say that one is free.

A table lookup costs about 0.35 ms here, so results are kept (one exchange's row is built
several times as its parts arrive), and the table is loaded (0.4 s) only when first needed.
"""
from __future__ import annotations

import fnmatch
from collections import OrderedDict
from datetime import datetime, timezone
from typing import Any

from gevent.monkey import get_original

from orproxy.config import ModelPrice

_allocate_lock = get_original("_thread", "allocate_lock")  # a real lock: rows are built on threads
REPORTED, PRICE_TABLE = "reported", "price_table"
_KEPT = 10_000  # results remembered


class Pricing:
    """Prices exchanges: `prices` of your own first, then the table (`table=False`: none)."""

    def __init__(self, prices: tuple[ModelPrice, ...] = (), table: bool = True) -> None:
        self.prices = prices
        self.table = table
        self._kept: OrderedDict[tuple[Any, ...], float | None] = OrderedDict()
        self._lock = _allocate_lock()  # rows are built on the index's writer and the API's readers

    def cost(self, row: dict[str, Any]) -> tuple[float | None, str | None]:
        """(cost in USD, cost_source) of an index row: its reported `cost`, else the price
        of its tokens; (None, None) when neither is known."""
        if row.get("cost") is not None:
            return row["cost"], REPORTED
        model, prompt, completion = row.get("model"), row.get("prompt_tokens"), row.get("completion_tokens")
        if not isinstance(model, str) or (prompt is None and completion is None):
            return None, None
        key = (model, row.get("upstream_url"), prompt, completion, row.get("cached_tokens"),
               row.get("cache_write_tokens"), int(row.get("started_at") or 0) // 86400)
        with self._lock:
            if key in self._kept:
                self._kept.move_to_end(key)
                found = self._kept[key]
                return (found, PRICE_TABLE) if found is not None else (None, None)
        found = self._price(model, row.get("upstream_url"), prompt or 0, completion or 0,
                            row.get("cached_tokens") or 0, row.get("cache_write_tokens") or 0,
                            row.get("started_at"))
        with self._lock:
            self._kept[key] = found
            if len(self._kept) > _KEPT:
                self._kept.popitem(last=False)
        return (found, PRICE_TABLE) if found is not None else (None, None)

    def _price(self, model: str, upstream_url: str | None, prompt: int, completion: int,
               cached: int, written: int, started_at: Any) -> float | None:
        own = self._own(model)
        if own is not None:
            cache_read = own.input if own.cache_read is None else own.cache_read
            cache_write = own.input if own.cache_write is None else own.cache_write
            fresh = max(prompt - cached - written, 0)
            return round((fresh * own.input + cached * cache_read + written * cache_write
                          + completion * own.output) / 1e6, 10)
        if not self.table:
            return None
        return _table_price(model, upstream_url, prompt, completion, cached, written, started_at)

    def _own(self, model: str) -> ModelPrice | None:
        for price in self.prices:
            if price.model == model or fnmatch.fnmatchcase(model, price.model):
                return price
        return None


def _table_price(model: str, upstream_url: str | None, prompt: int, completion: int, cached: int,
                 written: int, started_at: Any) -> float | None:
    import genai_prices  # 0.4 s and a large table: loaded when the first exchange needs it

    usage = genai_prices.Usage(input_tokens=prompt, output_tokens=completion, cache_read_tokens=cached,
                               cache_write_tokens=written)
    when = datetime.fromtimestamp(started_at, timezone.utc) if isinstance(started_at, (int, float)) else None
    for provider_api_url in ([upstream_url] if upstream_url else []) + [None]:
        try:
            found = genai_prices.calc_price(usage, model, provider_api_url=provider_api_url,
                                            genai_request_timestamp=when)
        except LookupError:  # this provider does not sell it, or no provider is known by the URL
            continue
        except (ValueError, TypeError, ArithmeticError):  # a table entry it cannot apply
            return None
        return float(found.total_price)
    return None
