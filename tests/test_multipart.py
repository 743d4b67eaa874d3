"""Large bodies as multipart uploads while they stream (store/uploads.py, issue 15): real
processes on loopback (moto's S3 server, PostgreSQL, orlogserver, orproxy and the fake
upstream). A part is acknowledged once the object store holds it; readers see an upload's
bytes once it is completed; an upload whose server died is completed by another."""
import threading
import uuid

import psycopg
import pytest
import requests

from helpers import wait_until
from log_helpers import logged_once, send, split_head
from orproxy import jsoncodec
from orproxy.logserver.store.uploads import PART_BYTES
from orproxy.logwire import BATCH_HEADER, CONTENT_TYPE, append_head
from orproxy.testing.pattern import pattern_bytes
from servers import LogServer, build_config, start_proxy

pytestmark = pytest.mark.usefixtures("s3_server")
BLOCK = 65536


def _servers(tmp_path, postgres_cluster, s3_server, count):
    store, index = s3_server.new_bucket(), postgres_cluster.new_database()
    return index, [LogServer(tmp_path / f"local{n}", tmp_path / f"server{n}", ["--index", index, "--store", store])
                   .start() for n in range(count)]


def _rows(index, sql, args=()):
    with psycopg.connect(index, autocommit=True) as conn:
        return conn.execute(sql, args).fetchall()


def _uploads(index):
    return [(holder, len(jsoncodec.loads(parts))) for holder, parts in _rows(index, "SELECT holder, parts FROM uploads")]


def _upload_objects(index, exchange_id):
    return _rows(index, "SELECT DISTINCT e.object FROM extents e JOIN segments s ON s.object = e.object "
                        "WHERE e.id = %s AND e.object LIKE '%%-u%%'", (exchange_id,))


def _batch(url, *records):
    body = b"".join(append_head(rid, kind, 1.7e9, 1.7e9, offset, len(data), final) + data
                    for rid, kind, offset, data, final in records)
    answer = requests.post(url + "/ingest", data=body, headers={"Content-Type": CONTENT_TYPE}, timeout=60)
    assert answer.status_code == 201, answer.text
    assert answer.headers[BATCH_HEADER] == str(12 * 1024 * 1024)  # what the proxy then sends: parts fill
    return answer.json()["acks"]


def test_a_large_body_goes_up_in_parts_while_it_streams_and_reads_back_whole_from_another_server(
        tmp_path, postgres_cluster, s3_server):
    index, (first, second) = _servers(tmp_path, postgres_cluster, s3_server, 2)
    rid, data = str(uuid.uuid4()), pattern_bytes(3 * PART_BYTES + 4321)
    halfway, answers = threading.Event(), []

    def body():
        for i in range(0, len(data), BLOCK):
            if i == 2 * PART_BYTES + BLOCK:
                halfway.wait(60)
            yield data[i:i + BLOCK]

    put = threading.Thread(target=lambda: answers.append(requests.put(f"{first.url}/{rid}/request", data=body(),
                                                                      timeout=60)))
    put.start()
    try:
        # Mid-stream: an upload of its own, parts stored, no object to read yet.
        wait_until(lambda: [n for _, n in _uploads(index)] == [1], 30, 0.05, "the first part stored mid-stream")
        assert not _upload_objects(index, rid)
    finally:
        halfway.set()
        put.join(60)
    try:
        assert answers and answers[0].status_code == 201  # answered once the whole part is stored
        assert _uploads(index) == [] and len(_upload_objects(index, rid)) == 1
        for server in (first, second):
            assert requests.get(f"{server.url}/api/requests/{rid}/request", timeout=30).content == data
    finally:
        first.stop(timeout=10)
        second.stop(timeout=10)


def test_the_acknowledged_parts_of_a_server_killed_mid_upload_are_completed_by_another(
        tmp_path, postgres_cluster, s3_server):
    index, (doomed, survivor) = _servers(tmp_path, postgres_cluster, s3_server, 2)
    rid, data = str(uuid.uuid4()), pattern_bytes(3 * PART_BYTES + 999)
    try:
        head = 12 * 1024 * 1024  # a batch as the proxy sends a large body arriving fast
        assert _batch(doomed.url, (rid, "request", 0, data[:head], False)) == [head]
        assert [n for _, n in _uploads(index)] == [2]  # two parts up, acknowledged; the rest in a segment
        doomed.kill()  # its upload is never completed by it
        assert _batch(survivor.url, (rid, "request", head, data[head:], True)) == [len(data)]
        # The survivor sees the holder gone (its lock free) and completes the upload.
        wait_until(lambda: _uploads(index) == [], 30, 0.2, "the dead server's upload completed")
        assert len(_upload_objects(index, rid)) == 1
        wait_until(lambda: requests.get(f"{survivor.url}/api/requests/{rid}/request", timeout=30).content == data,
                   10, 0.2, "the whole body readable")
    finally:
        survivor.stop(timeout=10)


