"""The batch ingest format between orproxy and orlogserver: `POST /ingest`, and its acks.

The plain streaming `PUT /{uuid}/request|response` of the contract (and of the original Go
program, which speaks only that) cannot say where a retry resumes, costs the logging
server one HTTP request per part, and holds a connection per open stream. Between orproxy
and orlogserver the log goes in batches instead: one request carries appends to many
parts, each at an offset, and the answer says how long each part now is. A retry resends
from what was acknowledged; whatever the logging server already holds it skips. So every
byte lands once, in order, whatever broke in between (CONTRACT.md, "Logging stream").

A batch body is a series of records, each a header line and its data:

    P <uuid> <kind> <t0> <t> <offset> <size> <final>\\n<size bytes>   an append to a part
    M <uuid> <size>\\n<size bytes>                                   the proxy's metadata (JSON)

`kind` is request or response; `t0` is when the exchange started and `t` when the part
did (epoch seconds, the proxy's clock: the logging server names the files by them, so a
resent part finds its file again); `final` is 1 on the part's last append. The answer (201,
`X-Orlogserver-Ingest: 2`) is JSON `{"acks": [...]}`, one integer per record: the part's
length after it (a metadata record: 0). Its `X-Orlogserver-Batch-Bytes` says how much log
data the next batches should carry at most, as suits the server's store: BATCH_BYTES for
the log dir, more for an object store, whose multipart parts a batch should be able to
fill (store/uploads.py). Without it (an older server), BATCH_BYTES.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

PATH = "/ingest"
PROTOCOL = "2"
PROTOCOL_HEADER = "X-Orlogserver-Ingest"
CONTENT_TYPE = "application/x-orproxy-log"
MAX_BATCH = 16 * 1024 * 1024        # bytes of one batch body the logging server accepts
BATCH_HEADER = "X-Orlogserver-Batch-Bytes"
BATCH_BYTES = 4 * 1024 * 1024       # of log data a batch carries at most, unless the server says
KINDS = ("request", "response")


class BadBatch(ValueError):
    """A batch body that does not follow the format above."""


class Append(NamedTuple):  # tuples: a batch holds thousands, and a dataclass costs 3x to make
    exchange_id: str
    kind: str
    t0: float
    t: float
    offset: int
    data: memoryview | bytes
    final: bool


class Metadata(NamedTuple):
    exchange_id: str
    data: memoryview | bytes


Record = Append | Metadata


def append_head(exchange_id: str, kind: str, t0: float, t: float, offset: int, size: int,
                final: bool) -> bytes:
    return b"P %s %s %.6f %.6f %d %d %d\n" % (exchange_id.encode(), kind.encode(), t0, t, offset, size, final)


def metadata_head(exchange_id: str, size: int) -> bytes:
    return b"M %s %d\n" % (exchange_id.encode(), size)


def records(body: bytes | memoryview) -> Iterator[Record]:
    """The records of a batch body, their data as views into it; BadBatch when malformed."""
    view = memoryview(body)
    raw = bytes(view) if not isinstance(body, bytes) else body
    at = 0
    while at < len(raw):
        start = at
        end = raw.find(b"\n", at, at + 512)
        if end < 0:
            raise BadBatch(f"no record header at byte {start}")
        fields = raw[at:end].split(b" ")
        at = end + 1
        try:
            if fields[0] == b"P" and len(fields) == 8:
                size = int(fields[6])
                record: Record = Append(fields[1].decode("ascii"), fields[2].decode("ascii"),
                                        float(fields[3]), float(fields[4]), int(fields[5]),
                                        view[at:at + size], fields[7] == b"1")
                if record.kind not in KINDS or record.offset < 0:
                    raise ValueError(f"kind {record.kind!r}, offset {record.offset}")
            elif fields[0] == b"M" and len(fields) == 3:
                size = int(fields[2])
                record = Metadata(fields[1].decode("ascii"), view[at:at + size])
            else:
                raise ValueError("unknown record type")
        except (ValueError, UnicodeDecodeError) as e:
            raise BadBatch(f"the record at byte {start}: {e}") from None
        if size < 0 or at + size > len(raw):
            raise BadBatch(f"a record's data runs past the end of the batch (byte {at})")
        at += size
        yield record
