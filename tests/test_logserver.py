"""The logging server's ingest API, spoken to directly: streamed PUTs to named files,
metadata merged beside them, 400/405 for bad ids, kinds and methods, and nothing ever
written outside the log dir (path traversal attempts in raw request targets).

Each server variant (``orlogserver``, and ``gunicorn -w 2 logserver_app()`` with -k gevent
and with orproxy's worker) runs
once for this module with its log dir four levels deep inside its own temporary tree, so
that a traversal of up to four ``..`` would still land in a tree the tests can snapshot.
Memory staying constant for any body size is not testable here (the benchmark measures it).
"""
import hashlib
import http.client
import json
import os
import re
import socket
import uuid
from pathlib import Path

import pytest

from helpers import ServerProcess, pattern_bytes, script, start_gunicorn, wait_until
from orproxy import logwire

BIN_NAME_RE = re.compile(
    r"^\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}\.\d{3}_([0-9a-f]{8})_(request|response)\.bin$")
META_NAME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}\.\d{3}_([0-9a-f]{8})_metadata\.json$")
MiB = 1024 * 1024


class Server(object):
    def __init__(self, url, root, log_dir, process):
        self.url, self.root, self.log_dir, self.process = url, root, log_dir, process

    def files(self, exchange_id):
        key = "_%s_" % exchange_id[:8]
        return sorted(p for p in self.log_dir.iterdir() if key in p.name)

    def file(self, exchange_id, kind):
        suffix = "_metadata.json" if kind == "metadata" else "_%s.bin" % kind
        found = [p for p in self.files(exchange_id) if p.name.endswith(suffix)]
        assert len(found) <= 1, found
        return found[0] if found else None


