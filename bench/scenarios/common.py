"""What several scenarios share: the chat completion path, per-target figures
pulled out of raw results, added-vs-direct values, and what the logging server holds.
"""
import json
import os

from bench.targets import API


CHAT = API + "/chat/completions"
LOG_CATCHUP_S = 20  # how long a scenario waits for a logging server to go idle


def figures(per, key, sub=None):
    out = {}
    for name, res in per.items():
        v = res.get(key) if isinstance(res, dict) else None
        if sub is not None:
            v = v.get(sub) if isinstance(v, dict) else None
        out[name] = v
    return out


def added(values, ref="direct"):
    base = values.get(ref)
    if not isinstance(base, (int, float)):
        return {}
    return {k: (v - base if isinstance(v, (int, float)) else None)
            for k, v in values.items()}


def metadata_files(log_dir):
    out = set()
    for root, _, files in os.walk(log_dir):
        out.update(os.path.join(root, f) for f in files if f.endswith("_metadata.json"))
    return out


def log_completeness(log_dir, before, window=None):
    """What the logging server holds for the exchanges since `before`: how many have
    their request and response parts complete and the proxy's metadata with nothing
    dropped; the bytes the proxy reports it could not log. With `window` (start, end):
    only the exchanges the proxy started within it, probes included."""
    out = {"exchanges": 0, "complete": 0, "with_response": 0, "with_proxy_meta": 0,
           "dropped_bytes": 0, "unreadable": 0}
    for path in sorted(metadata_files(log_dir) - before)[:100000]:
        try:
            with open(path, "rb") as f:
                doc = json.loads(f.read())
        except (OSError, ValueError):
            out["unreadable"] += 1
            continue
        proxy = doc.get("proxy") or {}
        if window is None and proxy.get("path", "").endswith("/chat/completions"):
            continue  # the probe before the scenario
        if window is not None and not window[0] <= (proxy.get("started_at") or 0) <= window[1]:
            continue  # only the exchanges of the measured load, not its warm-up

        out["exchanges"] += 1
        parts = doc.get("parts") or {}
        response = (parts.get("response") or {}).get("complete") is True
        request = (parts.get("request") or {}).get("complete") is True
        dropped = proxy.get("log_dropped_bytes") or 0
        out["dropped_bytes"] += dropped
        out["with_response"] += response
        out["with_proxy_meta"] += bool(proxy)
        out["complete"] += bool(request and response and proxy and not dropped)
    return out


def log_dir_size(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total
