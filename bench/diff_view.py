"""The Diff tab on a long agent conversation: the API's time and the browser's render time.

Starts the fake upstream, an orlogserver and an orproxy (route /v1/ to the fake upstream's
agent endpoints, orproxy/testing/agent_api.py), and holds one OpenAI-chat conversation
through them until its request has --messages messages and about --tokens tokens (the
fake counts one token per 4 characters), with a tool call every few turns. Then, for the
last turn:

- `GET /api/requests/{id}/diff` against its previous turn (the everyday case) and against
  the second turn (`?against=`, the worst case: nearly every message is new), the median
  of --rounds calls each;
- the Diff tab of the exchange view in headless Chromium (playwright), opened as a user
  does and then compared with the second turn (its "Compare with" field), the medians of the UI's own measures (diffview.js): `orproxy:diff-fetch` (the API call as the page sees it),
  `orproxy:diff-render` (building the DOM and inserting it), `orproxy:diff-layout` (that
  plus style and layout) and `orproxy:diff-frame` (up to the next frame).

    .venv/bin/python bench/diff_view.py                 # 200 messages, 150k tokens, ~1 min
    .venv/bin/python bench/diff_view.py --serve         # then leave it running, to look at
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import requests

CHROMIUM = os.environ.get("ORPROXY_CHROMIUM", "/usr/bin/chromium")
LISTENING = re.compile(r"listening on (http://[0-9.]+:\d+)")
WORDS = ("the parser reads each frame and hands the decoded event to the writer which "
         "appends it to the log file then the index records its offset").split()


class Child:
    """A server process of the bench, its output in a file, its URL read from it."""

    def __init__(self, name: str, argv: list[str], workdir: str) -> None:
        self.out = os.path.join(workdir, name + ".out")
        with open(self.out, "wb") as f:
            self.proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.url = self._wait(name)

    def _wait(self, name: str) -> str:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with open(self.out, encoding="utf-8", errors="replace") as f:
                found = LISTENING.search(f.read())
            if found:
                return found.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        with open(self.out, encoding="utf-8", errors="replace") as f:
            raise SystemExit(f"{name} did not start:\n{f.read()[-2000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start(workdir: str) -> list[Child]:
    bindir = os.path.dirname(sys.executable)
    upstream = Child("fake_upstream", [sys.executable, "-m", "orproxy.testing.fake_upstream",
                                       "--host", "127.0.0.1", "--port", "0"], workdir)
    logserver = Child("orlogserver", [os.path.join(bindir, "orlogserver"), "--port", "0", "--priority", "normal",
                                      "--log-dir", os.path.join(workdir, "logs")], workdir)
    config = os.path.join(workdir, "config.yaml")
    with open(config, "w") as f:
        json.dump({"server": {"host": "127.0.0.1", "port": 0},
                   "logging": {"console": False, "server_url": logserver.url, "enabled": True},
                   "routes": [{"source": "/v1/", "destination": upstream.url + "/agent/v1/", "name": "agent"}]}, f)
    proxy = Child("orproxy", [os.path.join(bindir, "orproxy"), "--config", config, "--port", "0"], workdir)
    return [upstream, logserver, proxy]


def prose(n: int, chars: int) -> str:
    """`chars` characters of text unlike any other turn's (message n)."""
    words, size, i = [f"[turn {n}]"], 0, n
    while size < chars:
        word = WORDS[i % len(WORDS)] + ("" if i % 7 else f" #{n}.{i}")
        words.append(word)
        size += len(word) + 1
        i += 1
    return " ".join(words)


def hold_conversation(proxy: str, messages: int, tokens: int) -> list[str]:
    """Turns until the request has `messages` messages of about `tokens` tokens; their ids."""
    per_message = tokens * 36 // messages // 10  # 90%: the JSON around the texts counts too
    history = [{"role": "system", "content": "You are a coding agent. " + prose(0, 2000)}]
    ids: list[str] = []
    n = 0
    while len(history) < messages:
        n += 1
        text = prose(n, per_message)
        if n % 6 == 0:
            text = "please use tool read_file on src/module_%d.py " % n + text
        history.append({"role": "user", "content": text})
        answer = send(proxy, history, ids)
        message = answer["choices"][0]["message"]
        history.append({k: v for k, v in message.items() if k in ("role", "content", "tool_calls")})
        if message.get("tool_calls") and len(history) < messages:
            call = message["tool_calls"][0]
            history.append({"role": "tool", "tool_call_id": call["id"], "content": prose(n + 10_000, per_message * 2)})
            answer = send(proxy, history, ids)
            history.append({k: v for k, v in answer["choices"][0]["message"].items() if k in ("role", "content")})
    history.append({"role": "user", "content": "and now summarise what you found. " + prose(n + 1, 400)})
    send(proxy, history, ids)
    size = len(json.dumps(history))
    print(f"conversation: {len(ids)} turns, the last request has {len(history)} messages, "
          f"{size / 1e6:.2f} MB of JSON, ~{size // 4 // 1000}k tokens", flush=True)
    return ids


