"""Test helpers: real server processes, command runs, plain HTTP, and the byte pattern.

``ServerProcess`` starts a command on 127.0.0.1 with its output going to files (no pipe
to fill up, nothing lost if the test process is monkey-patched), waits until it is ready
and, if it dies or never becomes ready, raises with everything it printed. Processes run
in their own session so that a forced stop also takes gunicorn's workers; every live
process is killed at interpreter exit whatever happened to the test that started it.
"""
import atexit
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from orproxy.testing.llm_api import stream_piece, stream_text
from orproxy.testing.pattern import pattern_bytes, pattern_sha256

__all__ = ["VENV_BIN", "script", "child_env", "free_port", "port_open", "wait_until",
           "ServerProcess", "start_gunicorn", "StartupError", "run_command", "http_request", "send_exactly", "http_json",
           "pattern_bytes", "pattern_sha256", "stream_piece", "stream_text"]

VENV_BIN = Path(sys.executable).parent
LISTENING_RE = re.compile(r"listening on (https?://[^\s]+)")
GUNICORN_LISTENING_RE = re.compile(r"Listening at: (https?://[^\s]+)")


def script(name):
    """The console script ``name`` (orproxy, orlogserver, gunicorn) of this venv."""
    if os.path.isabs(name):
        return name
    return str(VENV_BIN / name)


def child_env(extra=None):
    """The environment for child processes: unbuffered output, no proxy variables."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        for key, value in extra.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = str(value)
    return env


def free_port(host="127.0.0.1"):
    """A port that was free a moment ago (for servers that cannot take port 0)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout=5.0, interval=0.01, message="condition"):
    """Poll ``predicate()`` until it returns something truthy; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, message))
        time.sleep(interval)


def port_open(host, port):
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class StartupError(RuntimeError):
    pass


_LIVE = set()


@atexit.register
def _kill_leftovers():
    for proc in list(_LIVE):
        proc.kill()


class ServerProcess(object):
    """A server command run as a child process, its output captured to files.

    ``ready`` says how to know it is up: ``"listening"`` waits for a line containing
    ``listening on http://...`` on stdout or stderr (and takes the URL from it);
    ``("port", host, port)`` waits until the port accepts connections; a callable gets
    the process and returns a URL (or None to keep waiting).
    """

    def __init__(self, name, argv, workdir, env=None, cwd=None):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cwd = str(cwd or workdir)
        self.env = env if env is not None else child_env()
        self.stdout_path = self.workdir / ("%s.stdout" % name)
        self.stderr_path = self.workdir / ("%s.stderr" % name)
        self.proc = None
        self.url = None
        self._start_offsets = (0, 0)

    # -- output -------------------------------------------------------------------------

    def _read(self, path, since=0):
        try:
            with open(path, "rb") as f:
                f.seek(since)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def stdout_text(self, since=0):
        return self._read(self.stdout_path, since)

    def stderr_text(self, since=0):
        return self._read(self.stderr_path, since)

    def output_sizes(self):
        """(stdout, stderr) sizes now: offsets for ``stdout_text(since=...)``."""
        return tuple(p.stat().st_size if p.exists() else 0
                     for p in (self.stdout_path, self.stderr_path))

    def describe(self):
        out_off, err_off = self._start_offsets
        return ("--- command: %s\n--- exit code: %s\n--- stdout:\n%s\n--- stderr:\n%s"
                % (" ".join(self.argv), self.returncode,
                   self.stdout_text(out_off)[-20000:], self.stderr_text(err_off)[-20000:]))

    def wait_for_output(self, pattern, timeout=5.0, stream="stdout", since=None):
        """Wait until ``pattern`` (a regex) appears in the output; return the match."""
        regex = re.compile(pattern)
        read = self.stdout_text if stream == "stdout" else self.stderr_text
        if since is None:
            since = self._start_offsets[0 if stream == "stdout" else 1]

        def found():
            return regex.search(read(since))
        try:
            return wait_until(found, timeout, 0.01, "%r in %s %s" % (pattern, self.name, stream))
        except AssertionError as exc:
            raise AssertionError("%s\n%s" % (exc, self.describe())) from None

    # -- life cycle ---------------------------------------------------------------------

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    @property
    def start_offsets(self):
        """(stdout, stderr) sizes when the current run started."""
        return self._start_offsets

    @property
    def returncode(self):
        return self.proc.poll() if self.proc else None

    @property
    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self, ready="listening", timeout=10.0):
        """Start the command and wait until it is ready; return its URL."""
        self._start_offsets = self.output_sizes()
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL, cwd=self.cwd,
                                         env=self.env, start_new_session=True)
        _LIVE.add(self)
        deadline = time.monotonic() + timeout
        while True:
            url = self._check_ready(ready)
            if url:
                self.url = url
                return url
            if self.proc.poll() is not None:
                _LIVE.discard(self)
                raise StartupError("%s exited during startup\n%s" % (self.name, self.describe()))
            if time.monotonic() >= deadline:
                self.kill()
                raise StartupError("%s not ready after %.0fs\n%s"
                                   % (self.name, timeout, self.describe()))
            time.sleep(0.01)

    def _check_ready(self, ready):
        if ready == "listening":
            out_off, err_off = self._start_offsets
            m = (LISTENING_RE.search(self.stdout_text(out_off))
                 or LISTENING_RE.search(self.stderr_text(err_off)))
            if not m:
                return None
            url = m.group(1).rstrip("/")
            parts = urlsplit(url)
            if parts.hostname in ("0.0.0.0", "::", "localhost"):
                url = "%s://127.0.0.1:%d" % (parts.scheme, parts.port)
            return url
        if isinstance(ready, tuple) and ready[0] == "port":
            _, host, port = ready
            return "http://%s:%d" % (host, port) if port_open(host, port) else None
        return ready(self)

    def send_signal(self, sig):
        if self.alive:
            self.proc.send_signal(sig)

    def stop(self, timeout=15.0, sig=signal.SIGTERM):
        """Ask it to stop (SIGTERM), wait up to ``timeout``, then kill; return exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        return self.kill()

    def kill(self):
        """SIGKILL the process and its session (gunicorn workers too); return exit code."""
        if self.proc is None:
            return None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        _LIVE.discard(self)
        return self.proc.returncode


