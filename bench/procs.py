"""Child processes of the benchmark: start pinned to CPUs, wait until listening, measure
memory from /proc, stop. Every wait here is bounded by a deadline.
"""
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import gevent

LISTEN_RE = re.compile(rb"listening on http://([0-9.]+):(\d+)")


class StartError(RuntimeError):
    """A child did not come up; the message carries the tail of its output."""


def _die_with_parent():
    # PR_SET_PDEATHSIG: if the harness itself is killed, its children go too.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except Exception:
        pass


def free_port():
    """A port the kernel just handed out, for servers that cannot report port 0 (nginx)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """One child, output to a file (a pipe nobody reads could fill and stall it)."""

    def __init__(self, name, argv, outdir, cpus=None, env=None, cwd=None):
        self.name = name
        self.argv = list(argv)
        self.cpus = cpus
        self.env = env
        self.cwd = cwd
        self.outpath = os.path.join(outdir, name + ".out")
        self.popen = None
        self.port = None

    @property
    def pid(self):
        return self.popen.pid if self.popen else None

    def start(self):
        argv = self.argv
        if self.cpus is not None and shutil.which("taskset"):
            argv = ["taskset", "-c", self.cpus] + argv  # taskset execs: same pid
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONUNBUFFERED"] = "1"
        out = open(self.outpath, "ab")
        try:
            self.popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=env, cwd=self.cwd, preexec_fn=_die_with_parent)
        finally:
            out.close()
        return self

    def output(self):
        try:
            with open(self.outpath, "rb") as f:
                return f.read()
        except OSError:
            return b""

    def tail(self, lines=15):
        text = self.output().decode("utf-8", "replace").rstrip().splitlines()
        return "\n".join("    | " + line for line in text[-lines:])

    def wait_listening(self, timeout=20.0, skip=0):
        """Wait for 'listening on http://HOST:PORT' in the output (after byte `skip`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = LISTEN_RE.search(self.output()[skip:])
            if m:
                self.port = int(m.group(2))
                return self.port
            if self.popen.poll() is not None:
                raise StartError("%s exited with %s before listening:\n%s"
                                 % (self.name, self.popen.returncode, self.tail()))
            gevent.sleep(0.05)
        raise StartError("%s did not print 'listening on' within %.0f s:\n%s"
                         % (self.name, timeout, self.tail()))

    def wait_port(self, port, timeout=20.0):
        """Wait until something accepts connections on 127.0.0.1:port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise StartError("%s exited with %s:\n%s"
                                 % (self.name, self.popen.returncode, self.tail()))
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                self.port = port
                return port
            except OSError:
                gevent.sleep(0.05)
        raise StartError("%s not accepting on port %d within %.0f s:\n%s"
                         % (self.name, port, timeout, self.tail()))

    def alive(self):
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig):
        if self.alive():
            os.kill(self.popen.pid, sig)

    def stop(self, timeout=5.0):
        """SIGCONT (in case it was stalled), SIGTERM, then SIGKILL after `timeout`."""
        if not self.alive():
            return self.popen.returncode if self.popen else None
        for sig in (signal.SIGCONT, signal.SIGTERM):
            try:
                os.kill(self.popen.pid, sig)
            except ProcessLookupError:
                pass
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(5)


# -- CPU ---------------------------------------------------------------------------------

def cpu_ticks(pids):
    """utime + stime of the processes and their descendants, in clock ticks (10 ms)."""
    return sum(_stat(p, 11) + _stat(p, 12) for pid in pids for p in tree(pid))


def minor_faults(pid):
    """Minor page faults of one process so far (pages it touched for the first time)."""
    return _stat(pid, 7)


def _stat(pid, field):
    """One numeric field of /proc/PID/stat, counted after the command name; 0 if gone."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[field])
    except (OSError, IndexError, ValueError):
        return 0


def wait_idle(pids, window=0.1, timeout=5.0):
    """Wait until the processes used at most one tick of CPU over `window`: the logging
    server catching up on the last measurement shares the core with the next target.
    Other people's work does not count. Returns False if they never went idle."""
    deadline = time.monotonic() + timeout
    before = cpu_ticks(pids)
    while time.monotonic() < deadline:
        gevent.sleep(window)
        after = cpu_ticks(pids)
        if after - before <= 1:
            return True
        before = after
    return False


# -- memory -------------------------------------------------------------------------

def tree(pid):
    """pid and all its descendants (nginx's workers, gunicorn's workers)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(b")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def status_kb(pid, field):
    try:
        with open("/proc/%d/status" % pid, "rb") as f:
            for line in f:
                if line.startswith(field.encode() + b":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def reset_peak(pid):
    """Reset VmHWM to the current RSS (writing 5 to clear_refs, Linux >= 4.0)."""
    ok = True
    for p in tree(pid):
        try:
            with open("/proc/%d/clear_refs" % p, "w") as f:
                f.write("5")
        except OSError:
            ok = False
    return ok


class RssWatch:
    """Peak memory of one process tree over an interval: the larger of the summed VmRSS
    polled every `every` seconds and each process's VmHWM (exact, if reset_peak worked)."""

    def __init__(self, pid, every=0.02):
        self.pid = pid
        self.every = every
        self.peak_kb = 0
        self.start_kb = None
        self.hwm_ok = False
        self._glet = None

    def rss_now(self):
        values = [status_kb(p, "VmRSS") for p in tree(self.pid)]
        return sum(v for v in values if v)

    def start(self):
        self.hwm_ok = reset_peak(self.pid)
        self.start_kb = self.rss_now()
        self.peak_kb = self.start_kb
        self._glet = gevent.spawn(self._run)
        return self

    def _run(self):
        while True:
            self.peak_kb = max(self.peak_kb, self.rss_now())
            gevent.sleep(self.every)

    def stop(self):
        if self._glet is not None:
            self._glet.kill()
            self._glet = None
        self.peak_kb = max(self.peak_kb, self.rss_now())
        if self.hwm_ok:
            pids = tree(self.pid)
            hwm = [status_kb(p, "VmHWM") for p in pids]
            if len(pids) == 1 and hwm[0]:
                self.peak_kb = max(self.peak_kb, hwm[0])
            elif all(hwm):
                # several processes: their peaks need not coincide; the polled sum is
                # the honest figure, the per-process peaks only bound it from above.
                self.peak_kb = max(self.peak_kb, max(hwm))
        return self.peak_kb


# -- open-file limits and CPU affinity ------------------------------------------------

NOFILE_WANT = 65536  # 10,000 streams: a proxy holds 2 sockets each, plus its log streams


def raise_nofile(want=NOFILE_WANT):
    """Raise this process's RLIMIT_NOFILE, which every child inherits (the proxies, the
    upstream, nginx, wrk): soft to the hard limit, and both to `want` when the hard limit
    is lower and we may raise it (root: CAP_SYS_RESOURCE, up to fs.nr_open).
    Returns (soft, hard, before)."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = (soft, hard)
    if hard != resource.RLIM_INFINITY and hard < want:
        try:
            with open("/proc/sys/fs/nr_open") as f:
                cap = int(f.read())
        except (OSError, ValueError):
            cap = want
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, cap), min(want, cap)))
        except (ValueError, OSError):
            pass
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard, before


def nofile_limit(pid):
    """The soft 'Max open files' of a running process (from /proc/PID/limits)."""
    try:
        with open("/proc/%d/limits" % pid) as f:
            for line in f:
                if line.startswith("Max open files"):
                    v = line.split()[3]
                    return None if v == "unlimited" else int(v)
    except (OSError, ValueError, IndexError):
        pass
    return None


def set_affinity(pid, cpus):
    """Pin every thread of a process tree to `cpus` (a set of CPU numbers)."""
    for p in tree(pid):
        try:
            tids = [int(t) for t in os.listdir("/proc/%d/task" % p)]
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:
                pass


def tcp_counters():
    """TcpExt counters of this network namespace (all processes in it, not only ours):
    ListenOverflows (a connection dropped because a listen queue was full; the client's
    SYN is retried after 1, 3, 7, 15, 31 s) and TCPSynRetrans."""
    want = ("ListenOverflows", "ListenDrops", "TCPSynRetrans")
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:]))
            return {k: int(table[k]) for k in want if k in table}
    return {}
