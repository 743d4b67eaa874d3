"""Helpers for the REST API tests: calls checked against the server's own OpenAPI document.

``ApiClient(url).get(path, **params)`` returns (status, decoded JSON) and validates the
body against the schema the document gives for that path, method and status, so every
call a test makes is also a conformance check.
"""
import json
import re
import time
from urllib.parse import urlencode

import jsonschema

from helpers import http_request


class ApiClient(object):
    def __init__(self, url):
        self.url = url.rstrip("/")
        self._doc = None

    @property
    def doc(self):
        if self._doc is None:
            status, _, body = http_request("GET", self.url + "/api/openapi.json")
            assert status == 200, body
            self._doc = json.loads(body)
        return self._doc

    def _template(self, path):
        for template in self.doc["paths"]:
            pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
            if re.match(pattern, path):
                return template
        return None

    def check(self, method, path, status, body):
        """Validate a JSON body against the document (a path or method it does not list: an
        Error, 404 or 405)."""
        template = self._template(path)
        if template is None or method.lower() not in self.doc["paths"][template]:
            assert status in (404, 405), (method, path, status)
            schema = {"$ref": "#/components/schemas/Error"}
        else:
            operation = self.doc["paths"][template][method.lower()]
            response = operation["responses"].get(str(status))
            assert response is not None, "%s %s answered %s, not in the document" % (method, path, status)
            schema = response["content"]["application/json"].get("schema")
            if schema is None:
                return
        validator = jsonschema.Draft202012Validator(dict(self.doc, **schema))
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.path))
        assert not errors, "%s %s -> %s does not match the document: %s" % (
            method, path, status, "; ".join("%s at %s" % (e.message[:300], list(e.path)) for e in errors[:5]))

    def call(self, method, path, params=None, check=True):
        query = ("?" + urlencode(params, doseq=True)) if params else ""
        status, headers, body = http_request(method, self.url + path + query)
        data = json.loads(body) if body else None
        if check:
            self.check(method, path, status, data)
        return status, data

    def get(self, path, **params):
        return self.call("GET", path, params)

    def ok(self, path, **params):
        status, data = self.get(path, **params)
        assert status == 200, (path, params, status, data)
        return data

    def raw(self, path, **params):
        query = ("?" + urlencode(params)) if params else ""
        status, headers, body = http_request("GET", self.url + path + query)
        return status, dict(headers), body

    def wait_row(self, exchange_id, predicate=lambda row: True, timeout=10.0):
        """Poll GET /api/requests/{id} until it exists and ``predicate(row)`` holds."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            status, data = self.call("GET", "/api/requests/" + exchange_id, check=False)
            last = (status, data)
            if status == 200 and predicate(data):
                self.check("GET", "/api/requests/" + exchange_id, status, data)
                return data
            if time.monotonic() > deadline:
                raise AssertionError("row of %s never matched; last answer: %r" % (exchange_id, last))
            time.sleep(0.02)

    def all_items(self, **params):  # noqa: D401
        """Every item of a filtered list, walking the cursor."""
        items, cursor = [], None
        while True:
            page_params = dict(params, **({"cursor": cursor} if cursor else {}))
            page = self.ok("/api/requests", **page_params)
            items += page["items"]
            cursor = page["next_cursor"]
            assert page["has_more"] == (cursor is not None)
            if not cursor:
                return items


def derived_done(row):
    """The exchange is complete, its LLM fields are derived, and the index has caught up
    with its metadata file."""
    metadata = row.get("metadata", {})
    derived = metadata.get("derived") or {}
    return (row["state"] == "complete" and "response" in (derived.get("parts") or [])
            and row["rev"] == metadata.get("rev")
            and row.get("seq") is not None)  # an indexed row (before, the API builds it from the file)
