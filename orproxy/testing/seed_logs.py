"""A log directory full of made-up exchanges, written as the logging server writes them.

Used by the index tests (1,000 exchanges, then checked filter by filter) and by the
benchmark's index scenario (100,000). Deterministic for a given seed. Each exchange gets its
metadata file (with the proxy's metadata and the derived LLM fields already in it, as
after a live run), its `.ids` link, and, unless `bins=False`, small `.bin` parts: filler
bytes, or with `texts=True` real HTTP messages whose chat bodies hold words (a Zipf-like
draw from a made-up vocabulary, so that a search finds common words often and rare ones
seldom), for the full-text index.

    python -m orproxy.testing.seed_logs DIR [--count N] [--seed S]
    (then: orlogserver --reindex --log-dir DIR)
"""
from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import random
import uuid
from typing import Any

from orproxy.logserver.llm import derive
from orproxy.logserver.store.logdir import timestamp

BASE_TIME = 1_760_000_000.0  # 2025-10-09 08:53:20 UTC
ROUTES = {
    "openrouter": ("/api/v1/chat/completions", ["openai/gpt-4o-mini", "anthropic/claude-sonnet-4",
                                                "google/gemini-2.5-flash", "meta-llama/llama-3.3-70b"]),
    "openai": ("/v1/chat/completions", ["gpt-4o-mini", "gpt-4.1", "o3-mini"]),
    "anthropic": ("/anthropic/v1/messages", ["claude-sonnet-4-20250514", "claude-3-5-haiku-20241022"]),
    "local": ("/local/v1/chat/completions", ["llama3.2:3b"]),
}
PROVIDERS = {"openai/": "OpenAI", "anthropic/": "Anthropic", "google/": "Google", "meta-llama/": "Together"}
STATUSES = [200] * 40 + [400, 401, 429, 429, 500, 502, 503]


def make_document(i: int, rng: random.Random, base_time: float = BASE_TIME) -> dict[str, Any]:
    """The metadata document of exchange number `i` (one every ~2 s; some share a start)."""
    exchange_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    tie = i % 10 < 3  # exchanges i0, i1 and i2 start at the same instant (cursor ties)
    started = base_time + (i - i % 10 if tie else i) * 2.0 + (0 if tie else rng.random())
    route = rng.choice(sorted(ROUTES))
    path, models = ROUTES[route]
    model = rng.choice(models)
    method = "GET" if rng.random() < 0.03 else "POST"
    status = rng.choice(STATUSES)
    error = None
    if rng.random() < 0.02:
        error, status = "upstream_unreachable", 502
    elif rng.random() < 0.02:
        error = "client_disconnected"
    streamed = rng.random() < 0.6
    ttft = rng.uniform(0.05, 2.0)
    duration = ttft + rng.uniform(0.01, 20.0)
    prompt, completion = rng.randint(10, 20000), rng.randint(1, 4000)
    api = "anthropic" if route == "anthropic" else "openai"
    ok = status == 200 and error is None
    derived: dict[str, Any] = dict.fromkeys(derive.FIELDS)
    derived.update({
        "version": derive.VERSION, "parts": ["request", "response"], "api": api,
        "model_requested": model, "stream": streamed, "message_count": rng.randint(1, 40),
        "tools_offered": rng.choice([None, 0, 3]),
        "model_answered": (model + ("-2025-04-14" if route == "openai" else "")) if ok else None,
        "provider": next((p for k, p in PROVIDERS.items() if model.startswith(k)), None)
        if route == "openrouter" and ok else None,
        "finish_reason": rng.choice(["stop", "length", "tool_calls"]) if ok else None,
        "tool_calls": ["get_weather"] if ok and rng.random() < 0.1 else ([] if ok else None),
        "prompt_tokens": prompt if ok else None, "completion_tokens": completion if ok else None,
        "total_tokens": prompt + completion if ok else None,
        "cached_tokens": rng.choice([0, 0, 1024]) if ok else None,
        "cost": round((prompt * 0.15 + completion * 0.6) / 1e6, 8) if ok and route == "openrouter" else None,
        "error_message": None if ok else f"error {status}: {'rate limited' if status == 429 else 'failed'}",
        "prompt_preview": f"question {i} about {rng.choice(['cats', 'dogs', 'tax', 'rust'])}",
        "reply_preview": f"answer {i}" if ok else None,
    })
    prefix_ts = timestamp(started)
    request_bytes, response_bytes = rng.randint(100, 50000), rng.randint(50, 20000)
    state = rng.random()
    document: dict[str, Any] = {
        "id": exchange_id, "timestamp": prefix_ts, "rev": 7,
        "parts": {
            "request": {"file": f"{prefix_ts}_{exchange_id[:8]}_request.bin", "received_at": started + 0.001,
                        "complete": True, "bytes": request_bytes + 200, "completed_at": started + 0.002,
                        "head": {"method": method, "path": path, "content_type": "application/json"}},
            "response": {"file": f"{timestamp(started + ttft)}_{exchange_id[:8]}_response.bin",
                         "received_at": started + ttft, "complete": True, "bytes": response_bytes + 150,
                         "completed_at": started + duration,
                         "head": {"status": status, "content_type":
                                  "text/event-stream" if streamed else "application/json"}},
        },
        "derived": derived,
    }
    if state < 0.01:  # in flight: no proxy metadata, the response still arriving
        response = document["parts"]["response"]
        response.update(complete=False, bytes=0)
        del response["completed_at"]
        document["derived"] = None
    elif state < 0.02:  # the proxy died: a part broke off, no proxy metadata
        document["parts"]["response"]["complete"] = False
        document["parts"]["response"]["error"] = "connection reset"
    else:
        document["proxy"] = {
            "id": exchange_id, "route": route, "method": method, "path": path,
            "upstream_url": f"https://{route}.example{path}", "client_addr": "127.0.0.1",
            "status": status, "error": error, "streamed": streamed, "started_at": started,
            "upstream_headers_at": started + ttft * 0.9, "first_byte_at": started + ttft,
            "ended_at": started + duration, "request_bytes": request_bytes,
            "response_bytes": response_bytes, "log_dropped_bytes": 0,
        }
    if document["derived"] is None:
        del document["derived"]
    return document


