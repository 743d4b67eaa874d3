"""nginx as the balancer in front of several logging servers, as a team runs it (the
README's "Scaling out" shows the same configuration): the tests and the benchmark start it
in a temp dir, on loopback.

What a logging server needs of its balancer: request bodies streamed, not buffered (a
proxy's upload lasts as long as its stream), answers streamed (the live feed and the tail
are server-sent events, `/api/live` a WebSocket), the `Host` passed on (the server answers
only names it knows: `--allowed-host`), and long timeouts.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import textwrap
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from orproxy.testing.ports import free_port, wait_port

SITE = """\
map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
upstream logservers {{
{servers}    keepalive 32;
}}
server {{
    listen {listen};
    client_max_body_size 0;            # a part may be GiBs
    proxy_request_buffering off;       # a proxy's upload streams through as it arrives
    proxy_buffering off;               # so do the live feed, the tail and downloads
    proxy_http_version 1.1;
    proxy_set_header Host $http_host;  # orlogserver --allowed-host <this name>
    proxy_set_header X-Forwarded-Proto $scheme;  # the page's own origin, behind TLS: https
    proxy_set_header Upgrade $http_upgrade;
    proxy_set_header Connection $connection_upgrade;
    proxy_connect_timeout 2s;          # a server that is down is passed over quickly
    proxy_read_timeout 1h;
    proxy_send_timeout 1h;
    location / {{ proxy_pass http://logservers; }}
}}
"""
MAIN = """\
{user}worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format balanced '$request_method $uri $status $upstream_addr';
    access_log {work}/access.log balanced;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
{site}}}
"""


def find_nginx() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)


def site(listen: str, backends: Iterable[str], backup: Iterable[str] = (), params: str = "") -> str:
    """The `server` block (and its upstream) that balances over `backends`; `backup` ones
    take the traffic only while the others are down; `params` go on each server line."""
    servers = [f"    server {b}{params};\n" for b in backends] + [f"    server {b}{params} backup;\n" for b in backup]
    return SITE.format(servers="".join(servers), listen=listen)


@dataclass
class Balancer:
    work: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def routed(self) -> list[tuple[str, str, str, str]]:
        """(backend that answered, method, path, status) of each request so far; the backend
        is the upstream's name when none was up."""
        try:
            with open(os.path.join(self.work, "access.log")) as f:
                lines = [line.rstrip("\n").split(" ", 3) for line in f if line.strip()]
        except FileNotFoundError:
            return []
        return [(tried.split(",")[-1].strip(), method, path, status) for method, path, status, tried in lines]

    @classmethod
    @contextmanager
    def start(cls, backends: Iterable[int], backup: Iterable[int] = ()) -> Iterator["Balancer"]:
        """nginx on a free loopback port in front of these local ports, until the block ends."""
        nginx = find_nginx()
        if nginx is None:
            raise FileNotFoundError("nginx is not installed (Debian: apt-get install nginx-light)")
        work = tempfile.mkdtemp(prefix="orproxy-nginx-")
        port = free_port()
        # max_fails=0: nginx never sets a server aside (for 10 s by default) after a failed
        # try, so one the tests restart takes requests at once; on loopback a server that
        # is down refuses at once.
        text = site(f"127.0.0.1:{port}", [f"127.0.0.1:{p}" for p in backends],
                    [f"127.0.0.1:{p}" for p in backup], " max_fails=0")
        user = "user root;\n" if os.geteuid() == 0 else ""  # its workers write the temp dirs made here
        with open(os.path.join(work, "nginx.conf"), "w") as f:
            f.write(MAIN.format(user=user, work=work, site=textwrap.indent(text, "    ")))
        process = subprocess.Popen([nginx, "-p", work, "-c", os.path.join(work, "nginx.conf"),
                                    "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_port("nginx", port, process)
            yield cls(work, port)
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stderr:
                process.stderr.close()
            shutil.rmtree(work, ignore_errors=True)
