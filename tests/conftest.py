"""Fixtures that run the real programs as processes on 127.0.0.1.

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
import copy
import json
import os
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import (ServerProcess, StartupError, child_env, http_json, run_command, script,
                     start_gunicorn, wait_until)

STARTUP_TIMEOUT = 10.0


# --------------------------------------------------------------------------------------
# Fake upstream

class SessionServer(object):
    """A server process for the whole session, started again on the same port after a
    test stopped it (the proxies keep its URL)."""

    name = "server"

    def __init__(self, workdir):
        self.workdir = Path(workdir)
        self.port = 0
        self.process = None
        self.url = None

    def argv(self):
        raise NotImplementedError

    def start(self, timeout=STARTUP_TIMEOUT):
        """Start, or restart on the same port; a running one is left as it is."""
        if self.alive:
            return self
        self.process = ServerProcess(self.name, self.argv(), self.workdir)
        self.url = _start_on_port(self.process, self.port, timeout)
        self.port = int(self.url.rsplit(":", 1)[1])
        return self

    @property
    def alive(self):
        return self.process is not None and self.process.alive

    def stop(self, timeout=5.0):
        """SIGTERM, wait up to ``timeout``, then SIGKILL."""
        return self.process.stop(timeout) if self.process else None

    def stdout_text(self):
        return self.process.stdout_text() if self.process else ""

    def stderr_text(self):
        return self.process.stderr_text() if self.process else ""


class FakeUpstream(SessionServer):
    """The fake upstream process; see orproxy/testing/fake_upstream.py for its endpoints."""

    name = "fake_upstream"

    def argv(self):
        return [sys.executable, "-m", "orproxy.testing.fake_upstream",
                "--host", "127.0.0.1", "--port", str(self.port)]

    def stats(self):
        status, data = http_json("GET", self.url + "/__control/stats")
        assert status == 200, data
        return data

    def reset_stats(self):
        return http_json("POST", self.url + "/__control/reset")[1]

    def wait_stats(self, predicate, timeout=5.0):
        """Poll the stats until ``predicate(stats)`` is true; return those stats."""
        def check():
            stats = self.stats()
            return stats if predicate(stats) else None
        return wait_until(check, timeout, 0.01, "fake upstream stats condition")


def _start_on_port(process, port, timeout=STARTUP_TIMEOUT):
    """Start ``process``; on a fixed port (a restart) retry while the port is still busy."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return process.start("listening", timeout=max(1.0, deadline - time.monotonic()))
        except StartupError:
            if not port or time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


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


# --------------------------------------------------------------------------------------
# Logging server

class LogServer(SessionServer):
    """The orlogserver process and helpers to find what it wrote."""

    name = "orlogserver"

    def __init__(self, log_dir, workdir, args=()):
        super().__init__(workdir)
        self.log_dir = Path(log_dir)
        self.args = list(args)

    def argv(self):
        return [script("orlogserver"), "--host", "127.0.0.1", "--port", str(self.port),
                "--log-dir", str(self.log_dir), *self.args]

    def stop(self, timeout=15.0):
        """SIGTERM, wait up to ``timeout`` (it lets open streams finish), then SIGKILL."""
        return super().stop(timeout)

    def kill(self):
        """SIGKILL at once: the logging server vanishes mid-stream."""
        return self.process.kill() if self.process else None

    # -- files ----------------------------------------------------------------------------

    def files(self, uuid):
        """The files in log_dir whose names contain the first 8 characters of ``uuid``."""
        key = str(uuid)[:8]
        if not self.log_dir.is_dir():
            return []
        return sorted(p for p in self.log_dir.iterdir() if key in p.name)

    def file(self, uuid, kind):
        """The ``kind`` (request, response, metadata) file of ``uuid``, or None."""
        marker = "_%s_%s." % (str(uuid)[:8], kind)
        for path in self.files(uuid):
            if marker in path.name:
                return path
        return None

    def wait_for_file(self, uuid, kind, min_size=1, timeout=5.0, predicate=None):
        """Poll until the ``kind`` file of ``uuid`` exists with at least ``min_size``
        bytes (and ``predicate(path)`` holds, if given); return its Path."""
        def check():
            path = self.file(uuid, kind)
            if path is None:
                return None
            try:
                if path.stat().st_size < min_size:
                    return None
            except FileNotFoundError:
                return None
            if predicate is not None and not predicate(path):
                return None
            return path
        try:
            return wait_until(check, timeout, 0.01, "%s file of %s" % (kind, uuid))
        except AssertionError as exc:
            raise AssertionError("%s; files for it: %s; logserver output:\n%s%s" % (
                exc, [p.name for p in self.files(uuid)], self.stdout_text()[-4000:],
                self.stderr_text()[-4000:])) from None

    def read(self, uuid, kind, **wait):
        """The bytes of the ``kind`` file of ``uuid`` (waiting for it like wait_for_file)."""
        return self.wait_for_file(uuid, kind, **wait).read_bytes()

    def wait_for_metadata(self, uuid, predicate=None, timeout=5.0):
        """Poll the metadata JSON of ``uuid`` until it parses (and ``predicate(data)``
        holds, if given); return it as a dict."""
        box = {}

        def check(path):
            try:
                data = json.loads(path.read_text())
            except (ValueError, OSError):
                return False
            if predicate is not None and not predicate(data):
                return False
            box["data"] = data
            return True
        self.wait_for_file(uuid, "metadata", timeout=timeout, predicate=check)
        return box["data"]


