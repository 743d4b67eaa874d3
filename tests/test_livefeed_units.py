"""The pure parts of the live feed and tail: the tail's event follower (however its bytes are
split, gzip, bad bodies, bounds), the stream deltas of each API, and the hub that broadcasts
rows to the live clients. Unit tests (tests/test_livefeed.py runs the real processes)."""
import gzip
import json

import pytest

from orproxy.logserver.live.tail import TailEvents
from orproxy.logserver.llm import apis

SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"


def _events(chunks):
    out = []
    for blob in chunks:
        for block in blob.split(b"\n\n"):
            if not block.strip():
                continue
            lines = dict(line.split(": ", 1) for line in block.decode().split("\n"))
            out.append((lines.get("event"), json.loads(lines["data"])))
    return out


def _follow(data, sizes):
    follower = TailEvents()
    out, i = [], 0
    for size in sizes:
        out += follower.feed(data[i:i + size])
        i += size
    out += follower.feed(data[i:])
    out += follower.finish()
    return _events(out)


def test_the_follower_gives_the_same_events_however_the_bytes_are_split():
    body = b"".join(b'data: {"choices":[{"index":0,"delta":{"content":"t%d\\r\\n"}}]}\r\n\r\n' % i
                    for i in range(6)) + b"data: [DONE]\r\n\r\n"
    data = SSE_HEAD + body
    whole = _follow(data, [])
    for sizes in ([1] * len(data), [3, 7, 11, 13] * 40, [len(SSE_HEAD) + 1, 1, 1, 2]):
        split = _follow(data, sizes)
        text = "".join(d.get("text", "") for name, ds in split if name == "deltas" for d in ds)
        assert text == "".join("t%d\r\n" % i for i in range(6))
        assert "".join(d["text"] for name, d in split if name == "body") == body.decode()
    assert whole[0] == ("head", {"start_line": "HTTP/1.1 200 OK", "status": 200,
                                 "headers": [["Content-Type", "text/event-stream"]]})


def test_the_follower_decodes_gzip_and_utf8_split_mid_character():
    text = 'data: {"choices":[{"delta":{"content":"héllo ✓"}}]}\n\n'
    data = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: gzip\r\n\r\n" + \
        gzip.compress(text.encode())
    events = _follow(data, [1] * len(data))
    assert "".join(d["text"] for n, d in events if n == "body") == text
    assert [d for n, ds in events if n == "deltas" for d in ds] == [{"text": "héllo ✓"}]


def test_the_follower_reports_an_undecodable_body_and_keeps_going():
    data = b"HTTP/1.1 200 OK\r\nContent-Encoding: zstd\r\n\r\n\x28\xb5\x2f\xfd"
    events = _follow(data, [])
    assert [n for n, _ in events] == ["head", "notice"]


