"""What the fake upstream received, kept for the tests that must see a request exactly as an
upstream got it without the answer carrying it into a log: a replayed request's API key
reaches the upstream in clear, and an echo of it would be logged (tests/test_replay.py).

A request with the header ``X-Fake-Record: <tag>`` is recorded whole: method, raw target,
raw header lines in wire order, and body (read before the endpoint runs, up to MAX_BODY).
``GET /__control/received?tag=<tag>`` lists the records of that tag, oldest first, bodies
in base64; ``/__control/reset`` forgets them. Untagged requests cost nothing.
"""
import base64
import collections
import io

from orproxy.testing.answers import json_response, query

HEADER = "X-Fake-Record"
MAX_BODY = 8 * 1024 * 1024
KEPT = 200  # records, all tags together

_RECORDS = collections.deque(maxlen=KEPT)


def record(environ, tag):
    """Keep the request of `environ` under `tag`; its body stays readable by the endpoint."""
    handler = environ["fake.handler"]
    body = environ["wsgi.input"].read(MAX_BODY)
    environ["wsgi.input"] = io.BytesIO(body)
    _RECORDS.append({"tag": tag, "method": handler.command, "target": handler.path,
                     "headers": [[name, value] for name, value in handler.raw_headers],
                     "body_base64": base64.b64encode(body).decode()})


def received(environ, start_response):
    """GET /__control/received?tag=T: the records of tag T."""
    tag = query(environ).get("tag")
    return json_response(start_response, "200 OK", {"received": [r for r in _RECORDS if r["tag"] == tag]})


def forget():
    _RECORDS.clear()
