"""Property tests (hypothesis) of the parsers that meet hostile bytes: the request head
rules, the response parser's de-chunking, the batch format, the spool reader and the LLM
derivation. Each holds for whatever bytes come: a clean refusal or a right answer, never
another exception. `make test` runs a few hundred inputs each; `make fuzz` many more
(HYPOTHESIS_PROFILE=fuzz)."""
import io
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orproxy import logwire
from orproxy.hosting.framing import HeadLimits, Refused, framing, read_fields, request_line
from orproxy.http1 import MalformedResponse, ResponseParser
from orproxy.logclient.spool import Spool
from orproxy.logserver.llm import derive
from orproxy.logserver.llm.bodies import parse_body
from orproxy.logserver.llm.httpfile import parse_message

settings.register_profile("default", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.register_profile("fuzz", max_examples=20000, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

pytestmark = pytest.mark.fuzz
TOKEN = st.text(alphabet="!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
                min_size=1, max_size=20)
VALUE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"),
                max_size=40).map(str.strip)


@given(st.binary(max_size=300))
def test_any_bytes_as_a_head_are_read_or_refused(data):
    line, _, rest = data.partition(b"\n")
    try:
        request_line(line + b"\n")
        pairs = read_fields(io.BytesIO(rest + b"\r\n\r\n"), HeadLimits(), len(line) + 1)
        framing(pairs)
    except Refused as refused:
        assert refused.status[:3] in ("400", "431", "501")


@given(st.lists(st.tuples(TOKEN, VALUE), max_size=20))
def test_valid_fields_read_back_as_sent(pairs):
    head = b"".join(f"{n}: {v}\r\n".encode("latin-1") for n, v in pairs) + b"\r\n"
    assert read_fields(io.BytesIO(head), HeadLimits(), 0) == pairs


@given(st.lists(st.binary(min_size=1, max_size=50), max_size=10), st.lists(st.integers(1, 40), min_size=1))
def test_a_chunked_response_is_de_chunked_whatever_its_pieces(chunks, cuts):
    wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    wire += b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    parser, at, i = ResponseParser(), 0, 0
    while at < len(wire):
        step = cuts[i % len(cuts)]
        parser.feed(wire[at:at + step])
        at, i = at + step, i + 1
    assert parser.complete and b"".join(parser.chunks) == b"".join(chunks)


@given(st.binary(max_size=400))
def test_any_bytes_as_a_response_are_parsed_or_refused(data):
    parser = ResponseParser()
    try:
        parser.feed(b"HTTP/1.1 200 OK\r\n" + data)
    except MalformedResponse:
        pass


@given(st.binary(max_size=400))
def test_any_bytes_as_a_batch_are_records_or_refused(data):
    try:
        for record in logwire.records(data):
            assert len(record.data) <= len(data)
    except logwire.BadBatch:
        pass


@given(st.lists(st.binary(max_size=200), min_size=1, max_size=8), st.integers(0, 10_000),
       st.integers(0, 255), st.booleans())
def test_a_damaged_spool_gives_only_records_that_were_written(tmp_path_factory, payloads, where, value, tear):
    directory = str(tmp_path_factory.mktemp("spool"))
    writer = Spool(directory, 1 << 30)
    for payload in payloads:
        writer.append((payload,), len(payload))
    path = writer.segments[0].path
    writer.segments[0].close(remove=False)
    writer.segments = []
    data = bytearray(Path(path).read_bytes())
    if tear:
        data = data[:where % (len(data) + 1)]
    elif data:
        data[where % len(data)] = value
    Path(path).write_bytes(bytes(data))
    reader = Spool(directory, 1 << 30)
    read, _ = reader.read(1 << 30)
    assert all(record in payloads for record in read)
    reader.close()


JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                       lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
                       max_leaves=30)


@given(JSONISH, JSONISH, st.sampled_from(["application/json", "text/event-stream", "text/plain", ""]))
def test_derivation_takes_any_json_without_failing(request_json, answer_json, content_type):
    import json
    request = parse_message(b"POST /v1/chat/completions HTTP/1.1\r\n\r\n" + json.dumps(request_json).encode(), 1 << 20)
    body = json.dumps(answer_json).encode()
    if content_type == "text/event-stream":
        body = b"data: " + body + b"\n\ndata: [DONE]\n\n"
    response = parse_message(b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type.encode() + b"\r\n\r\n" + body, 1 << 20)
    fields = derive.derive(parse_body(request), parse_body(response), "/v1/chat/completions")
    assert set(fields) == set(derive.FIELDS)
