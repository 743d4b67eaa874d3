"""The requests seam made honest (issue 11): the real `orproxy` command with requests' own
HTTPAdapter mounted on its session in place of orproxy's StreamingAdapter still proxies,
streams and logs, only slower and less exact. The log client keeps orproxy's adapter: it
is given its own at start, not the session's.
"""
import http.client
import json
import sys
import time

import pytest

from servers import build_config, default_routes
from helpers import ServerProcess, free_port, http_request

# The `orproxy` command, with HTTPAdapter mounted once ProxyApp has built its session.
SHIM = """\
import sys
from orproxy import cli, proxy  # cli first: it monkey-patches before requests is imported
import requests

built = proxy.ProxyApp.__init__


def with_requests_adapter(self, config):
    built(self, config)
    adapter = requests.adapters.HTTPAdapter()
    self.session.mount("http://", adapter)
    self.session.mount("https://", adapter)
    print("orproxy-test: requests' HTTPAdapter mounted", flush=True)


proxy.ProxyApp.__init__ = with_requests_adapter
cli.proxy_main(sys.argv[1:])
"""


@pytest.fixture(scope="module")
def seam_proxy(_fake_upstream_session, _logserver_session, tmp_path_factory):
    """One proxy for the module: the default routes, a dead one and a short read timeout."""
    upstream = _fake_upstream_session.url
    routes = default_routes(upstream) + [
        {"source": "/dead/", "destination": "http://127.0.0.1:%d/" % free_port(), "name": "dead"},
        {"source": "/short/", "destination": upstream + "/", "name": "short", "read_timeout": 0.5}]
    workdir = tmp_path_factory.mktemp("orproxy-httpadapter")
    config = workdir / "config.yaml"
    config.write_text(json.dumps(build_config(upstream, _logserver_session.url, routes)))
    process = ServerProcess("orproxy-httpadapter", [sys.executable, "-c", SHIM, "--config", config,
                                                    "--host", "127.0.0.1", "--port", "0"], workdir)
    process.start("listening")
    assert "HTTPAdapter mounted" in process.stdout_text(), process.describe()
    yield process
    process.stop(10)


@pytest.fixture
def proxy_url(seam_proxy, fake_upstream, logserver):
    """The proxy's URL; the test fails if the proxy raised anything meanwhile (an exception
    in its WSGI app, e.g. an adapter asking more of the request than it offers)."""
    assert seam_proxy.alive, seam_proxy.describe()
    since = seam_proxy.output_sizes()[1]
    yield seam_proxy.url
    assert "Traceback" not in seam_proxy.stderr_text(since), seam_proxy.stderr_text(since)


def connect(url):
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    return http.client.HTTPConnection(host, int(port), timeout=15)


def logged(logserver, response):
    """The metadata of a logged exchange, once its request and response parts are in."""
    def complete(data):
        parts = data.get("parts", {})
        return "proxy" in data and all(parts.get(k, {}).get("complete") is not None
                                       for k in ("request", "response"))
    return logserver.wait_for_metadata(response.getheader("X-Request-Id"), predicate=complete)


def post(url, target, payload, headers=()):
    conn = connect(url)
    body = json.dumps(payload).encode()
    conn.request("POST", target, body, {"Content-Type": "application/json", **dict(headers)})
    return conn, conn.getresponse()


def test_the_session_sends_through_requests_own_adapter(proxy_url):
    status, _, body = http_request("GET", proxy_url + "/v1/echo")
    names = {n.lower(): v for n, v in json.loads(body)["headers"]}
    assert status == 200 and names["user-agent"].startswith("python-urllib3/")  # orproxy's adds none