class BalancedLogServer(LogServer):
    """Two orlogserver processes on one log dir and one index behind nginx, used as one
    logging server: `url` is nginx's, whose port stays across a stop and a start, and
    `process` is the first server's. The "balanced" index kind runs the API and UI suites
    through it, so that any of the two may take any batch and answer any call."""

    def __init__(self, log_dir, workdir, args=()):
        self.servers = [LogServer(log_dir, Path(workdir) / f"server{n}", args) for n in (1, 2)]
        super().__init__(log_dir, workdir, args)
        self.balancer = None

    @property
    def args(self):
        return self.servers[0].args

    @args.setter
    def args(self, value):  # a test that restarts it with other arguments restarts both
        for server in self.servers:
            server.args = list(value)

    def start(self, timeout=STARTUP_TIMEOUT):
        for server in self.servers:
            server.start(timeout)
        if self.balancer is None:
            from orproxy.testing.balancer import Balancer
            nginx = Balancer.start([server.port for server in self.servers])
            self.balancer = nginx.__enter__()
            _BALANCERS.append(nginx)  # stopped at the session's end (the proxies keep its URL)
            self.port, self.url = self.balancer.port, self.balancer.url
        return self

    @property
    def process(self):
        return self.servers[0].process if hasattr(self, "servers") else None

    @process.setter
    def process(self, value):
        pass  # (SessionServer's own; this one has none)

    @property
    def alive(self):
        return all(server.alive for server in self.servers)

    def stop(self, timeout=15.0):
        for server in self.servers:
            server.stop(timeout)

    def kill(self):
        for server in self.servers:
            server.kill()

    def stdout_text(self):
        return "".join(server.stdout_text() for server in self.servers)

    def stderr_text(self):
        return "".join(server.stderr_text() for server in self.servers)


_BALANCERS = []
BEHIND_NGINX = "--behind-nginx"  # in index_args' list (never passed on): a BalancedLogServer


def new_logserver(log_dir, workdir, args=()):
    """The logging server of these arguments: a BalancedLogServer for the "balanced" kind."""
    if BEHIND_NGINX in args:
        return BalancedLogServer(log_dir, workdir, [a for a in args if a != BEHIND_NGINX])
    return LogServer(log_dir, workdir, args)


@pytest.fixture(scope="session", autouse=True)
def _stop_balancers():
    yield
    while _BALANCERS:
        _BALANCERS.pop().__exit__(None, None, None)


# The index: SQLite in the log dir, or PostgreSQL (`--index`), or PostgreSQL with two
# servers behind nginx (test_scaleout.py's setup). A module marked
# `pytestmark = pytest.mark.both_indexes` runs its logging servers with each.
INDEX_KINDS = ("sqlite", "postgresql", "balanced")


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


# --------------------------------------------------------------------------------------
# Proxies