def run_command(argv, cwd=None, env=None, timeout=15.0, input=None):
    """Run a command to completion; return CompletedProcess (text stdout/stderr).

    A command still running after ``timeout`` is killed and reported as a failure (a
    config-error test whose command starts serving instead would otherwise hang).
    """
    argv = [str(a) for a in argv]
    proc = subprocess.Popen(argv, cwd=cwd, env=env if env is not None else child_env(),
                            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, text=True)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
        raise AssertionError("%s still running after %.0fs\n--- stdout:\n%s\n--- stderr:\n%s"
                             % (" ".join(argv), timeout, out, err)) from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


# -- plain HTTP without requests: adds only Host (and what you pass) --------------------

def http_request(method, url, body=None, headers=None, timeout=10.0):
    """One request over a fresh connection; return (status, [(name, value)], body).
    A body gets a Content-Length unless ``headers`` (a dict) frame it already."""
    parts = urlsplit(url)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    headers = dict(headers or {})
    if body is not None and not any(k.lower() in ("content-length", "transfer-encoding")
                                    for k in headers):
        headers["Content-Length"] = str(len(body))
    return send_exactly(parts.hostname, parts.port, method, target, headers.items(), body, timeout)


def send_exactly(host, port, method, target, headers=(), body=None, timeout=10.0):
    """One request with exactly these header lines (pairs, repeats allowed) and this raw
    target; http.client adds only Host (first). Returns (status, headers list, body)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.getheaders(), resp.read()
    finally:
        conn.close()


def http_json(method, url, payload=None, headers=None, timeout=10.0):
    """Send ``payload`` as JSON (if given) and return (status, decoded JSON body)."""
    body = None
    headers = dict(headers or {})
    if payload is not None:
        body = json.dumps(payload).encode()
        headers.setdefault("Content-Type", "application/json")
    status, _, data = http_request(method, url, body, headers, timeout)
    return status, json.loads(data) if data else None


def join_messages(pieces):
    """WebSocket messages from logged (opcode, payload, more) pieces: the `more` pieces of
    a text or binary message joined; control frames as they are."""
    out, parts = [], []
    for opcode, payload, more in pieces:
        if opcode in ("text", "binary"):
            parts.append(payload)
            if not more:
                out.append((opcode, b"".join(parts)))
                parts = []
        else:
            out.append((opcode, payload))
    return out


_GUNICORN_HOOKS = '''\
import sys


def post_worker_init(worker):
    # The worker has loaded the app: start_gunicorn waits for one line per worker.
    print("orproxy-test: worker %d ready" % worker.pid, file=sys.stderr, flush=True)
'''


def start_gunicorn(name, app, workdir, worker="gevent", workers=2, args=(), env=None,
                   timeout=10.0):
    """Start ``gunicorn -k worker -w workers app`` on 127.0.0.1 port 0 and wait until every
    worker has loaded the app; return the ServerProcess (its ``url`` set).

    Port 0, read back from gunicorn's "Listening at" line: a port chosen beforehand may be
    taken by then, and the test would talk to whoever took it."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    hooks = workdir / "gunicorn_hooks.py"
    hooks.write_text(_GUNICORN_HOOKS)
    argv = [script("gunicorn"), "-k", worker, "-w", str(workers), "--no-control-socket",
            "-b", "127.0.0.1:0", "-c", str(hooks), *args, app]
    process = ServerProcess(name, argv, workdir, env=child_env(env))

    def ready(proc):
        err = proc.stderr_text(proc.start_offsets[1])
        listening = GUNICORN_LISTENING_RE.search(err)
        if listening and err.count("orproxy-test: worker ") >= workers:
            return listening.group(1).rstrip("/")
        return None
    process.start(ready, timeout)
    return process


def socket_inodes(pid):
    """The inodes of the sockets process ``pid`` holds open (from /proc/PID/fd)."""
    inodes = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes
