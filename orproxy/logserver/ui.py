"""The UI's side of the logging server: its page and files, the live feed and the live tail.

  GET /                              the UI (static/index.html)
  GET /static/<name>                 its scripts and styles
  GET /api/live                      live feed, WebSocket (livetransport.py, livefeed.py)
  GET /api/events                    live feed, SSE
  GET /api/requests/{id}/tail        the response as it arrives, SSE (tail.py)

app.py asks `route()` first and hands everything else to the REST API and ingest.
`shutdown()` ends the long-lived streams, so that a stopping server does not wait for
browsers that would stay connected for ever (they reconnect to the next server).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gevent.event import Event

from orproxy.logserver.live.feed import LiveFeed
from orproxy.logserver.live.tail import Tail
from orproxy.logserver.live.transports import LiveTransport
from orproxy.logserver.store.index import Index
from orproxy.logserver.store.logdir import UUID_RE, LogDir
from orproxy.logserver.web.replies import error_response
from orproxy.logserver.web.static import StaticFiles

Handler = Callable[[dict[str, Any], Callable], Any]


class Ui:
    def __init__(self, log_dir: LogDir, index: Index) -> None:
        self.stopping = Event()
        self.feed = LiveFeed(index, self.stopping)
        self.live = LiveTransport(self.feed)
        self.tail = Tail(log_dir, self.stopping)
        self.static = StaticFiles()

    def route(self, path: str) -> Handler | None:
        """The handler of a UI path, or None for paths that are not the UI's."""
        if path in ("/", "/index.html"):
            return lambda env, sr: self.static(env, sr, "index.html")
        if path.startswith("/static/"):
            name = path[len("/static/"):]
            return lambda env, sr: self.static(env, sr, name)
        if path == "/api/live":
            return self._get(self.live.websocket)
        if path == "/api/events":
            return self._get(self.live.events)
        parts = path.strip("/").split("/")
        if len(parts) == 4 and parts[:2] == ["api", "requests"] and parts[3] == "tail":
            if not UUID_RE.match(parts[2]):
                return lambda env, sr: error_response(sr, "400 Bad Request",
                                                      "the id must be a UUID (the X-Request-Id)", parameter="id")
            return self._get(lambda env, sr: self.tail(env, sr, parts[2]))
        return None

    @staticmethod
    def _get(handler: Handler) -> Handler:
        def only_get(environ: dict[str, Any], start_response: Callable) -> Any:
            if environ["REQUEST_METHOD"] != "GET":
                return error_response(start_response, "405 Method Not Allowed", "use GET", [("Allow", "GET")])
            return handler(environ, start_response)
        return only_get

    def shutdown(self) -> None:
        """End live feeds and tails now (the server is stopping)."""
        self.stopping.set()
        self.feed.close()
