"""Bodies in an object store (`orlogserver --store s3://…`, issue 15): what only it has.
The API, UI, HAR and replay suites already run against it (the "s3" kind, conftest.py),
and test_scaleout.py runs two servers on it behind nginx. Here: reindex from the segment
objects, `orlogserver migrate` from a log dir, its command-line mistakes, and an object
store that goes away while the proxy logs. Real processes: moto's S3 server, PostgreSQL,
orlogserver, orproxy and the fake upstream."""
import subprocess
import time

import psycopg
import pytest
import requests

from helpers import child_env, script, start_gunicorn, stream_text, wait_until
from live_helpers import StreamingChat, sse_events, wait_row
from log_helpers import exchange, logged_once, send, split_head
from orproxy.testing.pattern import pattern_bytes
from servers import LogServer, build_config, seeded_logserver, start_proxy
from stored import ObjectStoreFiles

from orproxy.testing.seed_logs import seed

pytestmark = pytest.mark.usefixtures("s3_server")


def _listing(server):
    items = requests.get(server.url + "/api/requests", params={"limit": 1000}, timeout=10).json()["items"]
    return sorted((i["id"], i["state"], i["status"], i["model"], i["request_bytes"], i["response_bytes"],
                   i["prompt_tokens"], i["conversation_id"]) for i in items)


def _documents(stored):
    """The documents in the store's database (0 before its tables are made)."""
    try:
        return stored._query("SELECT count(*) FROM documents", ())[0][0]
    except psycopg.errors.UndefinedTable:
        return 0


def _bodies(server, ids):
    return {(rid, kind): requests.get(f"{server.url}/api/requests/{rid}/{kind}", timeout=10).content
            for rid in ids for kind in ("request", "response")}


def test_under_gunicorn_two_workers_share_the_object_store(tmp_path, postgres_cluster, s3_server, fake_upstream):
    store, index = s3_server.new_bucket(), postgres_cluster.new_database()
    process = start_gunicorn("logserver-gunicorn", "orproxy.wsgi:logserver_app()", tmp_path, workers=2,
                             env={"ORLOGSERVER_LOG_DIR": tmp_path / "local", "ORLOGSERVER_STORE": store,
                                  "ORLOGSERVER_INDEX": index})
    files = LogServer(tmp_path / "local", tmp_path, ["--store", store, "--index", index])  # its reader only
    proxy = start_proxy(tmp_path / "proxy", build_config(fake_upstream.url, process.url))
    try:
        for rid, request_body, response_body in [exchange(proxy.url, i) for i in range(6)]:
            logged_once(files, rid, request_body, response_body)
        chat = StreamingChat(proxy.url, "acme/gunicorn-s3", events=20, interval_ms=50).start()
        wait_row(process.url, chat.id)
        with requests.get(f"{process.url}/api/requests/{chat.id}/tail", stream=True, timeout=20) as resp:
            got = list(sse_events(resp))
        assert got[-1][0] == "end" and got[-1][1]["reason"] == "complete"
        assert "".join(d.get("text", "") for n, ds, _ in got if n == "deltas" for d in ds) == stream_text(20)
        chat.wait()
    finally:
        proxy.stop(timeout=5)
        process.stop(timeout=10)


def test_a_body_larger_than_a_segment_spreads_over_several_and_reads_back_whole(
        tmp_path, postgres_cluster, s3_server, fake_upstream):
    store, index = s3_server.new_bucket(), postgres_cluster.new_database()
    server = LogServer(tmp_path / "local", tmp_path / "server", ["--index", index, "--store", store]).start()
    proxy = start_proxy(tmp_path / "proxy", build_config(fake_upstream.url, server.url))
    try:
        n = 20 * 1024 * 1024 + 17  # past two segments of 8 MiB
        status, _, body, rid = send(proxy.url, "GET", "/v1/bytes?n=%d&chunked=1&block=65536" % n, timeout=60)
        assert status == 200 and body == pattern_bytes(n)
        logged_once(server, rid, b"", body, timeout=60)
        raw = requests.get(f"{server.url}/api/requests/{rid}/response", timeout=30).content
        assert split_head(raw)[2] == body
        pieces = server.stored()._query("SELECT count(DISTINCT object) FROM extents WHERE id = %s", (rid,))
        assert pieces[0][0] >= 3, pieces  # its bytes in three segments or more
        put_id, data = "5e1f3c2a-8b4d-4e6f-9a0b-1c2d3e4f5a6b", pattern_bytes(9 * 1024 * 1024 + 5, offset=3)
        answer = requests.put(f"{server.url}/{put_id}/request", data=iter([data[i:i + 65536] for i in
                                                                           range(0, len(data), 65536)]), timeout=60)
        assert answer.status_code == 201  # a streamed PUT (the Go program's), answered once stored
        assert requests.get(f"{server.url}/api/requests/{put_id}/request", timeout=30).content == data
    finally:
        proxy.stop(timeout=5)
        server.stop(timeout=10)


