"""The log client's parts and spool on their own, with no socket: where a part's bytes go
(memory, the spool, or dropped with a marker), what the sender takes and resends, and the
spool's records surviving a torn tail, corruption and the death of their writer."""
import os

import pytest
from gevent.event import Event

from orproxy import logwire
from orproxy.logclient import part as part_module
from orproxy.logclient.budget import Budget
from orproxy.logclient.part import Part, truncation_marker
from orproxy.logclient.spool import FRAME, Spool

ID = "0f0e0d0c-0b0a-4908-8706-050403020100"


class FakeSink(object):
    """What a Part asks of its sink, and what it tells it."""

    def __init__(self, spool=None, budget=None):
        self.spool = spool
        self.budget = budget or Budget()
        self.down = False
        self.wake = Event()
        self.readied = []
        self.dropped_bytes = 0

    def ready(self, part):
        self.readied.append(part)

    def not_ready(self, part):
        pass

    def dropped(self, size):
        self.dropped_bytes += size


def spooled(spool):
    """(kind, offset, data, final) of every record in the spool, in order."""
    payloads, _ = spool.read(1 << 40)
    out = []
    for payload in payloads:
        for record in logwire.records(payload):
            if isinstance(record, logwire.Append):
                out.append((record.kind, record.offset, bytes(record.data), record.final))
            else:
                out.append(("metadata", 0, bytes(record.data), True))
    return out


# -- parts in memory -----------------------------------------------------------------------

def test_a_part_keeps_its_blocks_in_memory_until_acknowledged():
    sink = FakeSink()
    part = Part(sink, ID, "response", 100.0)
    part.write(b"head\r\n\r\n")
    part.write(b"body")
    assert sink.readied == [part, part] and sink.budget.used == 12
    assert part.take(1 << 20) == (0, [b"head\r\n\r\n", b"body"], False)
    part.write(b"more")
    assert part.take(1 << 20) == (12, [b"more"], False)
    part.acked(12)
    assert sink.budget.used == 4 and list(part.blocks) == [b"more"]
    part.close()
    assert part.take(1 << 20) == (12, [b"more"], True)  # acked nothing new: resent, with the end
    part.acked(16)
    assert part.done and sink.budget.used == 0


def test_a_failed_batch_sends_the_same_bytes_again():
    sink = FakeSink()
    part = Part(sink, ID, "request", 100.0)
    part.write(b"abc")
    part.close()
    first = part.take(1 << 20)
    part.unsend()
    assert part.unsent and part.take(1 << 20) == first == (0, [b"abc"], True)


def test_a_partial_acknowledgement_resends_from_the_block_it_stopped_in():
    sink = FakeSink()
    part = Part(sink, ID, "request", 100.0)
    for block in (b"aaaa", b"bbbb", b"cccc"):
        part.write(block)
    part.close()
    part.take(1 << 20)
    part.acked(6)  # the logging server holds "aaaabb"
    assert part.take(1 << 20) == (4, [b"bbbb", b"cccc"], True)


def test_take_stops_at_the_limit_but_always_gives_one_block():
    sink = FakeSink()
    part = Part(sink, ID, "response", 100.0)
    for block in (b"x" * 10, b"y" * 10, b"z" * 10):
        part.write(block)
    assert part.take(5) == (0, [b"x" * 10], False)
    assert part.take(15) == (10, [b"y" * 10], False)


# -- spilling to the spool ------------------------------------------------------------------

def test_a_part_past_its_budget_spills_all_of_it_to_the_spool_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(part_module, "PART_BUDGET", 10)
    sink = FakeSink(Spool(str(tmp_path), 1 << 20))
    part = Part(sink, ID, "response", 100.0)
    part.write(b"12345678")
    part.write(b"9abc")      # over the part's budget: everything goes to the spool
    part.write(b"def")
    part.close()
    assert part.spilled and part.done and sink.budget.used == 0
    assert spooled(sink.spool) == [("response", 0, b"12345678", False), ("response", 8, b"9abc", False),
                                   ("response", 12, b"def", False), ("response", 15, b"", True)]


def test_while_the_logging_server_is_down_data_goes_to_the_spool(tmp_path):
    sink = FakeSink(Spool(str(tmp_path), 1 << 20))
    sink.down = True
    part = Part(sink, ID, "request", 100.0)
    part.write(b"POST / HTTP/1.1\r\n\r\n")
    part.close()
    metadata = Part(sink, ID, "metadata", 100.0)
    metadata.write(b'{"status":200}')
    metadata.close()
    assert spooled(sink.spool) == [("request", 0, b"POST / HTTP/1.1\r\n\r\n", False),
                                   ("request", 19, b"", True), ("metadata", 0, b'{"status":200}', True)]
    assert sink.budget.used == 0 and not part.unsent and not metadata.unsent


