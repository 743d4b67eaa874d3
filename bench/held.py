"""The held-streams client of scenario streams10k: thousands of SSE streams held at once
from this one process, each a non-blocking socket read by a libev io watcher whose callback
parses the chunked SSE body (no greenlet, no per-read timeout object), so that one process
keeps up at 30-40 us of CPU per event. See bench/README.md, "Many streams".
"""
import errno
import os
import re
import socket
import time

import gevent

from bench.http1 import build_request
from bench.load import summarize_ms

SSE_INDEX_RE = re.compile(rb'"index":(\d+),"sent_ns":(\d+)')


class StreamError(Exception):
    pass


class _StreamBody:
    """Incremental decoder of one response body (chunked, Content-Length or until close)
    into SSE events of the fake upstream's /sse: `feed` returns (index, sent_ns) pairs."""

    __slots__ = ("mode", "left", "state", "text", "done")

    def __init__(self, headers):
        te = headers.get("transfer-encoding", "").lower()
        if "chunked" in te:
            self.mode, self.left, self.state = "chunked", 0, "size"
        elif "content-length" in headers:
            self.mode, self.left, self.state = "length", int(headers["content-length"]), "data"
        else:
            self.mode, self.left, self.state = "close", -1, "data"
        self.text = b""
        self.done = self.mode == "length" and self.left == 0

    def feed(self, buf):
        """Decode what `buf` holds; returns (the undecoded rest, events completed)."""
        if self.mode == "chunked":
            buf = self._chunked(buf)
        elif self.mode == "length":
            take = buf[:self.left]
            self.text += take
            self.left -= len(take)
            buf = buf[len(take):]
            self.done = self.left == 0
        else:
            self.text += buf
            buf = b""
        out = []
        if b"\n\n" in self.text:
            blocks = self.text.split(b"\n\n")
            self.text = blocks.pop()
            for block in blocks:
                m = SSE_INDEX_RE.search(block)
                if m:
                    out.append((int(m.group(1)), int(m.group(2))))
        if len(self.text) > 65536:
            raise StreamError("no event boundary in 64 KiB")
        return buf, out

    def _chunked(self, buf):
        while buf:
            if self.state == "size":
                i = buf.find(b"\r\n")
                if i < 0:
                    if len(buf) > 1024:
                        raise StreamError("bad chunk size line")
                    return buf
                self.left = int(buf[:i].split(b";", 1)[0], 16)
                buf = buf[i + 2:]
                self.state = "data" if self.left else "trailer"
            elif self.state == "data":
                take = buf[:self.left]
                self.text += take
                self.left -= len(take)
                buf = buf[len(take):]
                if not self.left:
                    self.state = "crlf"
            elif self.state == "crlf":
                if len(buf) < 2:
                    return buf
                if buf[:2] != b"\r\n":
                    raise StreamError("bad chunk framing")
                buf = buf[2:]
                self.state = "size"
            else:  # trailer lines until an empty one
                i = buf.find(b"\r\n")
                if i < 0:
                    return buf
                line, buf = buf[:i], buf[i + 2:]
                if not line:
                    self.done = True
                    return buf
        return buf


