"""Segments (store/segments.py) and how the object store reads a part from its extents
(store/objectstore.py): unit tests with an object store in memory, no sockets."""
import time

import gevent
import pytest

from memory_objects import MemoryLedger, MemoryObjects
from orproxy.logserver.store.objects import ObjectStoreError
from orproxy.logserver.store.objectstore import _covered, _memory_source
from orproxy.logserver.store.footers import segment_footer
from orproxy.logserver.store.segments import SHARE_BELOW, Segment, Segments

A, B = ("a" * 36, "a_request.bin"), ("b" * 36, "b_response.bin")


def test_appends_continuing_a_part_grow_its_extent_and_others_start_their_own():
    segment = Segment(1)
    segment.append(A, 0, b"hello ")
    segment.append(A, 6, b"world")
    segment.append(B, 0, b"HTTP/1.1")
    segment.append(A, 11, b"!")  # after B's bytes: not contiguous in the segment
    assert segment.extents == [[A[0], A[1], 0, 11, 0], [B[0], B[1], 0, 8, 11], [A[0], A[1], 11, 1, 19]]
    assert segment.pieces(A) == [(0, b"hello world"), (11, b"!")] and segment.end(A) == 12


def test_a_segment_object_ends_with_a_footer_of_its_extents_and_documents():
    segment = Segment(1)
    segment.append(A, 0, b"hello")
    segment.documents[A[0]] = '{"id": "a", "rev": 2}'
    objects = MemoryObjects()
    objects.objects["k"] = segment.body()
    footer = segment_footer(objects, "k", len(objects.objects["k"]))
    assert footer == {"extents": [[A[0], A[1], 0, 5, 0]], "documents": {A[0]: '{"id": "a", "rev": 2}'}}
    assert objects.objects["k"].startswith(b"hello")
    objects.objects["plain"] = b"not a segment at all"
    assert segment_footer(objects, "plain", 20) is None


def test_a_part_is_read_from_0_each_byte_once_up_to_a_gap():
    pieces = [(5, 5, _memory_source(b"FGHIJ")), (0, 6, _memory_source(b"ABCDEx")),  # x: a resent byte
              (8, 4, _memory_source(b"IJKL")), (20, 2, _memory_source(b"UV"))]      # 12..20 not there yet
    covered, end = _covered(pieces)
    assert end == 12
    assert b"".join(source(0, stop - start) for start, stop, source in covered) == b"ABCDExGHIJKL"[:12]
    assert [(start, stop) for start, stop, _ in covered] == [(0, 6), (6, 10), (10, 12)]


@pytest.fixture
def segments():
    ledger = MemoryLedger()
    store = Segments(MemoryObjects(), ledger)
    store.recorded = ledger.recorded
    yield store
    store.close()


def test_writers_waiting_together_share_one_upload(segments):
    def write_and_sync(n):
        since = segments.current
        segments.append(("%036d" % n, "x.bin"), 0, b"data")
        segments.sync(segments.current, since)
    gevent.joinall([gevent.spawn(write_and_sync, n) for n in range(20)], raise_error=True)
    assert sum(len(extents) for _, extents in segments.recorded) == 20
    assert len(segments.recorded) <= 3  # the first upload alone, then the rest together


def test_bytes_of_a_lost_upload_are_never_acknowledged(segments):
    since = segments.current
    segments.append(A, 0, b"first")
    segments.objects.failing = True
    with pytest.raises(ObjectStoreError):
        segments.sync(segments.current, since)
    assert segments.end(A) is None  # not uploaded, not held: the writer starts again where the store ends
    segments.objects.failing = False
    since = segments.current
    segments.append(A, 0, b"first")
    segments.sync(segments.current, since)
    assert segments.recorded[-1][1] == [[A[0], A[1], 0, 5, 0]]


def test_a_writer_whose_earlier_bytes_were_lost_is_not_acknowledged_later(segments):
    since = segments.current
    segments.append(A, 0, b"first")
    segments.objects.failing = True
    failing = gevent.spawn(segments.sync, segments.current)  # someone else's sync: it fails
    failing.join()
    segments.objects.failing = False
    segments.append(A, 5, b"second")  # the writer goes on, unaware
    with pytest.raises(ObjectStoreError):
        segments.sync(segments.current, since)  # its bytes since `since` are not all there


def test_the_middle_of_a_stream_waits_to_share_an_upload_and_an_end_does_not(segments):
    def append_and_sync(n, wait):
        gevent.sleep(n * 0.05)
        since = segments.current
        segments.append(("%036d" % n, "x.bin"), 0, b"data")
        segments.sync(segments.current, since, wait)
    gevent.joinall([gevent.spawn(append_and_sync, n, 0.5) for n in range(6)], raise_error=True)
    assert len(segments.recorded) == 1  # six batches over 0.25 s: one upload
    append_and_sync(0, 0.0)
    assert len(segments.recorded) == 2  # an end is uploaded at once
    since, started = segments.current, time.monotonic()
    segments.append(("%036d" % 9, "x.bin"), 0, b"x" * SHARE_BELOW)  # a large body's middle
    segments.settle(("%036d" % 9, "x.bin"))  # its batch's acks come
    segments.sync(segments.current, since, 0.5)
    assert len(segments.recorded) == 3 and time.monotonic() - started < 0.25  # at once: worth its PUT
