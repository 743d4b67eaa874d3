"""The body store's protocol (store/stores.py:BodyStore) and the log dir that implements it:
the readers ask for a part by exchange and kind, and get its bytes as stored, or None; the
writers open a part by exchange, kind and start, and resume it where it ends; reindex lists
the documents and adopts them. Unit tests: files in a temp dir, no sockets."""
import shutil
import inspect
import os
import uuid

import pytest

from orproxy.logserver.store.logdir import LogDir, PartFile
from orproxy.logserver.store.objectstore import ObjectBodyStore, ObjectPartWriter
from orproxy.logserver.store.record import ExchangeRecord
from orproxy.logserver.store.stores import BodyStore, PartWriter

REQUEST = b"POST /v1/chat/completions HTTP/1.1\r\nContent-Type: application/json\r\n\r\n" + b'{"x":"' + b"a" * 5000 + b'"}'


@pytest.mark.parametrize("ours, protocol, some", [
    (LogDir, BodyStore, {"open_part", "read_part", "last_change", "read_metadata", "open_writer", "adopt_document"}),
    (PartFile, PartWriter, {"stored", "write", "head", "close", "__enter__"}),
    (ObjectBodyStore, BodyStore, {"open_part", "read_part", "metadata", "sync", "collect", "document_keys"}),
    (ObjectPartWriter, PartWriter, {"stored", "write", "head", "close", "__enter__"}),
], ids=["BodyStore", "PartWriter", "BodyStore-s3", "PartWriter-s3"])
def test_the_log_dir_has_every_method_of_the_protocol_with_its_signature(ours, protocol, some):
    methods = [name for name, value in vars(protocol).items()
               if callable(value) and (not name.startswith("_") or name in ("__enter__", "__exit__"))]
    assert some <= set(methods)
    for name in methods:  # the same parameters (a context manager's return is typed two ways)
        mine, theirs = (inspect.signature(getattr(cls, name)) for cls in (ours, protocol))
        assert mine.parameters == theirs.parameters, name
    assert {"path", "name"} & set(protocol.__annotations__)
    for attribute in protocol.__annotations__:  # the attributes too (as class or instance ones)
        assert attribute in vars(ours) or attribute in inspect.getsource(ours), attribute


@pytest.fixture
def stores():
    """The log dirs a test opens, closed after it (each holds a lock file open)."""
    opened = []
    yield opened
    for log_dir in opened:
        log_dir.close()


def logged(stores, tmp_path, file_name="REQ"):
    """A log dir holding one exchange whose request part is REQUEST (file_name: the part's
    name in the document; REQ stands for the name the log dir gives it)."""
    log_dir = LogDir(str(tmp_path / "logs"))
    stores.append(log_dir)
    exchange_id = str(uuid.uuid4())
    with log_dir.metadata(exchange_id, 1_700_000_000.0) as document:
        prefix = f"{document['timestamp']}_{exchange_id[:8]}"
        name = f"{prefix}_request.bin" if file_name == "REQ" else file_name
        document["parts"]["request"] = {"file": name}
    if file_name == "REQ":
        with log_dir.open_writer(exchange_id, "request", 1_700_000_000.0, fresh=True) as writer:
            writer.write(REQUEST)
        assert writer.name == name
    return log_dir, ExchangeRecord(log_dir.read_metadata(exchange_id))


def test_a_part_is_opened_as_a_seekable_stream_of_its_stored_bytes(stores, tmp_path):
    log_dir, record = logged(stores, tmp_path)
    with log_dir.open_part(record, "request") as f:
        assert f.read() == REQUEST
        assert f.seek(0, os.SEEK_END) == len(REQUEST)