def test_a_json_chat_completion(proxy_url, logserver):
    payload = {"model": "fake/model", "messages": [{"role": "user", "content": "hi"}]}
    conn, response = post(proxy_url, "/api/v1/chat/completions", payload,
                          [("Authorization", "Bearer sk-or-v1-0123456789abcdef")])
    body = response.read()
    conn.close()
    assert response.status == 200 and json.loads(body)["choices"][0]["message"]["content"]
    meta = logged(logserver, response)
    assert (meta["proxy"]["status"], meta["proxy"]["error"]) == (200, None)
    request = logserver.read(meta["id"], "request")
    assert request.endswith(json.dumps(payload).encode()) and b"Bearer ****cdef" in request
    assert logserver.read(meta["id"], "response").endswith(b"\r\n\r\n" + body)


def test_a_streamed_completion_arrives_event_by_event(proxy_url, logserver):
    payload = {"model": "fake/model", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    conn, response = post(proxy_url, "/v1/chat/completions?events=4&interval_ms=400", payload)
    arrivals, buffer = [], b""
    while data := response.read1(65536):
        buffer += data
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            if event != b"data: [DONE]":
                arrivals.append((time.time_ns(), json.loads(event[len(b"data: "):])["orproxy_sent_ns"]))
    conn.close()
    assert response.status == 200 and len(arrivals) == 6  # the role, 4 deltas, the stop
    # The deltas are sent 400 ms apart: each must arrive before the next is even sent.
    deltas = arrivals[1:5]
    for (arrived, _), (_, next_sent) in zip(deltas, deltas[1:]):
        assert arrived < next_sent, "an event waited for the next one (%d ms late)" % ((arrived - next_sent) / 1e6)
    meta = logged(logserver, response)
    assert meta["proxy"]["streamed"] is True and meta["proxy"]["error"] is None
    assert logserver.read(meta["id"], "response").endswith(b"data: [DONE]\n\n")


def test_a_chunked_upload(proxy_url, logserver):
    blocks = [b"x" * 100000, b"y" * 5, b"z" * 70000]
    conn = connect(proxy_url)
    conn.request("POST", "/v1/echo", iter(blocks), {"Content-Type": "application/octet-stream"},
                 encode_chunked=True)
    response = conn.getresponse()
    echoed = json.loads(response.read())
    conn.close()
    assert response.status == 200 and echoed["framing"] == "chunked"
    assert echoed["body_length"] == sum(map(len, blocks)) and echoed["content_length"] is None
    meta = logged(logserver, response)
    assert logserver.read(meta["id"], "request").endswith(b"\r\n\r\n" + b"".join(blocks))
    assert meta["proxy"]["request_bytes"] == sum(map(len, blocks))


def test_an_unreachable_upstream_is_a_json_502(proxy_url, logserver):
    conn, response = post(proxy_url, "/dead/v1/chat/completions", {"model": "m"})
    error = json.loads(response.read())["error"]
    conn.close()
    assert response.status == 502 and error["code"] == "upstream_unreachable"
    assert error["request_id"] == response.getheader("X-Request-Id")
    meta = logged(logserver, response)
    assert (meta["proxy"]["status"], meta["proxy"]["error"]) == (502, "upstream_unreachable")


def test_a_read_timeout_is_a_json_504(proxy_url, logserver):
    started = time.monotonic()
    conn = connect(proxy_url)
    conn.request("GET", "/short/slow?delay_ms=3000")
    response = conn.getresponse()
    error = json.loads(response.read())["error"]
    conn.close()
    assert response.status == 504 and error["code"] == "upstream_timeout"
    assert time.monotonic() - started < 2.5  # the route's 0.5 s, not the upstream's 3 s
    assert logged(logserver, response)["proxy"]["error"] == "upstream_timeout"


def test_an_upstream_breaking_off_mid_body_cuts_the_client(proxy_url, logserver):
    conn = connect(proxy_url)
    conn.request("GET", "/v1/break?after=5000")
    response = conn.getresponse()
    with pytest.raises(http.client.IncompleteRead):
        response.read()
    conn.close()
    assert logged(logserver, response)["proxy"]["error"] == "upstream_broken"
