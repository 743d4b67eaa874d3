"""Helpers for the replay tests: POST /api/requests/{id}/replay (answers checked against the
OpenAPI document), what the fake upstream recorded (orproxy/testing/recorder.py), and a
search of every file a replay could have written a key to."""
import base64
import json
import os
import uuid
from pathlib import Path

from helpers import http_json, http_request

RECORD = "X-Fake-Record"


def new_key():
    """An API key no test has used: found anywhere, it came from this test."""
    return "sk-replay-%s" % uuid.uuid4().hex


def replay(api, exchange_id, payload=None, raw=None, headers=None, check=True):
    """POST the replay (``payload`` as JSON, or ``raw`` bytes); return (status, answer),
    the answer checked against the OpenAPI document unless ``check`` is false."""
    body = raw if raw is not None else json.dumps(payload if payload is not None else {}).encode()
    sent = {"Content-Type": "application/json", **(headers or {})}
    path = "/api/requests/%s/replay" % exchange_id
    status, _, data = http_request("POST", api.url + path, body, {k: v for k, v in sent.items() if v is not None})
    answer = json.loads(data) if data else None
    if check:
        api.check("POST", path, status, answer)
    return status, answer


def received(upstream, tag):
    """What the fake upstream received with ``X-Fake-Record: tag``, oldest first; bodies as bytes."""
    status, data = http_json("GET", "%s/__control/received?tag=%s" % (upstream.url, tag))
    assert status == 200, data
    for record in data["received"]:
        record["body"] = base64.b64decode(record.pop("body_base64"))
    return data["received"]


def header(record, name):
    values = [v for n, v in record["headers"] if n.lower() == name.lower()]
    return values[0] if len(values) == 1 else values or None


def files_holding(needle, *roots):
    """Every file under ``roots`` (log dir, spool, the servers' output) whose bytes hold ``needle``;
    a root that is a logging server is its log dir, and its object store and documents if it has them."""
    needle = needle.encode()
    found = []
    for root in roots:
        stored = root.stored() if hasattr(root, "stored") else None
        if stored is not None:
            found += stored.holding(needle)
        root = getattr(root, "log_dir", root)
        for directory, _, names in os.walk(root):
            for name in names:
                path = Path(directory) / name
                try:
                    if needle in path.read_bytes():
                        found.append(str(path))
                except OSError:
                    pass
    return found
