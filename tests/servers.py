"""The real programs as test processes on 127.0.0.1: the fake upstream, the logging server
(alone, or two behind nginx), the proxy (its own server or gunicorn), and their configs.
conftest.py's fixtures start them; tests that need their own import them from here."""
import copy
import json
import sys
import time
from pathlib import Path

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

    def stored(self):
        """Where its bodies are if not in its log dir: an ObjectStoreFiles (tests/stored.py)."""
        if "--store" not in self.args or not self.args[self.args.index("--store") + 1].startswith("s3://"):
            return None
        from stored import ObjectStoreFiles
        return ObjectStoreFiles(self.args[self.args.index("--store") + 1], self.args[self.args.index("--index") + 1])

    def files(self, uuid):
        """The files in log_dir whose names contain the first 8 characters of ``uuid``
        (with --store, the exchange's parts and document, read as the server stored them)."""
        key = str(uuid)[:8]
        if self.stored() is not None:
            return self.stored().files(uuid)
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
            BALANCERS.append(nginx)  # stopped at the session's end (the proxies keep its URL)
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


BALANCERS = []  # the nginx of each BalancedLogServer, stopped at the session's end (conftest.py)
BEHIND_NGINX = "--behind-nginx"  # in index_args' list (never passed on): a BalancedLogServer


def new_logserver(log_dir, workdir, args=()):
    """The logging server of these arguments: a BalancedLogServer for the "balanced" kind."""
    if BEHIND_NGINX in args:
        return BalancedLogServer(log_dir, workdir, [a for a in args if a != BEHIND_NGINX])
    return LogServer(log_dir, workdir, args)


def seeded_logserver(log_dir, workdir, args=()):
    """A logging server of these arguments over the exchanges seeded in `log_dir`: with
    --store, `orlogserver migrate` copies them into the object store first (and the server
    gets a log dir of its own)."""
    args = list(args)
    if "--store" not in args:
        return new_logserver(log_dir, workdir, args)
    result = run_command([script("orlogserver"), "migrate", "--from", "file:%s" % log_dir,
                          "--to", args[args.index("--store") + 1], "--index", args[args.index("--index") + 1]],
                         cwd=str(workdir), timeout=300)
    assert result.returncode == 0, result.stderr
    return new_logserver(Path(workdir) / "local", workdir, args)


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