# How a proxy is served: its own command, or gunicorn with this worker class (-k)
SERVERS = {"pywsgi": None, "gunicorn": "gevent", "gunicorn-worker": "orproxy.worker.GeventWorker"}

class Proxy(object):
    """An orproxy process: its own server, or gunicorn (`gunicorn` is then its -k)."""

    def __init__(self, process, config_path, gunicorn, config):
        self.process = process
        self.config_path = Path(config_path)
        self.config = config
        self.gunicorn = gunicorn
        self.url = process.url
        self.port = int(self.url.rsplit(":", 1)[1])
        self._since = process.start_offsets  # a proxy restarted in the same workdir: its own output

    @property
    def workdir(self):
        """Its directory: config.yaml, its output, and its spool (.orproxy-spool)."""
        return self.config_path.parent

    @property
    def pid(self):
        return self.process.pid

    @property
    def alive(self):
        return self.process.alive

    def mark(self):
        """From now on stdout_text()/stderr_text() show only newer output."""
        self._since = self.process.output_sizes()

    def stdout_text(self):
        return self.process.stdout_text(self._since[0])

    def stderr_text(self):
        return self.process.stderr_text(self._since[1])

    def wait_for_stdout(self, pattern, timeout=5.0):
        """Wait for a regex in the stdout (since the mark); return the match."""
        return self.process.wait_for_output(pattern, timeout, "stdout", self._since[0])

    def send_signal(self, sig):
        self.process.send_signal(sig)

    def stop(self, timeout=15.0):
        """SIGTERM, wait up to ``timeout``, then SIGKILL; return the exit code."""
        return self.process.stop(timeout)

    def kill(self):
        return self.process.kill()


def default_routes(upstream_url):
    return [
        {"source": "/api/v1/", "destination": upstream_url + "/", "name": "openrouter"},
        {"source": "/v1/", "destination": upstream_url + "/", "name": "fake"},
        {"source": "/openrouter/", "destination": upstream_url + "/api/v1/", "name": "prefixed"},
    ]


def build_config(upstream_url, logserver_url, routes=None, logging=None, extra=None):
    """The configuration dict: defaults, ``logging`` merged into the logging section
    (a None value removes a key), ``extra`` merged per top-level section (dicts one
    level deep, anything else replaced; None removes a section)."""
    config = {
        "server": {"host": "127.0.0.1", "port": 0},
        "logging": {"console": True, "server_url": logserver_url, "enabled": True},
        "routes": copy.deepcopy(routes) if routes is not None else default_routes(upstream_url),
    }
    for key, value in (logging or {}).items():
        if value is None:
            config["logging"].pop(key, None)
        else:
            config["logging"][key] = value
    for section, value in (extra or {}).items():
        if value is None:
            config.pop(section, None)
        elif isinstance(value, dict) and isinstance(config.get(section), dict):
            for key, item in value.items():
                if item is None:
                    config[section].pop(key, None)
                else:
                    config[section][key] = item
        else:
            config[section] = value
    return config


def start_proxy(workdir, config, gunicorn=False, args=(), env=None, workers=2,
                timeout=STARTUP_TIMEOUT, name="orproxy"):
    """Write ``config`` (a dict, or YAML text) to workdir and start the proxy on it, under
    gunicorn when ``gunicorn`` is true: True for -k gevent, else the worker class."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.yaml"
    if isinstance(config, str):
        config_path.write_text(config)
    else:
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    if not gunicorn:
        argv = [script("orproxy"), "--config", config_path, "--host", "127.0.0.1",
                "--port", "0", *args]
        process = ServerProcess(name, argv, workdir, env=child_env(env))
        process.start("listening", timeout)
        return Proxy(process, config_path, False, config)

    worker = "gevent" if gunicorn is True else gunicorn
    process = start_gunicorn(name + "-gunicorn", "orproxy.wsgi:proxy_app()", workdir, worker,
                             workers, ["--graceful-timeout", "10", *args],
                             dict(env or {}, ORPROXY_CONFIG=config_path), timeout)
    return Proxy(process, config_path, worker, config)


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


def pytest_sessionfinish(session, exitstatus):
    # Belt and braces: nothing started by a fixture outlives the session.
    from helpers import _kill_leftovers
    _kill_leftovers()

