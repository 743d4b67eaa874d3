"""Checking HAR documents: against the HAR 1.2 JSON Schema shipped in tests/fixtures/har
(written from the spec; its $comment cites it) and against the spec's rules a schema
cannot say (entry.time is the sum of the timings that apply)."""
import json
from pathlib import Path

import jsonschema

SCHEMA = json.loads((Path(__file__).resolve().parent / "fixtures" / "har" / "har-1.2.schema.json").read_text())
_VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def check_har(har):
    """Assert that `har` (a dict) is a valid HAR 1.2 document written by orproxy; return its entries."""
    errors = sorted(_VALIDATOR.iter_errors(har), key=lambda e: list(e.absolute_path))
    assert not errors, "not HAR 1.2: " + "; ".join(
        "%s at %s" % (e.message[:200], list(e.absolute_path)) for e in errors[:5])
    log = har["log"]
    assert log["version"] == "1.2" and log["creator"]["name"] == "orproxy"
    for entry in log["entries"]:
        timings = entry["timings"]
        applying = sum(v for k, v in timings.items() if k != "comment" and v >= 0)
        assert abs(entry["time"] - applying) < 0.01, (entry["time"], timings)
    return log["entries"]


def load_har(body):
    """A HAR download's bytes, parsed and checked; returns (document, entries)."""
    har = json.loads(body)
    return har, check_har(har)