def test_a_reindex_from_the_segment_objects_reproduces_the_index(tmp_path, postgres_cluster, s3_server,
                                                                 fake_upstream, run_cli):
    store, index = s3_server.new_bucket(), postgres_cluster.new_database()
    server = LogServer(tmp_path / "local", tmp_path / "first", ["--index", index, "--store", store]).start()
    proxy = start_proxy(tmp_path / "proxy", build_config(fake_upstream.url, server.url))
    try:
        sent = [exchange(proxy.url, i) for i in range(12)]  # JSON 20 KB up, 300 KB down, SSE
        for rid, request_body, response_body in sent:
            logged_once(server, rid, request_body, response_body)
        ids = [rid for rid, _, _ in sent]
        wait_until(lambda: len(_listing(server)) == 12 and all(r[1] == "complete" for r in _listing(server)),
                   10, 0.1, "all twelve listed")
        before, bodies = _listing(server), _bodies(server, ids)
    finally:
        proxy.stop(timeout=5)
        server.stop(timeout=10)
    fresh = postgres_cluster.new_database()  # the database lost: only the objects are left
    result = run_cli("orlogserver", "--reindex", "--log-dir", str(tmp_path / "local2"), "--index", fresh,
                     "--store", store, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "indexed 12 exchanges" in result.stdout and "12 documents" in result.stdout, result.stdout
    again = LogServer(tmp_path / "local2", tmp_path / "second", ["--index", fresh, "--store", store]).start()
    try:
        assert _listing(again) == before
        assert _bodies(again, ids) == bodies
    finally:
        again.stop(timeout=10)


def test_migrate_copies_a_log_dir_its_bodies_and_index_and_a_second_run_copies_only_what_changed(
        tmp_path, postgres_cluster, s3_server, run_cli):
    log_dir = tmp_path / "logs"
    seed(str(log_dir), 60)
    files = LogServer(log_dir, tmp_path / "files").start()  # the same log dir served as it is
    try:
        wait_until(lambda: len(_listing(files)) == 60, 30, 0.2, "the log dir indexed")
        before = _listing(files)
        ids = [row[0] for row in before]
        bodies = _bodies(files, ids)
    finally:
        files.stop(timeout=10)
    store, index = s3_server.new_bucket(), postgres_cluster.new_database()
    migrate = ["migrate", "--from", "file:%s" % log_dir, "--to", store, "--index", index]
    first = run_cli("orlogserver", *migrate, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "migrated 60 exchanges" in first.stdout and "0 were there already" in first.stdout, first.stdout
    seed(str(log_dir), 5, seed_value=2, base_time=time.time() - 60)  # five more since
    second = run_cli("orlogserver", *migrate, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "migrated 5 exchanges" in second.stdout and "60 were there already" in second.stdout, second.stdout
    server = LogServer(tmp_path / "local", tmp_path / "s3", ["--index", index, "--store", store]).start()
    try:
        wait_until(lambda: len(_listing(server)) == 65, 10, 0.2, "the migrated exchanges listed")
        assert set(before) <= set(_listing(server))
        assert _bodies(server, ids) == bodies
    finally:
        server.stop(timeout=10)


def test_a_migrate_killed_midway_and_run_again_copies_everything_once(tmp_path, postgres_cluster, s3_server,
                                                                      run_cli):
    log_dir = tmp_path / "logs"
    seed(str(log_dir), 1000)
    files = LogServer(log_dir, tmp_path / "files").start()
    try:
        wait_until(lambda: len(_listing(files)) == 1000, 60, 0.2, "the log dir indexed")
        before = _listing(files)
        sample = [row[0] for row in before[::20]]
        bodies = _bodies(files, sample)
    finally:
        files.stop(timeout=10)
    store, index = s3_server.new_bucket(), postgres_cluster.new_database()
    migrate = ["migrate", "--from", "file:%s" % log_dir, "--to", store, "--index", index]
    first = subprocess.Popen([script("orlogserver"), *migrate], env=child_env(), cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        stored = ObjectStoreFiles(store, index)
        wait_until(lambda: _documents(stored) > 0, 120, 0.02, "the first documents copied")
        assert first.poll() is None, "migrate ended before it could be killed"
    finally:
        first.kill()
        first.wait(10)
    copied = _documents(stored)
    assert 0 < copied < 1000, copied
    again = run_cli("orlogserver", *migrate, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "migrated %d exchanges" % (1000 - copied) in again.stdout, (copied, again.stdout)
    server = LogServer(tmp_path / "local", tmp_path / "s3", ["--index", index, "--store", store]).start()
    try:
        wait_until(lambda: len(_listing(server)) == 1000, 30, 0.2, "the migrated exchanges listed")
        assert _listing(server) == before
        assert _bodies(server, sample) == bodies
        files_bytes = sum(path.stat().st_size for path in log_dir.glob("*.bin"))
        assert stored._query("SELECT sum(length) FROM extents", ())[0][0] == files_bytes  # each byte copied once
    finally:
        server.stop(timeout=10)


def test_the_default_store_can_be_named_file_colon_a_log_dir(tmp_path):
    server = LogServer(tmp_path / "unused", tmp_path / "server", ["--store", "file:%s" % (tmp_path / "named")]).start()
    try:
        rid = "0b0e6a2c-4f8e-4b8a-9d7e-6f2b4a1c3d5e"
        answer = requests.put(f"{server.url}/{rid}/request", data=b"POST /v1/x HTTP/1.1\r\n\r\n{}", timeout=10)
        assert answer.status_code == 201
        assert (tmp_path / "named" / answer.json()["file"]).read_bytes() == b"POST /v1/x HTTP/1.1\r\n\r\n{}"
        assert not (tmp_path / "unused").exists()
        assert requests.get(server.url + "/api/health", timeout=5).json()["log_dir"] == str(tmp_path / "named")
    finally:
        server.stop(timeout=5)


def test_max_age_prunes_the_old_exchanges_documents_and_bodies_from_the_store(tmp_path, postgres_cluster,
                                                                              s3_server):
    log_dir, now = tmp_path / "logs", time.time()
    documents = seed(str(log_dir), 120, seed_value=5, base_time=now - 400)  # one every ~2 s
    args = ["--index", postgres_cluster.new_database(), "--store", s3_server.new_bucket()]
    server = seeded_logserver(log_dir, tmp_path, [*args, "--max-age", "5m"]).start()
    try:
        old = {d["id"] for d in documents if d.get("proxy") and d["proxy"]["started_at"] < now - 330}
        young = {d["id"] for d in documents if d.get("proxy") and d["proxy"]["started_at"] > now - 270}
        assert old and young
        wait_until(lambda: not old & {row[0] for row in _listing(server)}, 30, 0.2, "the old pruned")
        stored = server.stored()
        assert all(stored.document(i) is None for i in old)
        assert all(stored.files(i)[0].read_bytes() for i in young)  # their bodies still read
    finally:
        server.stop(timeout=10)


@pytest.mark.parametrize("args, message", [
    (["--store", "s3://orproxy-t1/x"], "need the index in PostgreSQL"),
    (["--store", "ftp://host/x", "--index", "INDEX"], "is not a store this server knows"),
    (["--store", "s3://orproxy-no-such-bucket/x", "--index", "INDEX"], "orproxy-no-such-bucket"),
    (["migrate", "--from", "logs", "--to", "s3://orproxy-t1/x"], "give file:DIR"),
    (["migrate", "--from", "file:/nonexistent/orproxy", "--to", "s3://orproxy-t1/x"], "no such directory"),
    (["migrate", "--from", "file:/tmp", "--to", "file:/tmp/elsewhere"], "give s3://BUCKET/PREFIX"),
])
def test_store_mistakes_exit_2_with_one_line(run_cli, postgres_cluster, args, message):
    args = [postgres_cluster.new_database() if a == "INDEX" else a for a in args]
    result = run_cli("orlogserver", *args, timeout=30)
    assert result.returncode == 2, result
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_while_the_object_store_is_down_nothing_is_acknowledged_and_nothing_is_lost(
        tmp_path, postgres_cluster, fake_upstream, monkeypatch):
    from orproxy.testing.s3 import MotoS3
    with MotoS3.start() as s3:  # a store of its own, to stop
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
        store = s3.new_bucket()
        server = LogServer(tmp_path / "local", tmp_path / "server",
                           ["--index", postgres_cluster.new_database(), "--store", store]).start()
        proxy = start_proxy(tmp_path / "proxy", build_config(fake_upstream.url, server.url))
        port = int(s3.endpoint.rsplit(":", 1)[1])
        try:
            logged_once(server, *exchange(proxy.url, 0))
            s3.stop()  # the store goes away: uploads fail, batches are answered 503
            during = [exchange(proxy.url, i) for i in range(1, 7)]
            wait_until(lambda: "segment was not stored" in server.stderr_text(), 15, 0.1, "an upload failing" + server.stderr_text() + proxy.stderr_text())
            s3.restart(port)  # back, empty (moto keeps nothing): the spool sends it all again
            s3.create(store)
            for rid, request_body, response_body in during:
                logged_once(server, rid, request_body, response_body, timeout=60)
        finally:
            proxy.stop(timeout=5)
            server.stop(timeout=10)
