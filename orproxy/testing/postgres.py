"""A throwaway PostgreSQL cluster in a temp dir, for the tests and the benchmarks of the
PostgreSQL index (store/pgindex.py): Debian's `postgresql` binaries, found on PATH or in
/usr/lib/postgresql/*/bin. initdb refuses to run as root, so as root the cluster runs as
the `postgres` user (which Debian's package creates).

    with Cluster.start() as cluster:
        url = cluster.new_database()   # postgresql://postgres@127.0.0.1:PORT/t1
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from orproxy.testing.ports import free_port


def find_bin() -> str | None:
    """The directory of initdb and pg_ctl, or None if PostgreSQL is not installed."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(candidate, "pg_ctl")):
            return candidate
    found = shutil.which("pg_ctl")
    return os.path.dirname(found) if found else None


@dataclass
class Cluster:
    bin: str
    work: str
    port: int
    user: list[str] = field(default_factory=list)  # runuser prefix when we are root
    databases: int = 0

    @classmethod
    @contextmanager
    def start(cls) -> Iterator["Cluster"]:
        pg_bin = find_bin()
        if pg_bin is None:
            raise FileNotFoundError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
        work = tempfile.mkdtemp(prefix="orproxy-pg-")
        user = []
        if os.geteuid() == 0:
            shutil.chown(work, "postgres")
            user = ["runuser", "-u", "postgres", "--"]
        cluster = cls(pg_bin, work, free_port(), user)
        cluster._run("initdb", "-D", f"{work}/data", "-A", "trust", "-U", "postgres", "-E", "UTF8",
                     "--locale=C.UTF-8")
        cluster._run("pg_ctl", "-D", f"{work}/data", "-l", f"{work}/log", "-w", "-o",
                     f"-p {cluster.port} -k {work} -c listen_addresses=127.0.0.1 -c fsync=off "
                     "-c max_connections=300", "start")
        try:
            yield cluster
        finally:
            cluster._run("pg_ctl", "-D", f"{work}/data", "-m", "immediate", "stop", check=False)
            shutil.rmtree(work, ignore_errors=True)

    def _run(self, program: str, *args: str, check: bool = True) -> None:
        subprocess.run([*self.user, os.path.join(self.bin, program), *args], check=check,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.work)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """The URL of a new, empty database of this cluster."""
        self.databases += 1
        name = f"t{self.databases}"
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return self.url(name)
