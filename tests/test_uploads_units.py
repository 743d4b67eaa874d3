"""Large parts as multipart uploads while they stream (store/uploads.py, through
store/segments.py): unit tests with an object store and a ledger in memory, no sockets."""
import pytest

from memory_objects import MemoryLedger, MemoryObjects
from orproxy.logserver.store.footers import segment_footer
from orproxy.logserver.store.objectstore import _covered, _memory_source
from orproxy.logserver.store.objects import ObjectStoreError
from orproxy.logserver.store.segments import Segments
from orproxy.logserver.store.uploads import MOST_UPLOADS, PART_BYTES, ROUTE_FROM
from orproxy.testing.pattern import pattern_bytes

A = ("a" * 36, "a_request.bin")
BLOCK = 65536


@pytest.fixture
def segments():
    store = Segments(MemoryObjects(), MemoryLedger())
    yield store
    store.close()


def read_back(segments, key):
    """The part as a reader on any server reads it: from the extents recorded, in objects."""
    objects = segments.objects.objects
    pieces = [(offset, length, _memory_source(objects[obj][position:position + length]))
              for exchange_id, name, offset, length, obj, position in segments.ledger.extents()
              if (exchange_id, name) == key and obj in objects]
    covered, end = _covered(pieces)
    return b"".join(source(0, stop - start) for start, stop, source in covered)


def write_and_end(segments, key, data, at=0):
    since = segments.current
    for i in range(0, len(data), BLOCK):
        segments.append(key, at + i, data[i:i + BLOCK])
    segments.finish(key)
    segments.sync(segments.current, since)


def uploaded(segments):
    return [key for key in segments.objects.objects if key.rsplit("-", 1)[-1].startswith("u")]


def test_a_large_part_goes_up_in_parts_while_it_streams_and_reads_back_whole(segments):
    data = pattern_bytes(3 * PART_BYTES + 12345)
    since = segments.current
    for i in range(0, 3 * PART_BYTES, BLOCK):
        segments.append(A, i, data[i:i + BLOCK])
    assert [number for _, number, _ in segments.ledger.parts] == [1, 2]  # up before the part ends
    assert segments.objects.uploads and not uploaded(segments)  # not readable until completed
    for i in range(3 * PART_BYTES, len(data), BLOCK):
        segments.append(A, i, data[i:i + BLOCK])
    segments.finish(A)
    segments.sync(segments.current, since)
    [key] = uploaded(segments)
    assert read_back(segments, A) == data
    footer = segment_footer(segments.objects, key, len(segments.objects.objects[key]))
    first = ROUTE_FROM - BLOCK  # the bytes before its upload began, in a segment
    assert footer["extents"] == [[A[0], A[1], first, len(data) - first, 0]] and footer["documents"] == {}
    assert not segments.objects.uploads  # nothing left open


def test_what_a_writer_needs_durable_and_does_not_fill_a_part_goes_into_a_segment(segments):
    data = pattern_bytes(3 * PART_BYTES + 100)
    since = segments.current
    segments.append(A, 0, data[:PART_BYTES + 100])  # one part, and 100 bytes over
    segments.settle(A)  # a batch's acks come
    segments.sync(segments.current, since)
    assert [e[2:4] for _, extents in segments.ledger.recorded for e in extents] == [[PART_BYTES, 100]]
    assert segments.end(A) == PART_BYTES + 100
    segments.append(A, PART_BYTES + 100, data[PART_BYTES + 100:])  # the upload goes on after them
    assert len(segments.ledger.parts) == 3
    segments.finish(A)
    assert read_back(segments, A) == data


def test_a_part_that_fails_to_go_up_is_not_acknowledged_and_the_parts_before_it_stay(segments):
    data = pattern_bytes(2 * PART_BYTES)
    since = segments.current
    segments.append(A, 0, data[:PART_BYTES])
    segments.objects.failing = True
    segments.append(A, PART_BYTES, data[PART_BYTES:])
    segments.objects.failing = False
    with pytest.raises(ObjectStoreError):
        segments.sync(segments.current, since)
    assert [number for _, number, _ in segments.ledger.parts] == [1]  # the first is recorded, durable
    assert segments.end(A) is None  # the lost bytes are not held: the writer resends from the store's end
    assert not segments.ledger.completed  # completed later from what the ledger holds (adopt_uploads)


def test_an_upload_no_bytes_come_for_is_completed(segments):
    data = pattern_bytes(PART_BYTES + 7)
    segments.append(A, 0, data)
    segments.uploads.finish_idle(0.0)
    assert len(uploaded(segments)) == 1 and read_back(segments, A) == data


def test_a_part_whose_upload_never_filled_a_part_is_spilled_into_a_segment(segments):
    data = pattern_bytes(PART_BYTES)
    since = segments.current
    segments.append(A, 0, data[:BLOCK])
    segments.append(A, BLOCK, data[BLOCK:])  # routed, but less than a part
    segments.finish(A)
    segments.sync(segments.current, since)
    assert not uploaded(segments) and not segments.objects.uploads
    assert read_back(segments, A) == data


def test_bytes_sent_again_over_an_upload_go_into_a_segment_and_read_once(segments):
    data = pattern_bytes(PART_BYTES + 1000)
    segments.append(A, 0, data)
    segments.append(A, 500, data[500:PART_BYTES])  # a resend, overlapping
    write_and_end(segments, A, b"", at=len(data))
    assert read_back(segments, A) == data


def test_past_the_most_uploads_at_once_large_parts_go_in_segments(segments):
    keys = [("%036d" % n, "x_request.bin") for n in range(MOST_UPLOADS + 1)]
    data = pattern_bytes(2 * ROUTE_FROM)
    for key in keys:
        segments.append(key, 0, data)
    assert segments.uploads.end(keys[-2]) == len(data) and segments.uploads.end(keys[-1]) is None
    since = segments.current
    for key in keys:
        segments.finish(key)
    segments.sync(segments.current, since)
    assert all(read_back(segments, key) == data for key in keys)