@pytest.fixture(scope="module", params=["orlogserver", "gunicorn", "gunicorn-worker"])
def server(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("logserver_" + request.param)
    log_dir = root / "d1" / "d2" / "d3" / "logs"
    workdir = root / "work"
    if request.param == "orlogserver":
        argv = [script("orlogserver"), "--host", "127.0.0.1", "--port", "0",
                "--log-dir", str(log_dir)]
        process = ServerProcess("orlogserver", argv, workdir)
        url = process.start("listening")
    else:
        worker = "gevent" if request.param == "gunicorn" else "orproxy.worker.GeventWorker"
        process = start_gunicorn("logserver-" + request.param, "orproxy.wsgi:logserver_app()",
                                 workdir, worker, env={"ORLOGSERVER_LOG_DIR": log_dir})
        url = process.url
    yield Server(url, root, log_dir, process)
    process.stop(timeout=5)


# -- local helpers -----------------------------------------------------------------------


def _split(url):
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    return host, int(port)


def send(url, method, target, body=None, headers=(), timeout=10.0):
    """The raw target is sent as is (no normalisation). Returns (status, body)."""
    host, port = _split(url)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.putrequest(method, target, skip_host=False, skip_accept_encoding=True)
        headers = list(headers)
        if body is not None and not any(n.lower() in ("content-length", "transfer-encoding")
                                        for n, _ in headers):
            headers.append(("Content-Length", str(len(body))))
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def new_id():
    return str(uuid.uuid4())


def read_metadata(server, exchange_id, predicate=lambda d: True):
    def check():
        path = server.file(exchange_id, "metadata")
        if path is None:
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data if predicate(data) else None
    return wait_until(check, 5, 0.01, "metadata of %s" % exchange_id)


def tree(root):
    """Every path under root (files, dirs, symlinks), relative to it."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            found.add(os.path.relpath(os.path.join(dirpath, name), root))
    return found


# -- ingest --------------------------------------------------------------------------------


def test_a_batch_is_answered_with_its_acks_and_the_batch_size_the_log_dir_wants(server):
    exchange_id, data = new_id(), b"GET / HTTP/1.1\r\n\r\n"
    body = logwire.append_head(exchange_id, "request", 1.7e9, 1.7e9, 0, len(data), True) + data
    conn = http.client.HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]), timeout=10)
    try:
        conn.request("POST", logwire.PATH, body, {"Content-Type": logwire.CONTENT_TYPE})
        answer = conn.getresponse()
        assert answer.status == 201 and json.loads(answer.read()) == {"acks": [len(data)]}
        assert answer.getheader(logwire.BATCH_HEADER) == str(logwire.BATCH_BYTES)  # 4 MiB: more costs memory
    finally:
        conn.close()


def test_put_parts_answer_201_and_write_named_files(server):
    exchange_id = new_id()
    request = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n{\"a\":1}"
    response = bytes(range(256)) * 10 + b"\r\n\r\nnot a head\n"
    status, body = send(server.url, "PUT", "/%s/request" % exchange_id, request)
    assert status == 201, body
    status, body = send(server.url, "PUT", "/%s/response" % exchange_id, response)
    assert status == 201, body
    names = [p.name for p in server.files(exchange_id)]
    assert len(names) == 3, names
    for name in names:
        m = BIN_NAME_RE.match(name) or META_NAME_RE.match(name)
        assert m, name
        assert m.group(1) == exchange_id[:8]
    assert server.file(exchange_id, "request").read_bytes() == request
    assert server.file(exchange_id, "response").read_bytes() == response
    meta = read_metadata(server, exchange_id, lambda d: d["parts"].get("response", {}).get("complete"))
    assert meta["id"] == exchange_id
    assert meta["parts"]["request"]["file"] == server.file(exchange_id, "request").name
    assert meta["parts"]["response"]["file"] == server.file(exchange_id, "response").name
    assert meta["parts"]["request"]["complete"] is True


def test_a_streamed_put_grows_the_file_as_data_arrives(server):
    exchange_id = new_id()
    sock = socket.create_connection(_split(server.url), timeout=10)
    try:
        sock.sendall(("PUT /%s/response HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n"
                      "Content-Type: application/octet-stream\r\n\r\n" % (exchange_id, _host(server).decode())).encode())
        first = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: 1\n\n"
        sock.sendall(b"%x\r\n%s\r\n" % (len(first), first))
        # The file holds the first block while the upload is still open ...
        wait_until(lambda: (server.file(exchange_id, "response") is not None
                            and server.file(exchange_id, "response").read_bytes() == first),
                   5, 0.01, "the first block in the file")
        # ... and the metadata file already names the exchange and its part.
        meta = read_metadata(server, exchange_id, lambda d: "response" in d["parts"])
        assert meta["id"] == exchange_id
        assert meta["parts"]["response"]["complete"] is False
        second = b"data: 2\n\n"
        sock.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(second), second))
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        assert resp.status == 201
        resp.read()
    finally:
        sock.close()
    assert server.file(exchange_id, "response").read_bytes() == first + second
    read_metadata(server, exchange_id, lambda d: d["parts"]["response"]["complete"] is True)


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_a_big_put_is_written_byte_exact(server, framing):
    exchange_id = new_id()
    data = pattern_bytes(16 * MiB + 5, offset=1)
    if framing == "length":
        status, _ = send(server.url, "PUT", "/%s/request" % exchange_id, data, timeout=30)
    else:
        blocks = iter([data[i:i + 65537] for i in range(0, len(data), 65537)])
        host, port = _split(server.url)
        conn = http.client.HTTPConnection(host, port, timeout=30)
        try:
            conn.request("PUT", "/%s/request" % exchange_id, body=blocks, encode_chunked=True,
                         headers={"Transfer-Encoding": "chunked"})
            resp = conn.getresponse()
            status = resp.status
            resp.read()
        finally:
            conn.close()
    assert status == 201
    written = server.file(exchange_id, "request").read_bytes()
    assert len(written) == len(data)
    assert hashlib.sha256(written).hexdigest() == hashlib.sha256(data).hexdigest()


def test_metadata_is_stored_beside_the_parts_and_merged(server):
    exchange_id = new_id()
    assert send(server.url, "PUT", "/%s/request" % exchange_id, b"GET / HTTP/1.1\r\n\r\n")[0] == 201
    proxy_meta = {"id": exchange_id, "status": 200, "request_bytes": 0, "response_bytes": 42}
    status, _ = send(server.url, "PUT", "/%s/metadata" % exchange_id,
                     json.dumps(proxy_meta).encode(), [("Content-Type", "application/json")])
    assert status == 201
    assert send(server.url, "PUT", "/%s/response" % exchange_id, b"HTTP/1.1 200 OK\r\n\r\n")[0] == 201
    meta = read_metadata(server, exchange_id,
                         lambda d: "proxy" in d and d["parts"].get("response", {}).get("complete"))
    assert meta["id"] == exchange_id
    assert meta["proxy"] == proxy_meta
    assert set(meta["parts"]) == {"request", "response"}
    # One metadata file, sharing the timestamp of the exchange's first part.
    metas = [p for p in server.files(exchange_id) if p.name.endswith("_metadata.json")]
    assert len(metas) == 1
    request_file = server.file(exchange_id, "request").name
    assert metas[0].name.split("_" + exchange_id[:8])[0] == request_file.split("_" + exchange_id[:8])[0]


def _pipelined(server, requests):
    """Send whole requests in one write on one connection (the last one closing it);
    return everything the server answered until it closed."""
    host, port = _split(server.url)
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"".join(requests))
        data = b""
        while block := sock.recv(65536):
            data += block
        return data


def _host(server):
    """The Host header the logging server answers for (its own address: web/guard.py)."""
    return server.url.split("//", 1)[1].encode()


def _put(server, exchange_id, kind, body, close=False):
    return (b"PUT /%s/%s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n%s\r\n%s" % (
        exchange_id.encode(), kind.encode(), _host(server), len(body),
        b"Connection: close\r\n" if close else b"", body))


def test_pipelined_uploads_are_answered_in_order_once_their_metadata_is_written(server):
    """What the proxy's log lane does: an exchange's parts and metadata in one write. Every
    answer is a 201, in order; when the last arrives the metadata file already holds all
    three, and the servers with orproxy's batching handler (the orlogserver command, and
    gunicorn with orproxy's worker) wrote it once for the three; -k gevent writes it three
    times."""
    exchange_id = new_id()
    answers = _pipelined(server, [
        _put(server, exchange_id, "request", b"POST /v1/x HTTP/1.1\r\nHost: u\r\n\r\n{}"),
        _put(server, exchange_id, "response", b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nok"),
        _put(server, exchange_id, "metadata", json.dumps({"status": 200}).encode(), close=True)])
    statuses = re.findall(rb"HTTP/1\.1 (\d+)", answers)
    assert statuses == [b"201", b"201", b"201"]
    document = json.loads(server.file(exchange_id, "metadata").read_text())  # no waiting
    assert set(document["parts"]) == {"request", "response"}
    assert all(part["complete"] for part in document["parts"].values())
    assert document["proxy"] == {"status": 200}
    assert document["rev"] == (3 if server.process.name == "logserver-gunicorn" else 1)


def test_a_long_pipeline_is_answered_in_order_and_every_exchange_written(server):
    """More exchanges in one write than a batch gathers (store/batching.py, BATCH_KEYS): the batch
    runs midway and again at the end, and no answer is lost or reordered."""
    ids = [new_id() for _ in range(300)]
    requests = [_put(server, i, "metadata", json.dumps({"n": n}).encode()) for n, i in enumerate(ids)]
    requests.append(b"GET /api/health HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % _host(server))
    answers = _pipelined(server, requests)
    bodies = [json.loads(b) for b in re.findall(rb'\r\n\r\n(\{"id":[^}]*\})', answers)]
    assert [b["id"] for b in bodies] == ids
    assert re.findall(rb"HTTP/1\.1 (\d+)", answers) == [b"201"] * 300 + [b"200"]
    for n, exchange_id in enumerate(ids):
        assert json.loads(server.file(exchange_id, "metadata").read_text())["proxy"] == {"n": n}


def test_a_read_pipelined_behind_uploads_sees_them(server):
    exchange_id = new_id()
    answers = _pipelined(server, [
        _put(server, exchange_id, "request", b"POST /v1/x HTTP/1.1\r\nHost: u\r\n\r\n{}"),
        b"GET /api/requests/%s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (
            exchange_id.encode(), _host(server))])
    assert re.findall(rb"HTTP/1\.1 (\d+)", answers) == [b"201", b"200"]
    assert json.loads(answers.split(b"\r\n\r\n", 2)[2])["id"] == exchange_id


def test_a_malformed_request_behind_uploads_gets_its_400_after_their_answers(server):
    exchange_id = new_id()
    answers = _pipelined(server, [
        _put(server, exchange_id, "request", b"POST /v1/x HTTP/1.1\r\nHost: u\r\n\r\n{}"),
        b"PUT /%s/request HTTP/1.1\r\nHost: %s\r\nContent-Length: nope\r\n\r\n" % (
            exchange_id.encode(), _host(server))])
    assert re.findall(rb"HTTP/1\.1 (\d+)", answers) == [b"201", b"400"]
    assert read_metadata(server, exchange_id)["parts"]["request"]["complete"] is True


def test_metadata_alone_creates_the_metadata_file(server):
    exchange_id = new_id()
    status, _ = send(server.url, "PUT", "/%s/metadata" % exchange_id, b'{"status": 404}')
    assert status == 201
    meta = read_metadata(server, exchange_id, lambda d: "proxy" in d)
    assert meta["id"] == exchange_id and meta["proxy"] == {"status": 404}


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'"text"'])
def test_metadata_that_is_not_a_json_object_is_400(server, body):
    exchange_id = new_id()
    status, answer = send(server.url, "PUT", "/%s/metadata" % exchange_id, body)
    assert status == 400
    assert json.loads(answer)["error"]["message"]
    meta_path = server.file(exchange_id, "metadata")
    if meta_path is not None:                       # nothing of the bad document kept
        assert "proxy" not in json.loads(meta_path.read_text())


# -- refused ids, kinds and methods ---------------------------------------------------------


GOOD = "0b6f1c9e-3f4a-4d2b-9c1e-5a7b8c9d0e1f"


@pytest.mark.parametrize("target", [
    "/not-a-uuid/request",
    "/12345/request",
    "/%s0/request" % GOOD,                          # too long
    "/%s/request" % GOOD[:-1],                      # too short
    "/%s/request" % GOOD.replace("0b", "zz"),       # not hex
    "/..%s/request" % GOOD[2:],
    "/../request",
    "/..%2f..%2fpwned/request",                     # two segments once decoded? still no UUID
    "/%2e%2e/request",
    "/./request",
    "/%s/other" % GOOD,
    "/%s/requests" % GOOD,
    "/%s/request.bin" % GOOD,
    "/%s/.." % GOOD,
    "/%s/%%2e%%2e" % GOOD,
])
def test_bad_ids_and_kinds_are_refused_and_write_nothing(server, target):
    before = tree(server.root)
    status, body = send(server.url, "PUT", target, b"pwned")
    assert status in (400, 404), (status, body)
    if target.count("/") == 2 and "%2f" not in target.lower():
        assert status == 400, (status, body)        # /{id}/{kind}: 400 with a message
        assert json.loads(body)["error"]["message"]
    assert tree(server.root) == before


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE", "PATCH", "OPTIONS"])
@pytest.mark.parametrize("kind", ["request", "response", "metadata"])
def test_other_methods_are_405(server, method, kind):
    exchange_id = new_id()
    body = b"{}" if method in ("POST", "PATCH") else None
    status, answer = send(server.url, method, "/%s/%s" % (exchange_id, kind), body)
    assert status == 405, (status, answer)
    assert server.files(exchange_id) == []


# -- path traversal ------------------------------------------------------------------------


TRAVERSALS = [
    "/..%2f..%2fetc/request",
    "/..%2F..%2F..%2F..%2Fpwned/request",
    "/../x/request",
    "/../../../../pwned/request",
    "/%2e%2e/%2e%2e/pwned/request",
    "/%2e%2e%2f%2e%2e%2fpwned/request",
    "/..%5c..%5cpwned/request",
    "/%s/..%%2f..%%2f..%%2fpwned" % GOOD,
    "/%s%%2f..%%2f..%%2fpwned/request" % GOOD,
    "/%s/../../pwned" % GOOD,
    "/..%%2f..%%2f..%%2f..%%2f%s/request" % GOOD,
    "/..%%2f..%%2f..%%2f..%%2f%s/metadata" % GOOD,
    "/%%2e%%2e%%2f%%2e%%2e%%2f%s/response" % GOOD,
    "/..%2f..%2f..%2f..%2f..%2f..%2f..%2f..%2f..%2f..%2ftmp%2forproxy-pwned/request",
    "//tmp/orproxy-pwned/request",
    "/%2ftmp%2forproxy-pwned/request",
    "/api/../..%2f..%2fpwned/request",
]


def test_path_traversal_writes_nothing_outside_the_log_dir(server):
    before = tree(server.root)
    before_log_dir = tree(server.log_dir)
    ancestors = list(server.root.parents)[:3]
    before_ancestors = {a: set(os.listdir(a)) for a in ancestors}
    for target in TRAVERSALS:
        for method in ("PUT", "POST"):
            status, body = send(server.url, method, target, b"pwned " + target.encode())
            assert not 200 <= status < 300, (method, target, status, body)
    # Nothing new anywhere in the server's tree, the log dir included.
    assert tree(server.root) == before
    assert tree(server.log_dir) == before_log_dir
    # Above the tree other programs come and go: look only for our marker there.
    for ancestor in ancestors:
        new = set(os.listdir(ancestor)) - before_ancestors[ancestor]
        assert not [n for n in new if "pwned" in n], (ancestor, new)
    for path in ("/tmp/orproxy-pwned", "/etc/request", "/pwned", "/tmp/pwned"):
        assert not os.path.exists(path), path
    # Everything in the log dir is a part, a metadata file, or the id index.
    for entry in server.log_dir.iterdir():
        if entry.name == ".ids":
            continue
        assert BIN_NAME_RE.match(entry.name) or META_NAME_RE.match(entry.name), entry.name


def test_the_logging_server_still_works_after_the_attempts(server):
    exchange_id = new_id()
    assert send(server.url, "PUT", "/%s/request" % exchange_id, b"ok")[0] == 201
    assert Path(server.file(exchange_id, "request")).read_bytes() == b"ok"
