"""Which PostgreSQL and S3 clients cooperate with gevent, and what one call costs (issue 15:
"measure before you choose"). Starts a real PostgreSQL (Debian's, in a temp dir, as the
`postgres` user) and moto's S3 server on loopback, then, in one gevent process with the
standard library monkey-patched, times each client alone and with 8 greenlets at once,
while a ticker greenlet records how long the loop was held (its worst lag).

    python -m venv /tmp/sv && /tmp/sv/bin/pip install gevent 'psycopg[binary]' boto3 minio 'moto[server]' obstore
    /tmp/sv/bin/python bench/storage_clients.py

A client that blocks the loop shows a lag near the time of one call and 8 greenlets taking
8 times one call; a cooperative one, a lag of a millisecond or less. CPU is this process's
(user + system) per call, which is what a logging server would spend.
"""
from gevent import monkey

monkey.patch_all()

import contextlib  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
from gevent.threadpool import ThreadPool  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.procs import Proc, free_port  # noqa: E402

PG_BIN = "/usr/lib/postgresql/15/bin"
CALLS = 200
GREENLETS = 8


@contextlib.contextmanager
def postgresql():
    """A throwaway cluster; initdb refuses root, so it runs as `postgres`."""
    work = tempfile.mkdtemp(prefix="pgbench-")
    shutil.chown(work, "postgres")
    port = free_port()
    as_pg = ["runuser", "-u", "postgres", "--"]
    subprocess.run(as_pg + [f"{PG_BIN}/initdb", "-D", work + "/data", "-A", "trust", "-U", "postgres"],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run(as_pg + [f"{PG_BIN}/pg_ctl", "-D", work + "/data", "-l", work + "/log", "-w", "-o",
                            f"-p {port} -k {work} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                   check=True, stdout=subprocess.DEVNULL)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(as_pg + [f"{PG_BIN}/pg_ctl", "-D", work + "/data", "-m", "fast", "stop"],
                       stdout=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def moto_s3():
    port = free_port()
    work = tempfile.mkdtemp(prefix="motobench-")
    server = Proc("moto", [os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1",
                           "-p", str(port)], work).start()
    try:
        server.wait_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(name: str, call) -> None:
    """One call CALLS times in a row, then GREENLETS greenlets making CALLS/GREENLETS each."""
    call(0)  # connections made, caches warm
    lag = [0.0]
    stop = [False]

    def ticker():
        last = time.perf_counter()
        while not stop[0]:
            gevent.sleep(0.001)
            now = time.perf_counter()
            lag[0] = max(lag[0], now - last - 0.001)
            last = now

    tick = gevent.spawn(ticker)
    gevent.sleep(0.01)
    started, cpu0 = time.perf_counter(), cpu()
    for i in range(CALLS):
        call(i)
    alone = (time.perf_counter() - started) / CALLS
    cpu_each = (cpu() - cpu0) / CALLS
    per = CALLS // GREENLETS
    started = time.perf_counter()
    gevent.joinall([gevent.spawn(lambda g=g: [call(g * per + i) for i in range(per)]) for g in range(GREENLETS)])
    together = time.perf_counter() - started
    stop[0] = True
    tick.join()
    print(f"{name:52s} {alone * 1e3:7.2f} ms  {cpu_each * 1e3:6.2f} ms CPU  "
          f"{GREENLETS} at once: {together / (alone * CALLS):4.2f}x alone's time  loop held ≤ {lag[0] * 1e3:6.1f} ms",
          flush=True)


def postgresql_clients(dsn: str) -> None:
    import psycopg
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute("CREATE TABLE IF NOT EXISTS t (id bigserial PRIMARY KEY, doc jsonb)")
    conns = [psycopg.connect(dsn, autocommit=True) for _ in range(GREENLETS)]
    pick = lambda i: conns[i % GREENLETS]  # noqa: E731  (one connection per greenlet)
    measure("psycopg %s: INSERT a 1 KB jsonb row" % psycopg.__version__,
            lambda i: pick(i).execute("INSERT INTO t (doc) VALUES (%s::jsonb)", ['{"x": "%s"}' % ("y" * 1000)]))
    measure("psycopg: SELECT a row by key", lambda i: pick(i).execute("SELECT doc FROM t WHERE id = %s", [i + 1]).fetchone())
    measure("psycopg: SELECT pg_sleep(0.005) (is waiting green?)",
            lambda i: pick(i).execute("SELECT pg_sleep(0.005)").fetchone())


def s3_clients(endpoint: str) -> None:
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
    body = os.urandom(64 * 1024)
    big = os.urandom(4 * 1024 * 1024)

    import boto3
    import botocore.config
    s3 = boto3.client("s3", endpoint_url=endpoint,
                      config=botocore.config.Config(max_pool_connections=GREENLETS * 2))
    s3.create_bucket(Bucket="bench")
    s3.put_object(Bucket="bench", Key="big", Body=big)
    measure("boto3 %s: PUT 64 KiB" % boto3.__version__,
            lambda i: s3.put_object(Bucket="bench", Key=f"b/{i}", Body=body))
    measure("boto3: GET 4 KiB range of 4 MiB",
            lambda i: s3.get_object(Bucket="bench", Key="big", Range=f"bytes={i * 4096}-{i * 4096 + 4095}")["Body"].read())

    import minio
    client = minio.Minio(endpoint.split("//", 1)[1], "test", "test", secure=False)
    import io
    measure("minio %s: PUT 64 KiB" % minio.__version__,
            lambda i: client.put_object("bench", f"m/{i}", io.BytesIO(body), len(body)))
    measure("minio: GET 4 KiB range of 4 MiB",
            lambda i: client.get_object("bench", "big", offset=i * 4096, length=4096).read())

    import obstore
    from obstore.store import S3Store
    store = S3Store("bench", endpoint=endpoint, allow_http=True, access_key_id="test",
                    secret_access_key="test", region="us-east-1")
    pool = ThreadPool(GREENLETS)
    measure("obstore %s (threadpool): PUT 64 KiB" % obstore.__version__,
            lambda i: pool.apply(obstore.put, (store, f"o/{i}", body)))
    measure("obstore (threadpool): GET 4 KiB range of 4 MiB",
            lambda i: pool.apply(lambda: bytes(obstore.get_range(store, "big", start=i * 4096, length=4096))))


def main() -> None:
    print(f"{CALLS} calls each; then {GREENLETS} greenlets at once; loopback; this process's CPU")
    with postgresql() as dsn:
        postgresql_clients(dsn)
    with moto_s3() as endpoint:
        s3_clients(endpoint)


if __name__ == "__main__":
    main()
