"""Fixtures that run the real programs as processes on 127.0.0.1 (servers.py has the
processes themselves).

Session-wide processes, restarted on the same port if a test stopped or broke them:
  fake_upstream   orproxy.testing.fake_upstream (.url, .stats(), .reset_stats(), .wait_stats())
  logserver       orlogserver (.url, .log_dir, .stop(), .kill(), .start(), .files(uuid),
                  .wait_for_file(uuid, kind), .wait_for_metadata(uuid))
  proxy           orproxy with the default configuration; .stdout_text() shows only the
                  output of the current test
  any_proxy       the same under each of SERVERS: params "pywsgi", "gunicorn" (-k gevent)
                  and "gunicorn-worker" (-k orproxy.worker.GeventWorker)
  own_handler_proxy  the same under the servers with orproxy's request handler (pywsgi,
                  gunicorn-worker)
Per test:
  make_proxy(routes=None, logging=None, extra=None, gunicorn=False, ...) a fresh proxy
                  with its own config.yaml in tmp_path, stopped at teardown; gunicorn=True
                  runs it under gunicorn -k gevent, a string under that worker class
  write_config(data, name="config.yaml") -> Path in tmp_path (dict dumped as YAML, or str)
  run_cli(name, *args, ...) -> CompletedProcess (returncode, stdout, stderr) run in tmp_path

Default routes (all to the fake upstream):
  /api/v1/      -> {fake}/          name "openrouter"  (path kept)
  /v1/          -> {fake}/          name "fake"        (path kept)
  /openrouter/  -> {fake}/api/v1/   name "prefixed"    (prefix replaced)
"""
import os

import pytest
import yaml

from helpers import child_env, run_command, script
from servers import (BALANCERS, BEHIND_NGINX, SERVERS, STARTUP_TIMEOUT, FakeUpstream, build_config,
                     new_logserver, start_proxy)
from ws_helpers import WsUpstream, ws_routes

@pytest.fixture(scope="session")
def _fake_upstream_session(tmp_path_factory):
    upstream = FakeUpstream(tmp_path_factory.mktemp("fake_upstream")).start()
    yield upstream
    upstream.stop()


@pytest.fixture
def fake_upstream(_fake_upstream_session):
    """The session's fake upstream, restarted (same port) if a test killed it."""
    if not _fake_upstream_session.alive:
        _fake_upstream_session.start()
    return _fake_upstream_session


@pytest.fixture(scope="session", autouse=True)
def _stop_balancers():
    yield
    while BALANCERS:
        BALANCERS.pop().__exit__(None, None, None)


# The index: SQLite in the log dir, or PostgreSQL (`--index`), or PostgreSQL with two
# servers behind nginx (test_scaleout.py's setup). A module marked
# `pytestmark = pytest.mark.both_indexes` runs its logging servers with each.
INDEX_KINDS = ("sqlite", "postgresql", "balanced", "s3")  # s3: bodies in moto's S3, the index in PostgreSQL


def pytest_generate_tests(metafunc):
    """Every test that reaches `index_kind` gets it as a parameter, the unmarked ones "sqlite"
    alone: a session fixture parametrised for some tests only would otherwise hand the
    others whichever kind ran last (the balanced one's nginx, to the hostile-input tests)."""
    if "index_kind" in metafunc.fixturenames:
        marked = metafunc.definition.get_closest_marker("both_indexes")
        metafunc.parametrize("index_kind", INDEX_KINDS if marked else ("sqlite",), scope="session")


@pytest.fixture(scope="session")
def index_kind():
    return "sqlite"


