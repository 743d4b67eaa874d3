"""What the benchmark measures against: the fake upstream itself (direct), orproxy with
its logging server, nginx as a plain reverse proxy, and with --peers two other logging
proxies (claude-tap, mitmdump). Each target starts its processes, says where to send
requests, and names the processes whose memory is reported.
A target that cannot start is kept with a note, and the scenarios skip it.
"""
import os
import shutil
import signal
import subprocess
import time

from bench.procs import Proc, StartError, free_port, tree

API = "/v1"  # every request goes to {target}/v1/...; the proxy route is source "/v1/"
# The peers' own venv (run.py --install-peers): their dependencies stay out of the project's.
PEERS_VENV = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".peers-venv")


class Upstream:
    """The fake OpenAI-compatible upstream, shared by every target."""

    def __init__(self, argv, ctx):
        self.proc = Proc("upstream", argv + ["--port", "0"], ctx.workdir,
                         cpus=ctx.cpus_client, cwd=ctx.repo)

    def start(self):
        self.proc.start()
        self.port = self.proc.wait_listening()
        self.url = "http://127.0.0.1:%d" % self.port
        return self


class Target:
    name = "?"
    host = "127.0.0.1"
    is_proxy = True       # gets ratio columns against direct and nginx
    has_logserver = False
    scenarios = None      # names of the scenarios it takes part in; None: all

    def __init__(self, ctx):
        self.ctx = ctx
        self.port = None
        self.available = False
        self.note = ""
        self.version = None

    def start(self, upstream):
        raise NotImplementedError

    def stop(self):
        pass

    def roles(self):
        """{'proxy': Proc, 'logserver': Proc}: processes whose memory is reported."""
        return {}

    def describe(self):
        return {"available": self.available, "note": self.note, "port": self.port,
                "version": self.version}


class Direct(Target):
    name = "direct"
    is_proxy = False

    def start(self, upstream):
        self.port = upstream.port
        self.available = True
        self.note = "the fake upstream itself"


CONFIG = """\
server:
  host: "127.0.0.1"
  port: 0
logging:
  console: false
  server_url: "http://127.0.0.1:%(logport)d"
  enabled: true
routes:
  - source: "/v1/"
    destination: "%(upstream)s/"
    name: "bench"
"""