def test_a_part_not_there_or_named_outside_the_log_dir_opens_as_none(stores, tmp_path):
    log_dir, record = logged(stores, tmp_path)
    assert log_dir.open_part(record, "response") is None and log_dir.read_part(record, "response", 100) is None
    (tmp_path / "secret.bin").write_bytes(REQUEST)
    for hostile in ("../secret.bin", str(tmp_path / "secret.bin"), ".ids", ""):
        log_dir, record = logged(stores, tmp_path / str(len(stores)), hostile)
        assert log_dir.open_part(record, "request") is None, hostile
        assert log_dir.read_part(record, "request", 100) is None, hostile


def test_a_part_read_back_keeps_to_its_limits(stores, tmp_path):
    log_dir, record = logged(stores, tmp_path)
    whole = log_dir.read_part(record, "request", 1 << 20)
    assert whole.head.start_line.startswith("POST ") and len(whole.body.data) == 5008 and not whole.body.truncated
    cut = log_dir.read_part(record, "request", 100, raw_limit=100)
    assert len(cut.body.data) == 100 and cut.body.truncated


def test_the_last_change_is_the_newest_write_of_the_exchange(stores, tmp_path):
    log_dir, record = logged(stores, tmp_path)
    part = os.path.join(log_dir.path, record.part("request")["file"])
    document = os.path.join(log_dir.path, record.prefix + "_metadata.json")
    os.utime(part, (1000, 1000))
    os.utime(document, (2000, 2000))
    assert log_dir.last_change(record) == 2000
    os.utime(part, (3000, 3000))
    assert log_dir.last_change(record) == 3000
    os.unlink(part)
    os.unlink(document)
    assert log_dir.last_change(record) is None


def test_a_writer_resumes_its_part_where_it_ends_whoever_wrote_it(stores, tmp_path):
    log_dir, record = logged(stores, tmp_path)
    t = 1_700_000_000.0
    first, second = (log_dir.open_writer(record.id, "request", t) for _ in range(2))  # two worker processes
    try:
        assert first.name == second.name == record.part("request")["file"]
        assert first.stored() == second.stored() == len(REQUEST)
        first.write(b"more")
        assert second.stored() == len(REQUEST) + 4  # the other's appends count
        second.write(memoryview(b"and more"))
        assert first.head(40) == REQUEST[:40]
    finally:
        first.close()
        second.close()
    with log_dir.open_part(record, "request") as f:
        assert f.read() == REQUEST + b"moreand more"
    with log_dir.open_writer(record.id, "request", t, fresh=True) as writer:  # a streamed PUT: whole
        assert writer.stored() == 0
    with log_dir.open_part(record, "request") as f:
        assert f.read() == b""
    assert sorted(os.listdir(log_dir.path)) == [".ids", record.prefix + "_metadata.json", writer.name]


def test_the_documents_are_listed_oldest_first_and_adopted_with_their_links(stores, tmp_path):
    log_dir, record = logged(stores, tmp_path)
    later, _ = logged(stores, tmp_path / "later")
    with later.metadata(str(uuid.uuid4()), 1_800_000_000.0) as document:
        newest = document["id"]
    for name in os.listdir(later.path):  # files copied in without their .ids links
        if not name.startswith("."):
            shutil.copy(os.path.join(later.path, name), log_dir.path)
    (tmp_path / "logs" / "2020-01-01_00-00-00.000_0000000a_metadata.json").write_text("[1, 2]")
    keys = log_dir.document_keys()
    assert len(keys) == 4 and keys == sorted(keys)
    adopted = [log_dir.adopt_document(key) for key in keys]
    assert adopted[0] == (None, False)  # not an exchange's document
    assert [linked for _, linked in adopted[1:]] == [True, True, True]
    assert adopted[-1][0]["id"] == newest and log_dir.read_metadata(newest)["id"] == newest  # linked now
    copy = os.path.join(log_dir.path, "2029-01-01_00-00-00.000_" + newest[:8] + "_metadata.json")
    shutil.copy(keys[-1], copy)  # the same exchange again, under another time
    document, linked = log_dir.adopt_document(copy)
    assert document["id"] == newest and not linked  # its id's link names the first files
