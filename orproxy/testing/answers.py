"""What every endpoint of the fake upstream uses: JSON and error answers, query parameters,
request bodies, the client socket for answers pywsgi must not frame, and the counters
that tests read through GET /__control/stats."""
import hashlib
import json
from http import HTTPStatus
from urllib.parse import parse_qsl

import gevent

JSON = ("Content-Type", "application/json")
SSE = ("Content-Type", "text/event-stream")
NO_CACHE = ("Cache-Control", "no-cache")

STATS = {}


def reset_stats():
    STATS.clear()
    STATS.update(requests=0, connections=0, hang_open=0, hang_closed=0, hang_total=0,
                 hang_last_closed_ns=0, break_total=0, sink_bytes=0)


reset_stats()


def json_response(start_response, status, body, headers=()):
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    start_response(status, [JSON, ("Content-Length", str(len(body))), *headers])
    return [body]


def error(start_response, code, message, type_="fake_error"):
    status = "%d %s" % (code, reason(code))
    body = {"error": {"message": message, "type": type_, "code": code}}
    return json_response(start_response, status, body)


def reason(code):
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Unknown"


def query(environ):
    qs = environ.get("QUERY_STRING")
    return dict(parse_qsl(qs, keep_blank_values=True)) if qs else {}


class BadParam(ValueError):
    """A query parameter that is not what the endpoint takes: answered with a 400."""


def int_param(q, name, default):
    value = q.get(name)
    if value is None or value == "":
        return default
    try:
        result = int(value)
    except ValueError:
        raise BadParam("query parameter %s=%r is not an integer" % (name, value)) from None
    if result < 0:
        raise BadParam("query parameter %s=%r is negative" % (name, value))
    return result


def flag(q, name):
    return q.get(name) in ("1", "true", "yes")


def sleep_ms(ms):
    if ms:
        gevent.sleep(ms / 1000.0)


def hash_body(environ, want_hash=True, block=256 * 1024):
    """Stream the request body through sha256; return (length, hexdigest or None)."""
    read = environ["wsgi.input"].read
    h = hashlib.sha256() if want_hash else None
    total = 0
    while True:
        data = read(block)
        if not data:
            break
        total += len(data)
        if h is not None:
            h.update(data)
    return total, (h.hexdigest() if h is not None else None)


def json_request(environ):
    """The request body as a JSON object (small bodies only: chat requests); {} if empty."""
    raw = environ["wsgi.input"].read()
    if not raw:
        return {}
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("request body is not a JSON object")
    return data


def raw_socket(environ):
    """Take over the client socket for a response pywsgi must not frame.

    The app then writes the whole response itself and returns ``[]`` without calling
    start_response; pywsgi sends nothing more and closes the connection afterwards.
    """
    handler = environ["fake.handler"]
    handler.close_connection = True
    return handler.socket
