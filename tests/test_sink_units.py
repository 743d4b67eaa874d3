"""How a log stream gathers its queued blocks into writes (LogStream._blocks), on its
own: with few log streams open, what is queued goes out at once; with many, each waits
BUSY_GATHER so that a token stream's events go out together (fewer, larger writes for the
proxy and the logging server)."""
import gevent
from gevent.queue import SimpleQueue

from orproxy.logclient import stream as sink
from orproxy.logclient.budget import Budget
from orproxy.logclient.stream import LogStream


class FakeSink(object):
    def __init__(self, active_streams):
        self.active_streams = active_streams
        self.budget = Budget()


def second_write(active_streams, gap):
    """The second write of a stream fed "a", then "b" `gap` s later, then "c" and "d"
    10 and 20 ms after that."""
    stream = LogStream(FakeSink(active_streams), "/x/response")
    stream.queue, stream.pending = SimpleQueue(), None  # started, without its PUT
    writes = stream._blocks()
    stream.write(b"a")
    assert next(writes) == [b"a"]  # a first block never waits
    gevent.sleep(gap)
    stream.write(b"b")
    gevent.spawn_later(0.01, stream.write, b"c")
    gevent.spawn_later(0.02, stream.write, b"d")
    return next(writes)


def test_with_few_streams_open_a_block_goes_out_at_once():
    assert second_write(1, 0.01) == [b"b"]


def test_with_many_streams_open_a_dense_streams_blocks_are_gathered():
    assert sink.BUSY_GATHER >= 0.05  # the margins these tests rely on
    assert second_write(sink.BUSY_STREAMS + 1, 0.01) == [b"b", b"c", b"d"]


def test_a_sparse_stream_does_not_wait_even_with_many_open():
    assert second_write(sink.BUSY_STREAMS + 1, sink.BUSY_GATHER + 0.05) == [b"b"]