def _parse_head(head):
    lines = head.split(b"\r\n")
    status = int(lines[0].split(None, 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return status, headers


class _HeldStream:
    """One stream driven by callbacks of gevent's event loop (libev io watchers on a
    non-blocking socket): no greenlet, no timeout object and no EAGAIN round per event,
    so the load generator's cost per event stays small next to what it measures."""

    __slots__ = ("run", "sock", "watcher", "t0", "buf", "body", "status", "got", "expect",
                 "in_order", "first_sent", "last_sent", "finished", "opened")

    def __init__(self, run):
        self.run = run
        self.sock = self.watcher = self.body = self.status = None
        self.first_sent = self.last_sent = None
        self.buf = b""
        self.got = self.expect = 0
        self.in_order = True
        self.finished = self.opened = False

    def start(self):
        run = self.run
        self.t0 = time.time_ns()
        try:
            sock = self.sock = run.socket_class(run.family, run.socktype)
            sock.setblocking(False)
            err = sock.connect_ex(run.address)
            if err not in (0, errno.EINPROGRESS):
                raise OSError(err, os.strerror(err))
            self.watcher = run.loop.io(sock.fileno(), 2)  # writable: connected
            self.watcher.start(self._connected)
        except Exception as e:  # EMFILE, refused, ...: this stream failed, the run goes on
            self.finish(e)

    def _connected(self):
        try:
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
            self.run.state["connected"] += 1
            if self.sock.send(self.run.request) != len(self.run.request):
                raise StreamError("request not sent in one go")
            self.watcher.stop()
            self.watcher = self.run.loop.io(self.sock.fileno(), 1)
            self.watcher.start(self._readable)
        except Exception as e:
            self.finish(e)

    def _readable(self):
        run = self.run
        try:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            t_recv = time.time_ns()
            body = self.body
            if not data:
                if body is None or body.mode != "close":
                    raise StreamError("closed before the response head" if body is None
                                      else "closed mid-body")
                body.done = True  # the end of a close-delimited body
                data = b"\n\n"  # flushes a last event without its blank line
            buf = self.buf + data
            if body is None:
                if b"\r\n\r\n" not in buf:
                    if len(buf) > 65536:
                        raise StreamError("response head too long")
                    self.buf = buf
                    return
                head, buf = buf.split(b"\r\n\r\n", 1)
                self.status, headers = _parse_head(head)
                run.heads.append(t_recv - self.t0)
                state = run.state
                state["open"] += 1
                self.opened = True
                if state["open"] > state["peak_open"]:
                    state["peak_open"] = state["open"]
                body = self.body = _StreamBody(headers)
            buf, evs = body.feed(buf)
            self.buf = buf
            for index, sent in evs:
                run.delays.append(t_recv - sent)
                if index != self.expect:
                    self.in_order = False
                self.expect = index + 1
                if self.first_sent is None:
                    self.first_sent = sent
                self.last_sent = sent
                self.got += 1
            if body.done:
                self.finish(None)
            elif self.got > run.events * 2:
                raise StreamError("more events than asked for")
        except Exception as e:
            self.finish(e)

    def finish(self, error):
        if self.finished:
            return
        self.finished = True
        run, state = self.run, self.run.state
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher.close()
            self.watcher = None
        if self.sock is not None:
            self.sock.close()
        if self.opened:
            state["open"] -= 1
        complete = error is None
        if error is not None:
            name = type(error).__name__
            if isinstance(error, OSError) and error.errno:
                name += " " + (errno.errorcode.get(error.errno) or str(error.errno))
            state["errors"][name] = state["errors"].get(name, 0) + 1
        if self.status is not None:
            state["statuses"][self.status] = state["statuses"].get(self.status, 0) + 1
        got = self.got
        state["events"] += got
        if got > 1:
            run.durations.append(self.last_sent - self.first_sent)
            run.slips.append(self.last_sent - self.first_sent - (got - 1) * run.interval_ns)
        if not self.in_order:
            state["out_of_order"] += 1
        if got < run.events:
            state["short"] += 1
        if not complete:
            state["incomplete"] += 1
        if self.status == 200 and complete and self.in_order and got == run.events:
            state["intact"] += 1
        state["finished"] += 1
        if state["finished"] >= run.streams:
            run.all_done.set()


class _HeldRun:
    def __init__(self, host, port, request, streams, events, interval_ms):
        from array import array
        from gevent.event import Event
        from gevent.monkey import get_original
        self.socket_class = get_original("socket", "socket")
        info = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
        self.family, self.socktype, self.address = info[0], info[1], info[4]
        self.loop = gevent.get_hub().loop
        self.request = request
        self.streams, self.events = streams, events
        self.interval_ns = interval_ms * 1_000_000
        self.delays = array("q")  # ns, every event of every stream
        self.heads = array("q")   # ns, connect -> response head
        self.slips = array("q")   # ns, how late the upstream sent the last event vs its plan
        self.durations = array("q")  # ns, first to last event as the upstream sent them
        self.all_done = Event()
        self.state = {"open": 0, "peak_open": 0, "connected": 0, "finished": 0, "intact": 0,
                      "events": 0, "out_of_order": 0, "short": 0, "incomplete": 0,
                      "statuses": {}, "errors": {}}


def held_streams(host, port, path, streams, events, interval_ms, ramp_s,
                 slack_s=30.0, progress=None):
    """`streams` SSE streams of the fake upstream's /sse (`events` events, one every
    `interval_ms`), one connection each, all from this process on gevent's event loop;
    the starts spread evenly over `ramp_s` seconds. Per event: delay = receive time - the
    event's sent_ns. A stream is intact when it answered 200 with every event, indices
    0..events-1 in order, and a complete body (the last chunk). Bounded: the whole run
    ends at ramp + twice the streams' planned duration (an overloaded upstream sends
    late: it sleeps the interval after each write) + `slack_s`; streams still open then
    are closed and count as incomplete."""
    url = "%s?events=%d&interval_ms=%d" % (path, events, interval_ms)
    run = _HeldRun(host, port, build_request("GET", url, "%s:%d" % (host, port)),
                   streams, events, interval_ms)
    state = run.state

    # The load generator's own event-loop lag: if it cannot keep up, its receive stamps
    # are late and every column's delay grows; this says so.
    from array import array
    lags = array("q")
    stop = [False]

    def lag_probe(every=0.05):
        while not stop[0]:
            t = time.perf_counter_ns()
            gevent.sleep(every)
            lags.append(time.perf_counter_ns() - t - int(every * 1e9))

    def reporter():
        while not stop[0]:
            gevent.sleep(5.0)
            if progress:
                progress(state)

    held = []
    cpu0 = os.times()
    t_start = time.monotonic()
    deadline = t_start + ramp_s + 2 * events * interval_ms / 1000.0 + slack_s
    helpers = [gevent.spawn(lag_probe), gevent.spawn(reporter)]
    try:
        for i in range(streams):  # the ramp: starts due by now, then sleep till the next
            due = t_start + ramp_s * i / streams
            wait = due - time.monotonic()
            if wait > 0.002:
                gevent.sleep(wait)
            if time.monotonic() > deadline:
                break
            h = _HeldStream(run)
            held.append(h)
            h.start()
        t_ramped = time.monotonic()
        if len(held) < streams:
            state["finished"] += streams - len(held)  # never started: the deadline came
        if state["finished"] < streams:
            run.all_done.wait(timeout=max(0.0, deadline - time.monotonic()))
    finally:
        left = 0
        for h in held:
            if not h.finished:
                left += 1
                h.finish(StreamError("still open at the deadline"))
        stop[0] = True
        gevent.killall(helpers, timeout=2)
    wall = time.monotonic() - t_start
    cpu1 = os.times()
    return {
        "streams": streams, "started": len(held), "connected": state["connected"],
        "peak_open": state["peak_open"], "intact": state["intact"],
        "events": state["events"], "events_requested": streams * events,
        "out_of_order": state["out_of_order"], "short": state["short"],
        "incomplete": state["incomplete"], "open_at_deadline": left,
        "statuses": state["statuses"], "errors": state["errors"],
        "delay": summarize_ms(run.delays), "head": summarize_ms(run.heads),
        "upstream_slip": summarize_ms(run.slips),
        "stream_duration": summarize_ms(run.durations),
        "planned_duration_ms": (events - 1) * interval_ms,
        "ramp_s": round(t_ramped - t_start, 2), "wall_s": round(wall, 2),
        "loadgen_cores": round((cpu1.user + cpu1.system - cpu0.user - cpu0.system) / wall, 2),
        "loadgen_user_sys_cores": [round((cpu1.user - cpu0.user) / wall, 2),
                                   round((cpu1.system - cpu0.system) / wall, 2)],
        "loadgen_lag_ms": summarize_ms(lags),
    }
