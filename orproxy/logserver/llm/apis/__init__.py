"""The LLM APIs the logging server understands, one module each, and the one place that
tells which API a path, a request, an answer, a stream or one streamed event belongs to.

Each module says how to recognise its API (`PATHS`, `is_answer`, `is_request`,
`starts_stream`, `is_event`, `TEXT_SIGN`) and what it knows of it: the answer a stream
stands for (`assemble`), what one event adds for the live tail (`delta`), the answer's
fields (`answer_fields`), which events a skimmed stream must keep (`SKIM_MARKERS`), and
the request as a conversation (`conversation`, optional).
The functions here ask the modules in the order of `APIS`, the first that recognises the
thing wins; derive.py, bodies.py and the tail all come here. Adding an API (Gemini, say)
is adding a module and naming it in `APIS`.
"""
from __future__ import annotations

from typing import Any, Protocol

from orproxy.logserver.llm.apis import anthropic, openai_chat, openai_embeddings, openai_responses
from orproxy.logserver.llm.conversation import Conversation
from orproxy.logserver.llm.sse import Event


class Api(Protocol):
    """What an API module provides (each module is one)."""

    NAME: str                    # the `api` field's value
    TITLE: str                   # what it is, for the documentation
    PATHS: tuple[str, ...]       # request paths (without the query) that end so are this API
    TEXT_SIGN: str | None        # a string in the first events of a stream's raw text, if any tells it
    SKIM_MARKERS: tuple[str, ...]

    def is_answer(self, answer: dict[str, Any]) -> bool: ...
    def is_request(self, request: dict[str, Any]) -> bool: ...
    def starts_stream(self, data: dict[str, Any], kind: str) -> bool: ...
    def is_event(self, data: dict[str, Any], kind: str) -> bool: ...
    def assemble(self, events: list[Event]) -> dict[str, Any] | None: ...
    def delta(self, data: dict[str, Any], kind: str) -> dict[str, Any]: ...
    def answer_fields(self, answer: dict[str, Any], out: dict[str, Any]) -> None: ...


# The order decides when signs disagree: an answer of `"type": "message"` on a
# /chat/completions path is Anthropic's.
APIS: tuple[Api, ...] = (anthropic, openai_chat, openai_responses, openai_embeddings)
_BY_NAME = {api.NAME: api for api in APIS}
_ALL_MARKERS = tuple(dict.fromkeys(marker for api in APIS for marker in api.SKIM_MARKERS))


def named(name: str | None) -> Api | None:
    return _BY_NAME.get(name) if name else None


def detect(path: str | None = None, request: dict[str, Any] | None = None,
           answer: dict[str, Any] | None = None) -> str | None:
    """The API's name by the answer's shape or the path, else by the request's keys."""
    path = (path or "").partition("?")[0].rstrip("/")
    answer = answer or {}
    for api in APIS:
        if api.is_answer(answer) or (path and path.endswith(api.PATHS)):
            return api.NAME
    if request:
        for api in APIS:
            if api.is_request(request):
                return api.NAME
    return None


def _recognise(data: dict[str, Any], event_name: str | None, sign: str) -> tuple[Api, str] | None:
    """The API whose `sign` ("starts_stream" or "is_event") recognises an event, and the
    event's kind: its JSON's own `type`; the SSE event name only if the JSON has no type
    and no API recognises it by its shape (a chat chunk is one whatever its event name)."""
    own = data.get("type")
    kinds = [own if isinstance(own, str) else ""]
    if not own and event_name:
        kinds.append(event_name)
    for kind in kinds:
        for api in APIS:
            if getattr(api, sign)(data, kind):
                return api, kind
    return None


def assemble(events: list[Event]) -> dict[str, Any] | None:
    """The answer a stream stands for, by the API of the first event that shows one."""
    for event in events:
        data = event.json
        if isinstance(data, dict):
            found = _recognise(data, event.event, "starts_stream")
            if found is not None:
                return found[0].assemble(events)
    return None


def delta(data: Any, event_name: str | None = None) -> dict[str, Any]:
    """What one event's parsed JSON adds to the answer: any of `text`, `reasoning`, `tool`
    ({index, id, name, arguments}: pieces to append), `error`, `finish`; {} for nothing."""
    found = _recognise(data, event_name, "is_event") if isinstance(data, dict) else None
    if found is None:
        return {}
    api, kind = found
    return api.delta(data, kind)


def conversation(request: Any, api_name: str | None) -> Conversation | None:
    """The request as a conversation (conversation.py), by its API's module; None for an
    API without one (embeddings) or a request that is none."""
    api = named(api_name)
    make = getattr(api, "conversation", None)
    return make(request) if make is not None and isinstance(request, dict) else None


def answer_key(answer: Any, api_name: str | None) -> str | None:
    """The key (conversation.py) of the first message of an answer as its client will send
    it back in the next turn: what tells that turn which of several alike turns it continues."""
    api = named(api_name)
    sent_back = getattr(api, "answer_messages", None)
    if sent_back is None or not isinstance(answer, dict):
        return None
    found = conversation(sent_back(answer), api_name)
    return found.messages[0].key if found is not None and found.messages else None


def skim_markers(head: str) -> tuple[str, ...]:
    """Which events in the middle of a long stream the derived fields need, by the API
    its first events (`head`, raw text) show; every API's markers when none is shown."""
    for api in APIS:
        if api.TEXT_SIGN is not None and api.TEXT_SIGN in head:
            return api.SKIM_MARKERS
    return _ALL_MARKERS
