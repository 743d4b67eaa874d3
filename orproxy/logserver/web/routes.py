"""The logging server's routes, declared once: each path pattern, the handler of each of
its methods, and what the OpenAPI document says of it.

app.py dispatches from this table (`match`, then the placeholder checks, then the method)
and binds the handler names to code; openapi.py builds the document's paths from it
(`openapi_paths`), a documented handler's name being its operationId. So a route cannot
be served without being declared, nor documented differently from how it is served.

A `{name}` in a pattern matches one path segment and is checked by PLACEHOLDERS[name]
(a bad id is a 400 naming it). A path segment that some route has as a literal never
matches a placeholder there (`/api/x` is never ingest's `/{uuid}/{kind}`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from orproxy.logserver.store.logdir import KINDS, UUID_RE
from orproxy.logserver.web.openapi import (ERRORS, ID, event_stream, filter_params, json_content,
                                           list_params, live_params, ref)
from orproxy.logserver.web.replay import OPERATION as REPLAY
from orproxy.logserver.web.replies import HttpError


@dataclass(frozen=True)
class Placeholder:
    accepts: Callable[[str], bool]
    message: str                  # the 400's message when it does not
    parameter: str | None = None  # named in the 400 (the API's path parameters)


PLACEHOLDERS = {
    "id": Placeholder(lambda v: bool(UUID_RE.match(v)), "the id must be a UUID (the X-Request-Id)", "id"),
    "uuid": Placeholder(lambda v: bool(UUID_RE.match(v)), "the id must be a UUID"),  # ingest's
    "kind": Placeholder(lambda v: v in KINDS, f"the kind must be one of {', '.join(KINDS)}"),
    "name": Placeholder(lambda v: True, ""),
}


@dataclass(frozen=True)
class Route:
    path: str
    methods: dict[str, str]                                     # method -> handler name
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> OpenAPI operation
    batched: bool = False  # an upload: its work may wait for the connection's batch (batching.py)
    segments: tuple[str, ...] = field(init=False)
    params: tuple[str, ...] = field(init=False)  # the placeholders' names, in order

    def __post_init__(self) -> None:
        segments = tuple(self.path.strip("/").split("/"))
        object.__setattr__(self, "segments", segments)
        object.__setattr__(self, "params", tuple(s[1:-1] for s in segments if s.startswith("{")))

    def check(self, values: list[str]) -> None:
        """Raise the 400 of the first placeholder value that is not accepted, then the 405
        of a method not served."""
        for name, value in zip(self.params, values):
            placeholder = PLACEHOLDERS[name]
            if not placeholder.accepts(value):
                raise HttpError("400 Bad Request", placeholder.message, placeholder.parameter)

    def handler(self, method: str) -> str:
        """The handler's name for `method`, or the 405 that lists the methods served."""
        name = self.methods.get(method)
        if name is None:
            said = [m for m in self.methods if not (m == "HEAD" and "GET" in self.methods)]  # HEAD goes with GET
            raise HttpError("405 Method Not Allowed", f"use {' or '.join(said)}",
                            headers=[("Allow", ", ".join(self.methods))])
        return name


def _get(handler: str, **doc: Any) -> dict[str, Any]:
    return {"methods": {"GET": handler}, "docs": {"GET": doc}}


def _raw_file(kind: str) -> dict[str, Any]:
    return _get(
        f"get_{kind}_file", summary=f"The raw {kind} file",
        description=f"The {kind} as logged: start line, headers, blank line, body (de-chunked, still "
                    "content-encoded). With follow=true an upload in progress is streamed as it grows, "
                    "until it ends.",
        parameters=[ID, {"name": "follow", "in": "query", "schema": {"type": "boolean"}}],
        responses={"200": {"description": "The file.", "content": {"application/octet-stream": {
            "schema": {"type": "string", "format": "binary"}}}}, **ERRORS})


_HAR_DOC = ("HTTP Archive 1.2 (`log.creator.name` orproxy), a download (Content-Disposition). Headers "
            "and bodies as logged, secrets masked; `response.content.text` decoded from its "
            "Content-Encoding (base64 when not UTF-8 text), each body up to 8 MiB decoded (`_truncated` and "
            "the entry's `comment` say when cut); SSE events in `response.content._sseEvents`, a "
            "WebSocket session's messages in `_webSocketMessages`; orproxy's fields start with `_`.")


def _har_content(description: str) -> dict[str, Any]:
    return {"description": description, "headers": {"Content-Disposition": {"schema": {"type": "string"}}},
            "content": {"application/json": {"schema": ref("Har")}}}


