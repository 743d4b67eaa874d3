"""Helpers for tests of what lands on the logging server: one request with exact header
lines, a logged .bin file split into its head and body, and waiting for an exchange to be
logged whole."""
import hashlib
import http.client

from helpers import pattern_bytes


def host_port(url):
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    return host, int(port)


def send(url, method, target, headers=(), body=None, timeout=10.0):
    """One request with exactly these header lines; returns (status, headers, body, id)."""
    host, port = host_port(url)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        headers = list(headers)
        if body is not None and not any(n.lower() == "content-length" for n, _ in headers):
            headers.append(("Content-Length", str(len(body))))
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, resp.getheaders(), data, resp.getheader("X-Request-Id")
    finally:
        conn.close()


def split_head(raw):
    """(first line, [(name, value)], body) of a logged .bin file; CRLF line ends."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, raw[:500]
    lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(": ")
        assert colon, line
        headers.append((name, value))
    return lines[0], headers, body


def values(headers, name):
    return [v for n, v in headers if n.lower() == name.lower()]


def exchange_complete(data):
    parts = data.get("parts", {})
    return ("proxy" in data and parts.get("request", {}).get("complete")
            and parts.get("response", {}).get("complete"))


def logged(logserver, request_id, timeout=5.0):
    """Wait until the exchange is fully logged; return (request bytes, response bytes, metadata)."""
    meta = logserver.wait_for_metadata(request_id, predicate=exchange_complete, timeout=timeout)
    return (logserver.file(request_id, "request").read_bytes(),
            logserver.file(request_id, "response").read_bytes(), meta)


def logged_once(logserver, rid, request_body=None, response_body=None, timeout=30.0):
    """The exchange is logged whole, exactly once: one file of each kind, the bodies byte
    for byte (when given), nothing dropped. Returns its metadata."""
    metadata = logserver.wait_for_metadata(rid, predicate=exchange_complete, timeout=timeout)
    kinds = sorted(p.name.rsplit("_", 1)[1] for p in logserver.files(rid)
                   if not p.name.endswith(".tmp"))  # a rewrite of the metadata file under way
    assert kinds == ["metadata.json", "request.bin", "response.bin"], kinds
    _, _, request = split_head(logserver.file(rid, "request").read_bytes())
    _, _, response = split_head(logserver.file(rid, "response").read_bytes())
    if request_body is not None:
        assert request == request_body
    if response_body is not None:
        assert hashlib.sha256(response).hexdigest() == hashlib.sha256(response_body).hexdigest(), (
            len(response), len(response_body))
    assert metadata["proxy"]["log_dropped_bytes"] == 0
    return metadata


def exchange(url, i):
    """One of three kinds of exchange; (id, request body, response body as received)."""
    kind = i % 3
    if kind == 0:
        body = pattern_bytes(20000 + i, offset=i)
        status, _, data, rid = send(url, "POST", "/v1/echo?i=%d" % i, [("Content-Type", "text/plain")], body)
    elif kind == 1:
        body = b""
        status, _, data, rid = send(url, "GET", "/v1/bytes?n=%d" % (300000 + i))
    else:
        body = b""
        status, _, data, rid = send(url, "GET", "/v1/sse?events=5&interval_ms=20&i=%d" % i)
    assert status == 200
    return rid, body, data