@pytest.fixture(scope="session")
def postgres_cluster():
    """A throwaway PostgreSQL cluster (orproxy.testing.postgres) for the whole session.
    Skips where PostgreSQL is not installed; ORPROXY_REQUIRE_POSTGRES=1 (CI) fails instead."""
    from orproxy.testing.postgres import Cluster, find_bin
    if find_bin() is None:
        message = "PostgreSQL is not installed (Debian: apt-get install postgresql)"
        if os.environ.get("ORPROXY_REQUIRE_POSTGRES") == "1":
            pytest.fail(message + ", and ORPROXY_REQUIRE_POSTGRES=1")
        pytest.skip(message)
    with Cluster.start() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server (orproxy.testing.s3) for the whole session, its AWS variables set for
    every process the tests start. moto comes with the test extra: never skipped."""
    from orproxy.testing.s3 import MotoS3
    with MotoS3.start() as server:
        saved = {name: os.environ.get(name) for name in server.env}
        os.environ.update(server.env)
        yield server
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
def nginx():
    """Skips where nginx is not installed; ORPROXY_REQUIRE_NGINX=1 (CI) fails instead."""
    from orproxy.testing.balancer import find_nginx
    if find_nginx() is None:
        message = "nginx is not installed (Debian: apt-get install nginx-light)"
        if os.environ.get("ORPROXY_REQUIRE_NGINX") == "1":
            pytest.fail(message + ", and ORPROXY_REQUIRE_NGINX=1")
        pytest.skip(message)


@pytest.fixture(scope="session")
def index_args(request, index_kind):
    """A function giving a new logging server's index arguments: none for SQLite, else
    `--index` and a new database of the session's cluster (and, balanced, the name nginx
    passes on and the marker that makes new_logserver put two servers behind nginx)."""
    if index_kind == "sqlite":
        return lambda: []
    cluster = request.getfixturevalue("postgres_cluster")
    if index_kind == "balanced":
        request.getfixturevalue("nginx")
        return lambda: ["--index", cluster.new_database(), "--allowed-host", "127.0.0.1", BEHIND_NGINX]
    if index_kind == "s3":
        s3 = request.getfixturevalue("s3_server")
        return lambda: ["--index", cluster.new_database(), "--store", s3.new_bucket()]
    return lambda: ["--index", cluster.new_database()]


@pytest.fixture(scope="session")
def _logserver_session(tmp_path_factory, index_args):
    server = new_logserver(tmp_path_factory.mktemp("logs"), tmp_path_factory.mktemp("orlogserver"), index_args())
    server.start()
    yield server
    server.stop(timeout=5)


@pytest.fixture
def logserver(_logserver_session):
    """The session's logging server; a test may stop it, the next one gets it back."""
    _logserver_session.start()
    return _logserver_session


@pytest.fixture
def make_logserver(tmp_path, index_args):
    """Factory for logging servers of a test's own, started with these command-line
    arguments (e.g. "--stale-after", "1s"), each with its own log dir (and index); stopped
    at teardown."""
    started = []

    def factory(*args):
        work = tmp_path / ("logserver%d" % len(started))
        server = new_logserver(work / "logs", work, [*index_args(), *args]).start()
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop(timeout=5)


@pytest.fixture
def make_proxy(tmp_path, fake_upstream, logserver):
    """Factory for fresh proxies, each with its own config in tmp_path; all stopped at
    teardown.

    make_proxy(routes=None, logging=None, extra=None, gunicorn=False, *, config=None,
               workdir=None, args=(), env=None, workers=2, timeout=10) -> Proxy
    ``config`` (a dict or YAML text) replaces the built configuration entirely; ``workdir``
    (an earlier proxy's) starts it again where that one ran, with its spool.
    """
    started = []

    def factory(routes=None, logging=None, extra=None, gunicorn=False, *, config=None,
                workdir=None, args=(), env=None, workers=2, timeout=STARTUP_TIMEOUT):
        if config is None:
            config = build_config(fake_upstream.url, logserver.url, routes, logging, extra)
        workdir = workdir or tmp_path / ("proxy%d" % len(started))
        proxy = start_proxy(workdir, config, gunicorn, args, env, workers, timeout)
        started.append(proxy)
        return proxy

    yield factory
    for proxy in started:
        proxy.stop(timeout=15)