def write_exchange(log_dir: str, document: dict[str, Any], bins: bool = True) -> None:
    exchange_id = document["id"]
    prefix = f"{document['timestamp']}_{exchange_id[:8]}"
    with open(os.path.join(log_dir, f"{prefix}_metadata.json"), "w", encoding="utf-8") as f:
        json.dump(document, f, indent=1)
    os.symlink(prefix, os.path.join(log_dir, ".ids", exchange_id))
    if bins:
        for kind, part in document["parts"].items():
            with open(os.path.join(log_dir, part["file"]), "wb") as f:
                f.write(b"x" * part["bytes"])


_SYLLABLES = ("ka", "lo", "mi", "ren", "tus", "pa", "vel", "or", "shi", "na", "dor", "ex", "qui", "bra", "zu")
VOCABULARY = ["".join(random.Random(n).choices(_SYLLABLES, k=2 + n % 3)) + str(n) for n in range(20_000)]


@functools.lru_cache(maxsize=1)
def corpus() -> str:
    """4 MB of words, drawn with word n n times rarer than the first (made once)."""
    weights = itertools.accumulate(1.0 / (rank + 1) for rank in range(len(VOCABULARY)))
    return " ".join(random.Random(0).choices(VOCABULARY, cum_weights=list(weights), k=500_000))


def _words(rng: random.Random, size: int) -> str:
    """`size` characters of text, a slice of the corpus at a random place."""
    text = corpus()
    start = rng.randrange(len(text) - size)
    return text[start:start + size]


def write_text_parts(log_dir: str, document: dict[str, Any], rng: random.Random) -> None:
    """Real request and response messages for `document`'s parts (texts=True), sized as its
    proxy metadata says, within 8 KB of prompt and 2 KB of answer (9 KB of text on average)."""
    proxy = document.get("proxy") or {}
    derived = document.get("derived") or {}
    parts = document["parts"]
    prompt = _words(rng, min(proxy.get("request_bytes") or 2000, 8000))
    body = json.dumps({"model": derived.get("model_requested") or "gpt-4o-mini", "stream": bool(proxy.get("streamed")),
                       "messages": [{"role": "system", "content": "You are helpful."},
                                    {"role": "user", "content": prompt}]}).encode()
    request = (f"POST {parts['request']['head']['path']} HTTP/1.1\r\nHost: upstream\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    answer = _words(rng, min(proxy.get("response_bytes") or 500, 2000))
    if parts["response"]["head"]["content_type"] == "text/event-stream":
        chunks = [answer[k:k + 400] for k in range(0, len(answer), 400)]
        payload = "".join("data: %s\n\n" % json.dumps({"choices": [{"delta": {"content": c}}]}) for c in chunks)
        response = ("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + payload + "data: [DONE]\n\n").encode()
    else:
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]})
        response = ("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + payload).encode()
    for kind, data in (("request", request), ("response", response)):
        with open(os.path.join(log_dir, parts[kind]["file"]), "wb") as f:
            f.write(data)
        parts[kind]["bytes"] = len(data)


def seed(log_dir: str, count: int, seed_value: int = 1, bins: bool = True,
         base_time: float = BASE_TIME, texts: bool = False) -> list[dict[str, Any]]:
    """Write `count` exchanges into `log_dir`; returns their documents."""
    os.makedirs(os.path.join(log_dir, ".ids"), exist_ok=True)
    rng = random.Random(seed_value)
    text_rng = random.Random(seed_value + 1)  # the other fields stay as without texts
    documents = []
    for i in range(count):
        document = make_document(i, rng, base_time)
        if texts:
            write_text_parts(log_dir, document, text_rng)
        write_exchange(log_dir, document, bins and not texts)
        documents.append(document)
    return documents


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("log_dir")
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-bins", action="store_true", help="metadata files only")
    ap.add_argument("--texts", action="store_true", help="parts with chat texts, for the search index")
    args = ap.parse_args()
    seed(args.log_dir, args.count, args.seed, not args.no_bins, texts=args.texts)
    print(f"wrote {args.count} exchanges into {args.log_dir}")


if __name__ == "__main__":
    main()