_STATIC = {"GET": "static", "HEAD": "static"}
_INDEX = {"GET": "index", "HEAD": "index"}
_GET_ONLY = {"405": ERRORS["405"]}

ROUTES: tuple[Route, ...] = (
    # The UI
    Route("/", _INDEX),
    Route("/index.html", _INDEX),
    Route("/static/{name}", _STATIC),
    # Ingest: the proxy's uploads (CONTRACT.md)
    Route("/{uuid}/{kind}", {"PUT": "ingest"}, batched=True),
    Route("/ingest", {"POST": "ingest_batch"}),  # orproxy's batches (orproxy/logwire.py)
    # The REST API (api.py)
    Route("/api/requests", **_get(
        "list_requests", summary="List exchanges, newest first", parameters=list_params(),
        responses={"200": json_content(ref("RequestList"), "One page."), **ERRORS})),
    Route("/api/requests/{id}", {"GET": "get_request", "DELETE": "delete_request"}, {
        "GET": {"summary": "One exchange: its row, metadata and files", "parameters": [ID],
                "responses": {"200": json_content(ref("RequestDetail"), "The exchange."), **ERRORS}},
        "DELETE": {"summary": "Delete an exchange's files and row",
                   "parameters": [ID, {"name": "force", "in": "query", "schema": {"type": "boolean"},
                                       "description": "Delete even while in flight."}],
                   "responses": {"200": json_content(ref("Deleted"), "Deleted."), **ERRORS,
                                 "409": json_content(ref("Error"), "Still in flight.")}}}),
    Route("/api/requests/{id}/request", **_raw_file("request")),
    Route("/api/requests/{id}/response", **_raw_file("response")),
    Route("/api/requests/{id}/exchange", **_get(
        "get_exchange", summary="The exchange parsed", parameters=[ID],
        description="Headers as lists, bodies decoded (gzip, br, deflate), JSON re-indented, SSE events "
                    "listed and the streamed answer assembled, tool calls included.",
        responses={"200": json_content(ref("Exchange"), "The parsed exchange."), **ERRORS})),
    Route("/api/requests/{id}/diff", **_get(
        "get_diff", summary="What changed since the previous turn of the conversation",
        description="Compares the exchange's request with its previous turn's (`previous_id`), or with "
                    "`against`'s: messages added, removed (aligned, so one run of unchanged messages "
                    "stands for any number), changed (a character diff), and the system prompt, tools, "
                    "model and parameters. The previous turn's answer, repeated in this request, is an "
                    "added message marked `answer`. A diff is a list of [op, text], op \"=\", \"-\" or \"+\".",
        parameters=[ID, {"name": "against", "in": "query", "required": False, "schema": {"type": "string"},
                         "description": "Compare with this exchange instead of the previous turn."}],
        responses={"200": json_content(ref("Diff"), "The diff."), **ERRORS,
                   "422": json_content(ref("Error"), "One of the two requests is not a conversation.")})),
    Route("/api/requests/{id}/replay", {"POST": "replay_request"}, {"POST": REPLAY}),  # replay.py
    Route("/api/requests/{id}/har", **_get(
        "get_request_har", summary="The exchange as a HAR 1.2 document", parameters=[ID],
        description=_HAR_DOC + " Takes no query parameters.",
        responses={"200": _har_content("A HAR document with one entry."), **ERRORS})),
    Route("/api/har", **_get(
        "get_har", summary="Every matching exchange as a HAR 1.2 document (streamed)",
        description=_HAR_DOC + " Takes the filters of GET /api/requests; written entry by entry "
                    "(chunked), newest first, so an export of any size never sits in memory.",
        parameters=[*filter_params(), {
            "name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1},
            "description": "At most this many entries, the newest (default: every match)."}],
        responses={"200": _har_content("A HAR document, one entry per matching exchange."), **ERRORS})),
    Route("/api/stats", **_get(
        "get_stats", summary="Totals, by model and route, latency and TTFT percentiles",
        parameters=filter_params(), responses={"200": json_content(ref("Stats"), "The statistics."), **ERRORS})),
    Route("/api/health", **_get(
        "get_health", summary="Liveness",
        responses={"200": json_content(ref("Health"), "Up."), "400": ERRORS["400"], **_GET_ONLY})),
    Route("/api/openapi.json", **_get(
        "get_openapi", summary="This document",
        responses={"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}},
                   "400": ERRORS["400"], **_GET_ONLY})),
    # Prometheus (logserver/metrics/)
    Route("/metrics", **_get(
        "get_metrics", summary="Metrics in Prometheus' text format",
        description="Exchanges by route, model and status; errors by route and code; duration and "
                    "time-to-first-token histograms by route; tokens and cost by model; body bytes each way; "
                    "ingest lag; the index's queue; index and derive errors. Every worker process answers "
                    "with the sums over all of them, each exchange counted once when it is final. With "
                    "--token, a scraper sends it as `Authorization: Bearer <token>` (README: Prometheus).",
        responses={"200": {"description": "Prometheus' text exposition format.", "content": {
            "text/plain": {"schema": {"type": "string"}}}},
            "400": ERRORS["400"], **_GET_ONLY})),
    # Live (live/): the feed and the tail
    Route("/api/live", **_get(
        "live_websocket", summary="Live feed of changed rows (WebSocket)",
        description="A WebSocket (RFC 6455): send the upgrade headers. Messages are JSON text, `hello` "
                    "first, then `rows` as exchanges change, `ping` when quiet, `reset` when the client "
                    "fell behind. Several workers: each serves every change.",
        parameters=live_params(),
        responses={"101": {"description": "Switching Protocols: every message is a LiveMessage.",
                           "x-messages": ref("LiveMessage")},
                   "400": json_content(ref("Error"), "A bad parameter, or a malformed handshake."),
                   "426": json_content(ref("Error"), "No WebSocket upgrade asked for: use /api/events."),
                   **_GET_ONLY})),
    Route("/api/events", **_get(
        "live_events", summary="Live feed of changed rows (server-sent events)",
        description="The same messages as /api/live, one SSE event each (`rows` events carry "
                    "`id: <seq>`); a comment every 15 s when quiet.",
        parameters=[*live_params(), {
            "name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"},
            "description": "Sent by a reconnecting EventSource: as `since` (the query parameter wins)."}],
        responses={"200": event_stream("The feed, until the client leaves, a `reset`, or the server stops.",
                                       {"message": "LiveMessage"}),
                   "400": ERRORS["400"], **_GET_ONLY})),
    Route("/api/requests/{id}/tail", **_get(
        "tail_response", summary="The response as it arrives (server-sent events)",
        description="Follows the response file while it is written: `head`, then `body` (text), "
                    "`deltas` (SSE answers) and `notice` as they come, `end` last. An exchange already "
                    "over is sent whole and ended at once. Takes no query parameters.",
        parameters=[ID],
        responses={"200": event_stream("The tail, ended by an `end` event.", {
            "head": "TailHead", "body": "TailBody", "deltas": "TailDeltas", "notice": "TailNotice",
            "end": "TailEnd"}), **ERRORS})),
)