class Orproxy(Target):
    """orproxy + orlogserver, both pinned to the proxy CPU, logging on, logs in log_dir."""

    name = "orproxy"
    has_logserver = True

    def __init__(self, ctx, proxy_argv, logserver_argv):
        super().__init__(ctx)
        self.proxy_argv = proxy_argv
        self.logserver_argv = logserver_argv
        self.log_dir = os.path.join(ctx.log_root, "orproxy-logs")
        self.config_path = os.path.join(ctx.workdir, "orproxy.yaml")
        self.proxy = None
        self.logserver = None
        self.logport = None

    def _logserver_proc(self, port):
        return Proc("orlogserver", self.logserver_argv + [
            "--host", "127.0.0.1", "--port", str(port), "--log-dir", self.log_dir],
            self.ctx.workdir, cpus=self.ctx.cpus_proxy, cwd=self.ctx.workdir)

    def start(self, upstream):
        for argv in (self.proxy_argv, self.logserver_argv):
            if not shutil.which(argv[0]) and not os.path.exists(argv[0]):
                self.note = "not built yet (%s missing)" % argv[0]
                return
        os.makedirs(self.log_dir, exist_ok=True)
        try:
            self.logserver = self._logserver_proc(0).start()
            self.logport = self.logserver.wait_listening()
            with open(self.config_path, "w") as f:
                f.write(CONFIG % {"logport": self.logport, "upstream": upstream.url})
            # cwd is the work dir so a relative logging.file or logs/ never lands in the repo
            self.proxy = Proc("orproxy", self.proxy_argv + [
                "--config", self.config_path, "--port", "0"],
                self.ctx.workdir, cpus=self.ctx.cpus_proxy, cwd=self.ctx.workdir).start()
            self.port = self.proxy.wait_listening()
        except StartError as e:
            self.note = "failed to start: %s" % e
            self.stop()
            return
        self.available = True
        self.note = "logging on, logging server on the same CPU"
        self.version = _version(self.proxy_argv)

    def stop(self):
        for p in (self.proxy, self.logserver):
            if p is not None:
                p.stop()

    def roles(self):
        return {"proxy": self.proxy, "logserver": self.logserver}

    # -- the logging server's misfortunes (scenario "logdown") --------------------------
    def kill_logserver(self):
        self.logserver.signal(signal.SIGKILL)
        self.logserver.popen.wait(5)

    def restart_logserver(self):
        """Start it again on the same port, so the proxy's server_url still points at it."""
        proc = self._logserver_proc(self.logport)
        skip = len(proc.output())  # same output file: look past the first run's lines
        self.logserver = proc.start()
        self.logserver.wait_listening(skip=skip)

    def stall_logserver(self):
        self.logserver.signal(signal.SIGSTOP)

    def resume_logserver(self):
        self.logserver.signal(signal.SIGCONT)


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes %(workers)d;
pid %(dir)s/nginx.pid;
error_log %(dir)s/error.log warn;
worker_rlimit_nofile %(nofile)d;
events { worker_connections %(nofile)d; }  # scenario streams10k: 2 per stream
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path %(dir)s/client_body;
    proxy_temp_path %(dir)s/proxy_temp;
    fastcgi_temp_path %(dir)s/fastcgi_temp;
    uwsgi_temp_path %(dir)s/uwsgi_temp;
    scgi_temp_path %(dir)s/scgi_temp;
    upstream fake { server 127.0.0.1:%(upstream)d; keepalive 128; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:%(port)d;
        client_max_body_size 0;
        location / {
            proxy_pass http://fake;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;          # SSE and bulk bodies pass as they come
            proxy_request_buffering off;  # uploads stream too
            proxy_buffer_size 64k;        # unbuffered proxying reads this much at a time
            proxy_buffers 8 64k;
            proxy_busy_buffers_size 128k;
            client_body_buffer_size 64k;
            proxy_read_timeout 600s;
        }
    }
}
"""


class Gunicorn:
    """orproxy under `gunicorn -k WORKER_CLASS -w N --no-control-socket
    'orproxy.wsgi:proxy_app()'` (config from ORPROXY_CONFIG) with its own `orlogserver`
    (which lowers its own priority), both on every CPU of the run: not a column of its
    own, scenario gunicorn compares it with the one-process orproxy target."""

    host = "127.0.0.1"

    def __init__(self, ctx, gunicorn_argv, logserver_argv, workers=2, worker_class="gevent"):
        self.ctx = ctx
        self.gunicorn_argv = gunicorn_argv
        self.logserver_argv = logserver_argv
        self.workers = workers
        self.worker_class = worker_class
        self.name = "gunicorn-" + worker_class.rsplit(".", 1)[0].replace(".", "-")
        self.log_dir = os.path.join(ctx.log_root, self.name + "-logs")
        self.config_path = os.path.join(ctx.workdir, self.name + ".yaml")
        self.proc = None
        self.logserver = None
        self.port = None

    def procs(self):
        return [p for p in (self.proc, self.logserver) if p is not None]

    def start(self, upstream, timeout=60.0):
        """Start both; return once every worker has loaded the app (bounded)."""
        if not shutil.which(self.gunicorn_argv[0]) and not os.path.exists(self.gunicorn_argv[0]):
            raise StartError("%s missing" % self.gunicorn_argv[0])
        os.makedirs(self.log_dir, exist_ok=True)
        cpus = self.ctx.cpus_all
        self.logserver = Proc(self.name + "-orlogserver", self.logserver_argv + [
            "--host", "127.0.0.1", "--port", "0", "--log-dir", self.log_dir],
            self.ctx.workdir, cpus=cpus, cwd=self.ctx.workdir).start()
        self.ctx.extra_procs.append(self.logserver)
        logport = self.logserver.wait_listening()
        with open(self.config_path, "w") as f:
            f.write(CONFIG % {"logport": logport, "upstream": upstream.url})
        port = free_port()
        env = dict(os.environ, ORPROXY_CONFIG=self.config_path)
        self.proc = Proc(self.name, self.gunicorn_argv + [
            "-k", self.worker_class, "-w", str(self.workers), "--no-control-socket",
            "-b", "127.0.0.1:%d" % port, "--graceful-timeout", "2",
            "orproxy.wsgi:proxy_app()"],
            self.ctx.workdir, cpus=cpus, env=env, cwd=self.ctx.workdir).start()
        self.ctx.extra_procs.append(self.proc)
        self.port = self.proc.wait_port(port, timeout)
        # gunicorn binds before its workers load the app: wait for each worker's line
        deadline = time.monotonic() + timeout
        while self.proc.output().count(b"Booting worker") < self.workers:
            if not self.proc.alive() or time.monotonic() > deadline:
                raise StartError("gunicorn workers did not boot:\n%s" % self.proc.tail())
            time.sleep(0.1)
        return self

    def worker_pids(self):
        return [p for p in tree(self.proc.pid) if p != self.proc.pid] if self.proc else []

    def stop(self):
        for p in (self.proc, self.logserver):
            if p is not None:
                p.stop()


class OneProcess(Target):
    """A target that is one process of its own (nginx, a peer), started on `port`."""

    def __init__(self, ctx):
        super().__init__(ctx)
        self.proc = None

    def launch(self, proc, port):
        """Start `proc` and wait for `port`; True once up, else the note says why."""
        self.proc = proc
        try:
            self.proc.start()
            self.port = self.proc.wait_port(port)
        except StartError as e:
            self.note = "failed to start: %s" % e
            self.stop()
            return False
        self.available = True
        return True

    def stop(self):
        if self.proc is not None:
            self.proc.stop()

    def roles(self):
        return {"proxy": self.proc}


def nginx_binary():
    """nginx's path, or None: Debian puts it in /usr/sbin, often not on a user's PATH."""
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


class Nginx(OneProcess):
    """nginx, one worker, pinned to the proxy CPU, streaming both ways, no access log.
    Scenario gunicorn also runs one with a worker per core on every CPU (`workers`, `cpus`)."""

    name = "nginx"

    def __init__(self, ctx, workers=1, cpus=None):
        super().__init__(ctx)
        self.workers = workers
        self.cpus = cpus or ctx.cpus_proxy

    def start(self, upstream):
        binary = nginx_binary()
        if not binary:
            self.note = "not installed (run with --install, or apt-get install nginx)"
            return
        d = os.path.join(self.ctx.workdir, "nginx-w%d" % self.workers)
        os.makedirs(d, exist_ok=True)
        port = free_port()
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            # as many connections as it may open files (the harness's raised limit)
            f.write(NGINX_CONF % {"dir": d, "upstream": upstream.port, "port": port, "workers": self.workers,
                                  "nofile": self.ctx.nofile[0] if self.ctx.nofile else 4096})
        if not self.launch(Proc(os.path.basename(d), [binary, "-p", d, "-c", conf, "-e",
                                                      os.path.join(d, "error.log")],
                                self.ctx.workdir, cpus=self.cpus, cwd=d), port):
            return
        self.version = _version([binary])
        self.note = "plain reverse proxy, %d worker%s, no access log" % (
            self.workers, "" if self.workers == 1 else "s")


class Peer(OneProcess):
    """Another proxy from the peers venv, one process pinned to the proxy CPU, run as its
    user would run it. A reference column like nginx (no ratio columns of its own), in
    the scenarios of plain chat completions only: the others' paths and bodies (SSE,
    GiB transfers, 10,000 streams) test what these tools were not made for."""

    is_proxy = False
    scenarios = ("latency", "rps")
    binary = "?"  # in the peers venv's bin/
    about = ""    # its note once up

    def argv(self, upstream, port, d):
        raise NotImplementedError

    def env(self, d):
        return None

    def start(self, upstream):
        exe = os.path.join(PEERS_VENV, "bin", self.binary)
        if not os.path.exists(exe):
            self.note = "not installed (run with --install-peers, or make bench-peers)"
            return
        d = os.path.join(self.ctx.workdir, self.name)
        os.makedirs(d, exist_ok=True)
        port = free_port()
        if not self.launch(Proc(self.name, [exe] + self.argv(upstream, port, d), self.ctx.workdir,
                                cpus=self.ctx.cpus_proxy, env=self.env(d), cwd=d), port):
            return
        self.note = self.about
        self.version = _version([exe])


class ClaudeTap(Peer):
    """claude-tap's reverse proxy alone (--tap-no-launch: no agent CLI started, no
    dashboard), its upstream given by --tap-target; it records every exchange (headers,
    parsed bodies) and two log lines in a SQLite file, kept on the run dir's tmpfs."""

    name = "claude-tap"
    binary = "claude-tap"
    about = "reverse proxy, every exchange recorded in SQLite (on tmpfs)"

    def argv(self, upstream, port, d):
        return ["--tap-no-launch", "--tap-no-live", "--tap-no-open", "--tap-host", "127.0.0.1",
                "--tap-port", str(port), "--tap-target", upstream.url, "--tap-output-dir", d]

    def env(self, d):
        return dict(os.environ, CLOUDTAP_DB=os.path.join(d, "traces.db"))


class Mitmdump(Peer):
    """mitmproxy's mitmdump in reverse-proxy mode, quiet, with its defaults otherwise:
    bodies buffered whole, no flow file (-w) and no flow kept once answered (only
    mitmweb and the console keep a list of flows); its CA files in the run dir, not ~."""

    name = "mitmdump"
    binary = "mitmdump"
    about = "reverse proxy, quiet, flows neither saved nor kept"

    def argv(self, upstream, port, d):
        return ["--mode", "reverse:" + upstream.url, "--listen-host", "127.0.0.1",
                "--listen-port", str(port), "-q", "--set", "confdir=" + d]


def _version(argv):
    try:
        out = subprocess.run(argv[:1] + ["-v" if "nginx" in argv[0] else "--version"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0] if text else None