def test_the_follower_sends_a_bounded_body_and_then_only_the_end():
    from orproxy.logserver.live import tail
    follower = TailEvents()
    out = follower.feed(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
    block = b"x" * 65536
    while not follower.saturated:
        out += follower.feed(block)
    events = _events(out)
    assert sum(len(d["text"]) for n, d in events if n == "body") == tail.MAX_BODY_TEXT
    assert events[-1] == ("notice", {"message": "the body is too large to follow here; download it raw"})
    assert follower.feed(block) == []


def test_deltas_of_each_api():
    d = apis.delta
    assert d({"choices": [{"delta": {"content": "a", "reasoning": "r"}}]}) == {"text": "a", "reasoning": "r"}
    assert d({"choices": [{"delta": {"tool_calls": [{"index": 1, "id": "c", "function": {"name": "f", "arguments": "{"}}]}}]}) \
        == {"tool": {"index": 1, "id": "c", "name": "f", "arguments": "{"}}
    assert d({"choices": [{"delta": {}, "finish_reason": "stop"}]}) == {"finish": "stop"}
    assert d({"error": {"message": "rate limited"}}) == {"error": "rate limited"}
    assert d({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x"}}) == {"text": "x"}
    assert d({"type": "content_block_delta", "delta": {"type": "thinking_delta", "thinking": "y"}}) == {"reasoning": "y"}
    assert d({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "t", "name": "get"}}) \
        == {"tool": {"index": 2, "id": "t", "name": "get", "arguments": ""}}
    assert d({"type": "message_delta", "delta": {"stop_reason": "end_turn"}}) == {"finish": "end_turn"}
    assert d({"type": "response.output_text.delta", "delta": "z"}) == {"text": "z"}
    assert d("not json") == {} and d({"type": "ping"}) == {} and d({"choices": "odd"}) == {}


def test_the_hub_broadcasts_without_waiting_and_resets_a_slow_client(tmp_path):
    import gevent
    from orproxy.logserver.live import feed as livefeed
    from orproxy.logserver.store.index import Index

    index = Index(str(tmp_path))
    feed = livefeed.LiveFeed(index, interval=0.01)
    try:
        fast = feed.subscribe({}, None)
        slow = feed.subscribe({"state": ["in_flight"]}, None)
        assert json.loads(fast.get(1)[0])["type"] == "hello"
        for i in range(livefeed.QUEUE_SIZE + 5):
            index.put({"id": "%08d-0000-4000-8000-000000000000" % i, "rev": 1, "parts": {},
                       "timestamp": "2026-01-01_00-00-00.000", "proxy": {"started_at": 1000.0 + i}})
            index.flush(5)
            assert feed.poll() is False
            message, seq, last = fast.get(1)
            assert json.loads(message)["items"][0]["started_at"] == 1000.0 + i
        items = [slow.get(0) for _ in range(slow.queue.qsize())]
        assert items[-1][2] is True and json.loads(items[-1][0]) == {"type": "reset", "reason": "client too slow"}
        assert len(items) == 1
        with pytest.raises(Exception):
            feed.subscribe({"status": ["nope"]}, None)
        feed.close()
        assert fast.get(1) == ("", None, True)
        gevent.sleep(0.05)
    finally:
        index.close()


def test_the_hub_tells_every_client_of_deletions_and_a_row_written_again_wins(tmp_path):
    from orproxy.logserver.live import feed as livefeed
    from orproxy.logserver.store.index import Index, delete_rows, last_seq
    from orproxy.logserver.store.logdir import LogDir
    from orproxy.logserver.store.retention import Retention

    index = Index(str(tmp_path))
    # The test polls by hand: the feed's own poller (subscribe starts it) must not poll
    # between the writes that the test means as one batch, as it did at intervals of 10 ms
    # while index.flush waited for the writer thread.
    feed = livefeed.LiveFeed(index, interval=3600)
    ids = ["%08d-0000-4000-8000-000000000000" % i for i in range(4)]

    def put(i, started_at=1000.0, route="a"):
        index.put({"id": ids[i], "rev": 1, "parts": {}, "timestamp": "2026-01-01_00-00-00.000",
                   "proxy": {"started_at": started_at + i, "route": route}})
        index.flush(5)

    def message(subscriber):
        return json.loads(subscriber.get(1)[0])

    try:
        for i in range(4):
            put(i)
        everyone = feed.subscribe({}, None)
        route_b = feed.subscribe({"route": ["b"]}, None)
        seq = message(everyone)["seq"]
        assert message(route_b)["type"] == "hello"
        index.write(delete_rows, [ids[0], "no-such-id"])
        assert feed.poll() is False
        for subscriber in (everyone, route_b):
            got = message(subscriber)
            assert (got["items"], got["removed"], got["deleted"]) == ([], [ids[0]], [ids[0]])
            assert got["seq"] == seq + 1 == index.read(last_seq)
        # Retention's deletions travel the same way; the seq never goes back.
        Retention(LogDir(str(tmp_path / "logs")), index, max_age=60).run_once(now=1000.0 + 3 + 61)
        assert feed.poll() is False
        for subscriber in (everyone, route_b):
            assert message(subscriber)["deleted"] == [ids[1], ids[2], ids[3]]
        assert index.read(last_seq) == seq + 4
        # Written again after its deletion (more parts of an exchange deleted in flight):
        # in one batch with its tombstone, the row wins.
        index.write(delete_rows, [ids[3]])  # already gone: no tombstone, no seq
        put(1, route="b")
        index.write(delete_rows, [ids[1]])
        put(1, route="b")
        assert feed.poll() is False
        got = message(route_b)
        assert [i["id"] for i in got["items"]] == [ids[1]] and got["deleted"] == [] and got["seq"] == seq + 7
        # A client coming back from before all that catches up on the deletions too.
        late = feed.subscribe({}, seq)
        assert message(late)["type"] == "hello"
        got = message(late)
        assert [i["id"] for i in got["items"]] == [ids[1]]
        assert set(got["deleted"]) == {ids[0], ids[2], ids[3]} and got["seq"] == seq + 7
        feed.close()
    finally:
        index.close()