class _Node:
    """One level of the route tree: literal segments first, else the placeholder."""

    __slots__ = ("route", "literals", "placeholder")

    def __init__(self) -> None:
        self.route: Route | None = None
        self.literals: dict[str, _Node] = {}
        self.placeholder: _Node | None = None


def _tree(routes: tuple[Route, ...]) -> _Node:
    root = _Node()
    for route in routes:
        node = root
        for segment in route.segments:
            if segment.startswith("{"):
                assert segment[1:-1] in PLACEHOLDERS, route.path
                node.placeholder = node.placeholder or _Node()
                node = node.placeholder
            else:
                node = node.literals.setdefault(segment, _Node())
        assert node.route is None, f"{route.path} is declared twice"
        node.route = route
    return root


_ROOT = _tree(ROUTES)


def match(path: str) -> tuple[Route, list[str]] | None:
    """The route of a path and its placeholders' values (unchecked), or None. One dict
    lookup per segment: ingest's PUTs, most of the traffic, pass here."""
    node, values = _ROOT, []
    for segment in path.strip("/").split("/"):
        child = node.literals.get(segment)
        if child is None:
            child = node.placeholder
            if child is None:
                return None
            values.append(segment)
        node = child
    return (node.route, values) if node.route is not None else None


def not_found(path: str) -> str:
    """The 404's message for a path no route matches."""
    segments = path.strip("/").split("/")
    if segments[0] == "api":
        return "no such API endpoint: /api/" + "/".join(segments[1:])
    return f"nothing at {path}"


def openapi_paths() -> dict[str, Any]:
    """The OpenAPI document's `paths`: every documented method of every route."""
    paths: dict[str, Any] = {}
    for route in ROUTES:
        for method, doc in route.docs.items():
            paths.setdefault(route.path, {})[method.lower()] = {"operationId": route.methods[method], **doc}
    return paths
