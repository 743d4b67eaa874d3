"""`GET /api/requests/{id}/diff`: an exchange's request compared with its previous turn's
(or with `?against={id}`'s), by llm/diff.py. The bodies are read and parsed on a thread:
a long agent conversation is megabytes of JSON."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from gevent.threadpool import ThreadPool

from orproxy.logserver.llm import apis, diff
from orproxy.logserver.llm.bodies import parse_body
from orproxy.logserver.llm.conversation import Conversation
from orproxy.logserver.store.deriving import DERIVE_LIMIT
from orproxy.logserver.store.logdir import UUID_RE
from orproxy.logserver.store.stores import BodyStore
from orproxy.logserver.store.record import ExchangeRecord
from orproxy.logserver.web.query import ParamError
from orproxy.logserver.web.replies import HttpError, json_response


class Diffs:
    def __init__(self, log_dir: BodyStore, pool: ThreadPool) -> None:
        self.log_dir = log_dir
        self.pool = pool

    def handlers(self) -> dict[str, Callable[..., Any]]:
        return {"get_diff": self.diff}

    def diff(self, environ: dict[str, Any], start_response: Callable, exchange_id: str) -> list[bytes]:
        params = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True, max_num_fields=10)
        for name in params:
            if name != "against":
                raise ParamError(name, "unknown parameter")
        against = params.get("against")
        if against is not None and (len(against) != 1 or not UUID_RE.match(against[0])):
            raise ParamError("against", "must be one exchange id (a UUID)")
        exchange_id = exchange_id.lower()
        record = self._record(exchange_id)
        if against is None:
            previous = record.derived.get("previous_id")
            if not previous:
                raise HttpError("404 Not Found", f"exchange {exchange_id} has no previous turn: "
                                                 "name one to compare with, ?against={id}")
        else:
            previous = against[0].lower()
        earlier = self._record(previous)
        body = self.pool.apply(self._compare, (earlier, record, against is None))
        return json_response(start_response, "200 OK", body, [("Cache-Control", "no-store")])

    def _record(self, exchange_id: str) -> ExchangeRecord:
        document = self.log_dir.read_metadata(exchange_id)
        if document is None:
            raise HttpError("404 Not Found", f"no exchange {exchange_id}")
        return ExchangeRecord(document)

    def _compare(self, earlier: ExchangeRecord, record: ExchangeRecord, is_previous: bool) -> dict[str, Any]:
        before, after = self._conversation(earlier), self._conversation(record)
        answer_at = record.derived.get("new_from") if is_previous else None
        return {"id": record.id, "against": earlier.id, "against_is": "previous" if is_previous else "given",
                **diff.compare(before, after, answer_at or None)}

    def _conversation(self, record: ExchangeRecord) -> Conversation:
        request = self.log_dir.read_part(record, "request", DERIVE_LIMIT)
        parsed = parse_body(request) if request is not None else None
        body = parsed.json if parsed is not None and parsed.kind == "json" else None
        api = record.derived.get("api") or apis.detect(record.request_path(), request=body)
        conversation = apis.conversation(body, api)
        if conversation is None:
            raise HttpError("422 Unprocessable Content",
                            f"exchange {record.id} is not a conversation (no chat messages in its request)")
        return conversation