def test_a_large_response_through_the_proxy_is_logged_in_parts(tmp_path, postgres_cluster, s3_server, fake_upstream):
    index, (server,) = _servers(tmp_path, postgres_cluster, s3_server, 1)
    proxy = start_proxy(tmp_path / "proxy", build_config(fake_upstream.url, server.url))
    try:
        n = 40 * 1024 * 1024 + 3
        status, _, body, rid = send(proxy.url, "GET", "/v1/bytes?n=%d&chunked=1&block=65536" % n, timeout=120)
        assert status == 200 and body == pattern_bytes(n)
        logged_once(server, rid, b"", body, timeout=60)
        assert _upload_objects(index, rid), "no part of it went up as a multipart upload"
        raw = requests.get(f"{server.url}/api/requests/{rid}/response", timeout=30).content
        assert split_head(raw)[2] == body
    finally:
        proxy.stop(timeout=5)
        server.stop(timeout=10)


def test_a_server_that_lost_its_lock_records_no_part_in_an_upload_another_completed(
        tmp_path, postgres_cluster, s3_server):
    """In process, two stores on one bucket and database: the holder's lock goes (as when
    PostgreSQL restarts under it), and just as a part of the holder's is stored another
    server completes the upload. The part is not recorded, so not acknowledged: every
    extent points at bytes that are there."""
    from orproxy.logserver.store.stores import StoreUnavailable, open_stores
    store, index = s3_server.new_bucket(), postgres_cluster.new_database()
    (holder, holder_index), (other, other_index) = (open_stores(store, str(tmp_path / n), index) for n in "ab")
    try:
        rid, data = str(uuid.uuid4()), pattern_bytes(3 * PART_BYTES)
        since = holder.sync_point()
        writer = holder.open_writer(rid, "request", 1.7e9, fresh=True)
        writer.write(data[:2 * PART_BYTES])  # one write past 1 MiB: routed whole, two parts up
        assert [n for _, n in _uploads(index)] == [2]
        stored_part = holder.objects.put_part

        def stored_as_the_other_completes(*args):
            etag = stored_part(*args)
            holder._holding.close()  # its lock is free: to the others, it is gone
            assert other.adopt_uploads() == 1
            return etag
        holder.objects.put_part = stored_as_the_other_completes
        writer.write(data[2 * PART_BYTES:])  # its third part, stored, then not recordable
        with pytest.raises(StoreUnavailable):
            holder.sync(since)  # so nothing of it is acknowledged
        assert _uploads(index) == []
        key = (rid, writer.name)
        pieces, end = other.part_map(key)
        assert end == 2 * PART_BYTES and b"".join(source(0, stop - start) for start, stop, source in pieces) == data[:end]
        assert holder.stored(key, look=True) == end  # where the proxy sends the rest from
    finally:
        for files, files_index in ((holder, holder_index), (other, other_index)):
            files.close()
            files_index.close()


def test_an_exchange_deleted_while_its_upload_is_open_leaves_nothing_once_completed(
        tmp_path, postgres_cluster, s3_server):
    from orproxy.logserver.store.stores import open_stores
    store, index = s3_server.new_bucket(), postgres_cluster.new_database()
    files, files_index = open_stores(store, str(tmp_path / "a"), index)
    try:
        rid = str(uuid.uuid4())
        writer = files.open_writer(rid, "request", 1.7e9, fresh=True)
        data = pattern_bytes(3 * PART_BYTES + 100)
        writer.write(data[:2 * PART_BYTES + 100])  # two parts up, 100 bytes buffered
        assert files.delete_exchange({"id": rid}) == 2 * PART_BYTES  # retention, meanwhile
        writer.write(data[2 * PART_BYTES + 100:])  # a third part up: its bytes belong to nothing now
        writer.close()  # the upload completed: nor do its last bytes
        assert _rows(index, "SELECT count(*) FROM extents WHERE id = %s", (rid,)) == [(0,)]
        [(upload,)] = _rows(index, "SELECT object FROM segments WHERE object LIKE '%%-u%%'")
        assert files.objects.size(upload) is not None
        files.collect()
        assert files.objects.size(upload) is None  # its object goes with it
    finally:
        files.close()
        files_index.close()
