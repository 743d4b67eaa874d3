"""Helpers for the live feed, live tail and UI tests: chat completions sent through the
real proxy (streaming ones in a thread, their id known as soon as the head arrives), a
private logging server + proxy pair, and readers for SSE and WebSocket feeds."""
import json
import threading
import time

import requests

from servers import build_config, new_logserver, start_proxy

CHAT_PATH = "/api/v1/chat/completions"


def chat_body(model, content="Hello", stream=False, messages=None, usage=True):
    body = {"model": model, "messages": messages or [{"role": "user", "content": content}]}
    if stream:
        body["stream"] = True
        if usage:
            body["stream_options"] = {"include_usage": True}
    return body


def send_chat(proxy_url, model, content="Hello", messages=None, path=CHAT_PATH, query=""):
    """A non-streaming chat completion through the proxy; returns its X-Request-Id."""
    resp = requests.post(proxy_url + path + query, json=chat_body(model, content, messages=messages),
                         headers={"Authorization": "Bearer sk-test-0123456789abcdef"}, timeout=10)
    assert resp.status_code in (200, 429, 500), resp.text
    return resp.headers["X-Request-Id"]


class StreamingChat(object):
    """A streaming chat completion through the proxy, read in a thread.

    ``id`` is set (and ``started`` set) once the response head arrived; ``done`` is set
    when the stream ended; ``text`` is the body read so far.
    """

    def __init__(self, proxy_url, model, events=30, interval_ms=150, content="Count slowly",
                 messages=None, query=""):
        self.url = "%s%s?events=%d&interval_ms=%d%s" % (proxy_url, CHAT_PATH, events, interval_ms, query)
        self.body = chat_body(model, content, stream=True, messages=messages)
        self.id = None
        self.text = ""
        self.error = None
        self.started = threading.Event()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self, timeout=5.0):
        self.thread.start()
        assert self.started.wait(timeout), "the streaming response never started: %r" % self.error
        return self

    def _run(self):
        try:
            with requests.post(self.url, json=self.body, stream=True, timeout=30,
                               headers={"Authorization": "Bearer sk-test-0123456789abcdef"}) as resp:
                self.id = resp.headers["X-Request-Id"]
                self.started.set()
                for chunk in resp.iter_content(None):
                    self.text += chunk.decode("utf-8", "replace")
        except Exception as e:  # shown by start()/wait()
            self.error = e
        finally:
            self.started.set()
            self.done.set()

    def wait(self, timeout=30.0):
        assert self.done.wait(timeout), "the stream did not end"
        assert self.error is None, self.error
        return self


class Stack(object):
    """A logging server of its own (its own log dir) and a proxy logging to it, so that
    a test sees only its exchanges and may stop the logging server."""

    def __init__(self, tmp_path_factory, upstream_url, name="ui", token=None, index=()):
        self.logserver = new_logserver(tmp_path_factory.mktemp(name + "_logs"), tmp_path_factory.mktemp(name + "_orlogserver"),
                                   [*index, *(["--token", token] if token else [])]).start()
        config = build_config(upstream_url, self.logserver.url, logging={"token": token} if token else None)
        self.proxy = start_proxy(tmp_path_factory.mktemp(name + "_proxy"), config)

    def close(self):
        self.proxy.stop(timeout=10)
        self.logserver.stop(timeout=10)


def wait_row(logserver_url, exchange_id, predicate=lambda row: True, timeout=10.0):
    """Poll GET /api/requests/{id} until the row exists and predicate(row) holds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        resp = requests.get("%s/api/requests/%s" % (logserver_url, exchange_id), timeout=5)
        last = (resp.status_code, resp.text[:500])
        if resp.status_code == 200 and predicate(resp.json()):
            return resp.json()
        time.sleep(0.05)
    raise AssertionError("row %s never matched; last: %r" % (exchange_id, last))


def sse_events(resp):
    """Parse an SSE response (requests, stream=True) into (event, data, id) tuples as they
    arrive; data is decoded JSON when it is JSON."""
    name, data, event_id = None, [], None
    for raw in resp.iter_lines(chunk_size=1, decode_unicode=False):
        line = raw.decode("utf-8")
        if not line:
            if data:
                text = "\n".join(data)
                try:
                    value = json.loads(text)
                except ValueError:
                    value = text
                yield name or "message", value, event_id
            name, data = None, []
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if key == "data":
            data.append(value)
        elif key == "event":
            name = value
        elif key == "id":
            event_id = value