def _shared_proxy(cache, key, tmp_path_factory, fake_upstream, logserver, gunicorn):
    proxy = cache.get(key)
    if proxy is None or not proxy.alive:
        if proxy is not None:
            proxy.kill()
        config = build_config(fake_upstream.url, logserver.url)
        proxy = start_proxy(tmp_path_factory.mktemp("shared_" + key), config, gunicorn)
        cache[key] = proxy
    proxy.mark()
    return proxy


@pytest.fixture(scope="session")
def _shared_proxies(_fake_upstream_session, _logserver_session):
    # Depends on both so that the proxies are stopped before them at the end.
    cache = {}
    yield cache
    for proxy in cache.values():
        proxy.stop(timeout=15)


@pytest.fixture
def proxy(_shared_proxies, tmp_path_factory, fake_upstream, logserver):
    """A proxy with the default configuration, shared by the session (restarted if a
    test stopped it). Tests that stop it or need their own config use make_proxy."""
    return _shared_proxy(_shared_proxies, "pywsgi", tmp_path_factory, fake_upstream,
                         logserver, gunicorn=False)


@pytest.fixture(params=list(SERVERS))
def any_proxy(request, _shared_proxies, tmp_path_factory, fake_upstream, logserver):
    """The shared default proxy under its own server, then under gunicorn -k gevent, then
    under gunicorn with orproxy's worker."""
    return _shared_proxy(_shared_proxies, request.param, tmp_path_factory, fake_upstream,
                         logserver, gunicorn=SERVERS[request.param] or False)


@pytest.fixture(params=["pywsgi", "gunicorn-worker"])
def own_handler_proxy(request, _shared_proxies, tmp_path_factory, fake_upstream, logserver):
    """The shared default proxy under each server that uses orproxy's request handler."""
    return _shared_proxy(_shared_proxies, request.param, tmp_path_factory, fake_upstream,
                         logserver, gunicorn=SERVERS[request.param] or False)


# --------------------------------------------------------------------------------------
# Commands and config files

@pytest.fixture
def write_config(tmp_path):
    """write_config(data, name="config.yaml") -> Path: a dict is dumped as YAML, a str
    written as is, into tmp_path."""
    def write(data, name="config.yaml"):
        path = tmp_path / name
        if isinstance(data, str):
            path.write_text(data)
        else:
            path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path
    return write


@pytest.fixture
def run_cli(tmp_path):
    """run_cli(name, *args, cwd=tmp_path, env=None, timeout=15, input=None) ->
    CompletedProcess with returncode, stdout, stderr (text). ``name`` is a console
    script of the venv (orproxy, orlogserver, gunicorn) or an absolute path; ``env``
    adds to (None removes from) the environment. A command still running at the
    timeout is killed and fails the test."""
    def run(name, *args, cwd=None, env=None, timeout=15.0, input=None):
        return run_command([script(name), *args], cwd=cwd or tmp_path, env=child_env(env),
                           timeout=timeout, input=input)
    return run


# -- WebSocket (tests/test_websocket*.py) ----------------------------------------------------

@pytest.fixture(scope="session")
def ws_upstream(tmp_path_factory):
    upstream = WsUpstream(tmp_path_factory.mktemp("ws_upstream"))
    yield upstream
    upstream.process.stop(5)


@pytest.fixture(scope="module", params=list(SERVERS))
def ws_proxy(request, tmp_path_factory, ws_upstream, _logserver_session):
    """An orproxy with the ws routes (ws_helpers.ws_routes), under its own server, then
    gunicorn (1 worker, so that its sockets can be counted in one process)."""
    config = build_config("http://127.0.0.1:9", _logserver_session.url, ws_routes(ws_upstream.url))
    proxy = start_proxy(tmp_path_factory.mktemp("ws_" + request.param), config,
                        gunicorn=SERVERS[request.param] or False, workers=1)
    yield proxy
    proxy.stop(timeout=15)


def pytest_sessionfinish(session, exitstatus):
    # Belt and braces: nothing started by a fixture outlives the session.
    from helpers import _kill_leftovers
    _kill_leftovers()