def send(proxy: str, history: list[dict], ids: list[str]) -> dict:
    answer = requests.post(proxy + "/v1/chat/completions", timeout=30, json={"model": "gpt-4o", "messages": history},
                           headers={"Authorization": "Bearer sk-bench-0123456789abcdef"})
    answer.raise_for_status()
    ids.append(answer.headers["X-Request-Id"])
    return answer.json()


def wait_linked(logserver: str, ids: list[str]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        row = requests.get(f"{logserver}/api/requests/{ids[-1]}", timeout=10)
        if row.status_code == 200 and row.json().get("previous_id") == ids[-2]:
            return
        time.sleep(0.2)
    raise SystemExit("the last turn was never linked to the one before")


def api_times(logserver: str, last: str, against: str | None, rounds: int) -> tuple[float, dict]:
    times, body = [], None
    for _ in range(rounds):
        started = time.perf_counter()
        answer = requests.get(f"{logserver}/api/requests/{last}/diff", params={"against": against} if against else None,
                              timeout=60)
        times.append((time.perf_counter() - started) * 1000)
        answer.raise_for_status()
        body = answer.json()
    return statistics.median(times), body


MEASURES = ("orproxy:diff-fetch", "orproxy:diff-render", "orproxy:diff-layout", "orproxy:diff-frame")
def browser_times(logserver: str, last: str, against: str, rounds: int) -> list[dict[str, float]]:
    """The medians of the UI's measures: the Diff tab as a user opens it, then compared
    with exchange `against` (its "Compare with" field)."""
    from playwright.sync_api import sync_playwright
    tab: dict[str, list[float]] = {name: [] for name in MEASURES}
    worst: dict[str, list[float]] = {name: [] for name in MEASURES}
    read = "(n) => performance.getEntriesByName(n)[0].duration"
    def wait_done():  # wait_for_function evaluates a string: the page's CSP forbids that
        deadline = time.monotonic() + 30
        while not page.evaluate("performance.getEntriesByName('orproxy:diff-frame').length > 0"):
            if time.monotonic() > deadline:
                raise SystemExit("the diff was never shown")
            time.sleep(0.02)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        for _ in range(rounds):
            page.goto(f"{logserver}/?id={last}")
            page.locator('[data-panel="conversation"] .turn.is-answer').wait_for()  # the exchange is shown
            page.wait_for_load_state("networkidle")
            page.locator('.tab[data-tab="diff"]').click()
            page.get_by_test_id("diff").wait_for()
            wait_done()
            for name in MEASURES:
                tab[name].append(page.evaluate(read, name))
            page.evaluate("performance.clearMeasures()")
            page.get_by_test_id("diff-against").fill(against)
            page.get_by_test_id("diff-compare").click()
            wait_done()
            for name in MEASURES:
                worst[name].append(page.evaluate(read, name))
        browser.close()
    return [{name: statistics.median(values) for name, values in found.items()} for found in (tab, worst)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=200)
    ap.add_argument("--tokens", type=int, default=150_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--serve", action="store_true", help="keep the servers running afterwards (Ctrl-C stops)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the servers are stopped on the way out
    with tempfile.TemporaryDirectory(prefix="diff-bench-") as workdir:
        children = start(workdir)
        upstream, logserver, proxy = children
        try:
            ids = hold_conversation(proxy.url, args.messages, args.tokens)
            wait_linked(logserver.url, ids)
            last = ids[-1]
            previous_ms, diff = api_times(logserver.url, last, None, args.rounds)
            print(f"GET /diff against the previous turn: {previous_ms:.0f} ms (median of {args.rounds}); "
                  f"counts {diff['counts']}", flush=True)
            worst_ms, worst = api_times(logserver.url, last, ids[1], args.rounds)
            print(f"GET /diff against the second turn:   {worst_ms:.0f} ms; counts {worst['counts']}", flush=True)
            if os.path.exists(CHROMIUM):
                shown = browser_times(logserver.url, last, ids[1], args.rounds)
                for label, found in zip(("the previous turn", "the second turn"), shown):
                    print(f"Diff against {label} in Chromium (medians): " + ", ".join(
                        f"{name.split(':')[1]} {ms:.1f} ms" for name, ms in found.items()), flush=True)
            else:
                print(f"no browser at {CHROMIUM}: the render was not measured")
            if args.serve:
                print(f"serving: {logserver.url}/?id={last}  (Ctrl-C stops)", flush=True)
                while True:
                    time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            for child in reversed(children):
                child.stop()


if __name__ == "__main__":
    main()
