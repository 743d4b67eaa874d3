"""The live feed's two transports: `GET /api/live` (WebSocket) and `GET /api/events` (SSE).

The UI prefers the WebSocket and falls back to SSE where something in between refuses
the upgrade. Both carry the same JSON messages from feed.py and take the same query
parameters: the list's filters (query.py) and `since`, the last `seq` the client saw
(for SSE also the `Last-Event-ID` header, which EventSource sends when it reconnects by
itself). A bad parameter is a 400 before anything is upgraded or streamed.

The WebSocket uses simple-websocket, which runs under gevent's pywsgi and gunicorn's
gevent worker alike (FACTS.md). It takes the connection's socket over from the server;
after the session the server must not touch the connection again (see `_hand_back`).
"""
from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs

import simple_websocket
from simple_websocket.errors import ConnectionClosed

from orproxy.logserver.live import eventstream
from orproxy.logserver.live.feed import LiveFeed, Subscriber
from orproxy.logserver.web.query import ParamError
from orproxy.logserver.web.replies import error_response

WAKE = 1.0             # seconds between checks that the client is still there
CLOSE_WAIT = 2.0       # seconds the client gets to answer our close frame
GOING_AWAY = 1001      # RFC 6455 7.4.1: the server is going down


class _Server(simple_websocket.Server):
    """simple-websocket's server with whole-message writes: its `send` uses
    `socket.send`, which may write part of a large message and lose the rest."""

    def send(self, data: str | bytes) -> None:
        if not self.connected:
            raise ConnectionClosed(self.close_reason, self.close_message)
        event = simple_websocket.ws.Message(data=data) if isinstance(data, bytes) \
            else simple_websocket.ws.TextMessage(data=data)
        self.sock.sendall(self.ws.send(event))


def _since(params: dict[str, list[str]], environ: dict[str, Any]) -> int | None:
    values = params.get("since") or []
    text = values[-1] if values else environ.get("HTTP_LAST_EVENT_ID")
    if text is None or text == "":
        return None
    if not text.isdigit() or len(text) > 18:
        raise ParamError("since", "must be a seq (a non-negative integer)")
    return int(text)


class LiveTransport:
    def __init__(self, feed: LiveFeed) -> None:
        self.feed = feed

    def _subscribe(self, environ: dict[str, Any]) -> Subscriber:
        params = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True, max_num_fields=100)
        return self.feed.subscribe(params, _since(params, environ))

    # -- WebSocket -------------------------------------------------------------------------

    def websocket(self, environ: dict[str, Any], start_response: Callable) -> Any:
        if "websocket" not in environ.get("HTTP_UPGRADE", "").lower():
            return error_response(start_response, "426 Upgrade Required",
                                  "GET /api/live is a WebSocket; without one use GET /api/events (SSE)",
                                  [("Upgrade", "websocket"), ("Connection", "Upgrade")])
        try:
            subscriber = self._subscribe(environ)
        except ParamError as e:
            return error_response(start_response, "400 Bad Request", str(e), parameter=e.parameter)
        try:
            try:
                ws = _Server(environ)
            except Exception as e:  # a malformed handshake: wsproto refused it
                return error_response(start_response, "400 Bad Request", f"WebSocket handshake failed: {e}")
            try:
                self._pump(ws, subscriber)
            finally:
                self._close(ws)
        finally:
            self.feed.unsubscribe(subscriber)
        return _hand_back(environ, ws)

    def _pump(self, ws: _Server, subscriber: Subscriber) -> None:
        quiet_since = time.monotonic()
        while ws.connected and not self.feed.stopping.is_set():
            item = subscriber.get(WAKE)
            try:
                if item is None:
                    if time.monotonic() - quiet_since >= eventstream.HEARTBEAT:
                        ws.send('{"type":"ping"}')
                        quiet_since = time.monotonic()
                    continue
                message, _, last = item
                if message:
                    ws.send(message)
                    quiet_since = time.monotonic()
                if last:
                    return
            except (ConnectionClosed, OSError):
                return

    def _close(self, ws: _Server) -> None:
        if ws.connected:
            going_away = self.feed.stopping.is_set()
            try:
                ws.close(GOING_AWAY if going_away else None, "server stopping" if going_away else None)
            except (ConnectionClosed, OSError):
                pass
        ws.thread.join(CLOSE_WAIT)  # its reader ends when the client's close frame arrives

    # -- SSE -------------------------------------------------------------------------------

    def events(self, environ: dict[str, Any], start_response: Callable) -> Any:
        try:
            subscriber = self._subscribe(environ)
        except ParamError as e:
            return error_response(start_response, "400 Bad Request", str(e), parameter=e.parameter)
        eventstream.start(start_response)
        return self._sse(subscriber)

    def _sse(self, subscriber: Subscriber) -> Iterator[bytes]:
        """Runs until the client goes (a write fails at the next message or heartbeat),
        the server stops, or a `reset` was sent."""
        try:
            yield eventstream.opening()
            quiet_since = time.monotonic()
            while not self.feed.stopping.is_set():
                item = subscriber.get(WAKE)
                if item is None:
                    if time.monotonic() - quiet_since >= eventstream.HEARTBEAT:
                        yield eventstream.comment("ping")
                        quiet_since = time.monotonic()
                    continue
                message, seq, last = item
                if message:
                    yield eventstream.event(message, event_id=seq)
                    quiet_since = time.monotonic()
                if last:
                    return
        finally:
            self.feed.unsubscribe(subscriber)


def _hand_back(environ: dict[str, Any], ws: _Server) -> Any:
    """End the WSGI call without a response: the WebSocket already used the connection.

    gunicorn's gevent worker: raising StopIteration from the app closes the connection
    without writing (what flask-sock does). pywsgi: simple-websocket worked on a dup of
    the socket, so pywsgi would go on reading the original for a next request; shut the
    connection down so that read ends at once, and return no body and no status.
    """
    if ws.mode == "gunicorn":
        raise StopIteration()
    original = environ.get("orproxy.socket")
    if original is None:
        rfile = getattr(environ.get("wsgi.input"), "rfile", None)
        original = getattr(getattr(rfile, "raw", None), "_sock", None)
    if original is not None:
        try:
            original.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    return []
