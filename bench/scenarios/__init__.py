"""The benchmark's scenarios, one module each, registered in run order (issue 2's list;
issue 6 adds to it). Each runs against every available target in turn, stores raw results
in ctx.results[name] and appends table rows; goals are (op, threshold, issue) for the
proxy targets. See registry.py to add one.
"""
from bench.scenarios.common import CHAT, log_dir_size
from bench.scenarios.registry import FULL, QUICK, SCENARIOS, run_all, scenario

# Imported for their @scenario registration, in the order of a plain run.
from bench.scenarios import latency, rps, sse, tokens, bulk, logdown, streams10k, gunicorn  # noqa: E402,F401,I001
# Not in a plain run (default=False): --only websocket, --only index.
from bench.scenarios import websocket, index  # noqa: E402,F401,I001

__all__ = ["CHAT", "FULL", "QUICK", "SCENARIOS", "log_dir_size", "run_all", "scenario"]