def test_past_the_spool_bound_a_part_is_truncated_with_the_marker(tmp_path, monkeypatch):
    monkeypatch.setattr(part_module, "PART_BUDGET", 10)
    sink = FakeSink(Spool(str(tmp_path), 200))
    part = Part(sink, ID, "response", 100.0)
    part.write(b"a" * 8)
    part.write(b"b" * 500)   # neither memory nor the spool can take it
    part.write(b"c" * 7)
    part.close()
    assert part.dropped == 507 and sink.dropped_bytes == 507
    records = spooled(sink.spool)
    assert records[0] == ("response", 0, b"a" * 8, False)
    assert records[-2] == ("response", 8, truncation_marker(507), False)
    assert records[-1][1:] == (8 + len(truncation_marker(507)), b"", True)


def test_without_a_spool_a_part_past_its_budget_is_truncated_in_memory(monkeypatch):
    monkeypatch.setattr(part_module, "PART_BUDGET", 10)
    sink = FakeSink()
    part = Part(sink, ID, "response", 100.0)
    part.write(b"a" * 8)
    part.write(b"b" * 5)
    part.close()
    assert part.dropped == 5
    assert b"".join(part.take(1 << 20)[1]) == b"a" * 8 + truncation_marker(5)


# -- the spool on disk ------------------------------------------------------------------------

def record(data, offset=0):
    head = logwire.append_head(ID, "request", 1.0, 1.0, offset, len(data), False)
    return (head, data), len(head) + len(data)


def test_spooled_records_come_back_in_order_and_delivered_ones_go(tmp_path):
    spool = Spool(str(tmp_path), 1 << 20)
    for i in range(3):
        assert spool.append(*record(b"x%d" % i, i * 2))
    payloads, token = spool.read(1 << 20)
    assert [bytes(r.data) for p in payloads for r in logwire.records(p)] == [b"x0", b"x1", b"x2"]
    assert spool.read(1 << 20)[0] == payloads  # nothing moves before it is delivered
    spool.delivered(token)
    assert not spool.pending and spool.size == 0


def test_the_spool_refuses_past_its_bound_unless_forced(tmp_path):
    spool = Spool(str(tmp_path), 200)
    assert spool.append(*record(b"x" * 20))
    assert not spool.append(*record(b"y" * 60))
    assert spool.append(*record(b"y" * 60), force=True)


def test_a_torn_tail_is_cut_and_the_good_records_still_come(tmp_path, capfd):
    writer = Spool(str(tmp_path / "spool"), 1 << 20)
    for i in range(3):
        writer.append(*record(b"record %d" % i))
    path = writer.segments[0].path
    writer.segments[0].close(remove=False)  # the writer is gone (killed)
    writer.segments = []
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - 5)                 # it died in the middle of its last write
    reader = Spool(str(tmp_path / "spool"), 1 << 20)
    payloads, _ = reader.read(1 << 20)
    assert [bytes(r.data) for p in payloads for r in logwire.records(p)] == [b"record 0", b"record 1"]
    assert "torn record" in capfd.readouterr().err
    assert os.path.getsize(path) < size - 5  # cut


def test_a_corrupt_record_is_skipped_and_the_ones_after_it_still_come(tmp_path, capfd):
    writer = Spool(str(tmp_path / "spool"), 1 << 20)
    for i in range(3):
        writer.append(*record(b"record %d" % i))
    path = writer.segments[0].path
    first = FRAME.size + record(b"record 0")[1]
    writer.segments[0].close(remove=False)
    writer.segments = []
    with open(path, "r+b") as f:
        f.seek(first + FRAME.size + 3)
        f.write(b"\xff")                     # a flipped byte in the second record's payload
    payloads, _ = Spool(str(tmp_path / "spool"), 1 << 20).read(1 << 20)
    assert [bytes(r.data) for p in payloads for r in logwire.records(p)] == [b"record 0", b"record 2"]
    assert "corrupt record" in capfd.readouterr().err


def test_a_live_writers_segments_are_left_alone_and_a_dead_ones_adopted(tmp_path):
    live = Spool(str(tmp_path), 1 << 20)
    live.append(*record(b"mine"))
    other = Spool(str(tmp_path), 1 << 20)
    assert other.adopt() == 0 and not other.pending  # locked by a live writer
    live.close()                                      # the writer stops with it undelivered
    assert other.adopt() == 1
    payloads, token = other.read(1 << 20)
    assert [bytes(r.data) for p in payloads for r in logwire.records(p)] == [b"mine"]
    other.delivered(token)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("body, message", [
    (b"P x request 1 1 0 5 0\nabc", "runs past the end"),
    (b"Q x\n", "unknown record type"),
    (b"P x upload 1 1 0 0 0\n", "kind"),
    (b"no newline", "no record header"),
])
def test_malformed_batches_are_refused_with_a_reason(body, message):
    with pytest.raises(logwire.BadBatch) as error:
        list(logwire.records(body))
    assert message in str(error.value)
