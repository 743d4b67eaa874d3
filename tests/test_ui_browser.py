"""The logging UI in real headless Chromium (Debian's `chromium`, driven by playwright).

Real processes: the fake upstream, an orlogserver of this module's own (its own log dir,
so the list holds only these tests' exchanges, and a test may restart it) and an
orproxy logging to it. Without /usr/bin/chromium these tests are skipped, unless
ORPROXY_REQUIRE_BROWSER=1 (CI) makes that a failure. ORPROXY_SCREENSHOTS=<dir> saves the
README's screenshots there (docs/).
"""
import os
import re
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from live_helpers import Stack, StreamingChat, send_chat, wait_row

pytestmark = pytest.mark.both_indexes  # with SQLite and with PostgreSQL (conftest.py)

CHROMIUM = os.environ.get("ORPROXY_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run"]
VIEWPORT = {"width": 1440, "height": 900}  # a laptop screen


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        message = "no browser at %s (apt-get install chromium)" % CHROMIUM
        if os.environ.get("ORPROXY_REQUIRE_BROWSER") == "1":
            pytest.fail(message + ", and ORPROXY_REQUIRE_BROWSER=1")
        pytest.skip(message)
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 (only with a browser)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, _fake_upstream_session, index_args):
    stack = Stack(tmp_path_factory, _fake_upstream_session.url, "ui", index=index_args())
    yield stack
    stack.close()


@pytest.fixture
def page(browser, stack):
    """A fresh page; an uncaught script error anywhere fails the test."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(10000)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto_ui = lambda query="": (page.goto(stack.logserver.url + "/" + query), _wait_live(page))
    yield page
    context.close()
    assert not errors, errors


def _expect():
    from playwright.sync_api import expect
    return expect


def _wait_live(page, transport=None):
    expect = _expect()
    expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
    if transport:
        expect(page.locator("#live-status .label")).to_have_text(transport)


def row_of(page, exchange_id):
    return page.locator('tr[data-id="%s"]' % exchange_id)


# -- tests -------------------------------------------------------------------------------

def test_a_streaming_request_is_listed_in_flight_tailed_live_and_finishes(page, stack):
    expect = _expect()
    page.goto_ui()
    chat = StreamingChat(stack.proxy.url, "openai/gpt-4o-mini", events=30, interval_ms=150).start()
    started = time.monotonic()
    row = row_of(page, chat.id)
    expect(row).to_have_class(re.compile(r"\bin-flight\b"), timeout=3000)
    assert time.monotonic() - started < 2.0
    assert not chat.done.is_set(), "the row must appear while the answer is still streaming"
    expect(row.locator(".dot")).to_have_class(re.compile("s-flight"))

    row.click()
    answer = page.get_by_test_id("live-answer")
    expect(answer).to_contain_text("tok2 ", timeout=5000)
    early = answer.text_content()
    expect(answer).to_contain_text("tok12 ", timeout=5000)
    assert len(answer.text_content()) > len(early)
    assert not chat.done.is_set(), "the tail must grow while the answer streams"
    assert "id=" + chat.id in page.url
    expect(row.locator(".c-model")).to_have_text("openai/gpt-4o-mini")  # known from the request
    assert not chat.done.is_set()

    chat.wait()
    expect(row.locator(".c-status")).to_have_text("200", timeout=10000)
    expect(row.locator(".c-tok")).to_have_text("12 → 30", timeout=10000)
    expect(row).not_to_have_class(re.compile(r"\bin-flight\b"))
    expect(row.locator(".c-model")).to_have_text("openai/gpt-4o-mini")
    # The tail has ended: the detail shows the parsed exchange now.
    expect(page.locator(".turn.is-answer")).to_contain_text("tok29")
    expect(page.get_by_test_id("detail-status")).to_have_text("200")
    expect(page.locator(".tab", has_text="Events (34)")).to_be_visible()


def test_filter_by_model_narrows_the_list_live_and_lives_in_the_url(page, stack):
    expect = _expect()
    prefix = "acme-%s" % uuid.uuid4().hex[:6]
    alpha, beta = prefix + "/alpha", prefix + "/beta"
    first = [send_chat(stack.proxy.url, m) for m in (alpha, beta)]
    for rid, model in zip(first, (alpha, beta)):
        wait_row(stack.logserver.url, rid, lambda r, m=model: r["model"] == m and r["state"] == "complete")
    page.goto_ui()
    page.fill("#f-model", alpha)
    rows = page.locator("#requests tr[data-id]")
    expect(rows).to_have_count(1)
    expect(row_of(page, first[0])).to_be_visible()
    expect(page).to_have_url(re.compile(r"[?&]model=" + re.escape(quote(alpha, safe=""))))

    later_alpha = send_chat(stack.proxy.url, alpha)
    later_beta = send_chat(stack.proxy.url, beta)
    expect(row_of(page, later_alpha)).to_be_visible(timeout=5000)
    wait_row(stack.logserver.url, later_beta, lambda r: r["model"] == beta)
    page.wait_for_timeout(700)  # more than two polls of the live feed
    expect(row_of(page, later_beta)).to_have_count(0)
    expect(rows).to_have_count(2)

    page.goto(page.url)  # the URL is the view: shared, it shows the same
    expect(page.locator("#f-model")).to_have_value(alpha)
    expect(rows).to_have_count(2)
    page.fill("#f-model", prefix + "/*")
    expect(rows).to_have_count(4)
    page.click("#clear-filters")
    expect(page.locator("#f-model")).to_have_value("")
    assert "model=" not in page.url


def test_a_deleted_exchange_leaves_the_list_and_its_open_detail_says_so(page, stack):
    expect = _expect()
    model = "deleted-%s" % uuid.uuid4().hex[:6]
    kept, doomed = send_chat(stack.proxy.url, model), send_chat(stack.proxy.url, model)
    for rid in (kept, doomed):
        wait_row(stack.logserver.url, rid, lambda r: r["state"] == "complete" and r["model"] == model)
    page.goto_ui("?id=" + doomed)
    expect(row_of(page, doomed)).to_be_visible()
    expect(page.get_by_test_id("detail-status")).to_have_text("200")
    response = requests.delete("%s/api/requests/%s" % (stack.logserver.url, doomed), timeout=5)
    assert response.status_code == 200
    expect(row_of(page, doomed)).to_have_count(0, timeout=3000)  # no reload
    expect(page.get_by_test_id("detail-deleted")).to_be_visible()
    expect(row_of(page, kept)).to_be_visible()


def test_hostile_content_is_shown_as_text_and_never_runs(page, stack):
    expect = _expect()
    evil = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
    rid = send_chat(stack.proxy.url, evil, content="<b>bold?</b> " + evil)  # the answer echoes the model
    wait_row(stack.logserver.url, rid, lambda r: r["model"] == evil and r["state"] == "complete")
    page.goto_ui("?id=" + rid)  # a shared link opens the exchange
    expect(row_of(page, rid).locator(".c-model")).to_have_text(evil)
    expect(page.locator(".turn.role-user")).to_contain_text("<b>bold?</b> " + evil)
    page.keyboard.press("2")  # the Response tab
    response = page.locator('[data-panel="response"]')
    expect(response).to_be_visible()
    expect(response).to_contain_text("<script>window.__pwned=2</script>")
    page.keyboard.press("3")
    expect(page.locator('[data-panel="request"]')).to_contain_text("<b>bold?</b>")
    page.wait_for_timeout(300)
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#main img, #main script, #main b").count() == 0


def test_the_live_feed_recovers_after_the_logging_server_restarts(page, stack):
    expect = _expect()
    page.goto_ui()
    page.evaluate("window.__same_page = true")
    status = page.locator("#live-status")
    stack.logserver.stop()
    expect(status).to_have_attribute("data-state", "reconnecting", timeout=5000)
    stack.logserver.start()
    expect(status).to_have_attribute("data-state", "live", timeout=10000)
    # The proxy leaves a logging server that refused it alone for a second: retry until logged.
    # Any of the exchanges sent meanwhile will do: each is logged a moment after its answer.
    deadline, sent = time.monotonic() + 10, []
    while True:
        sent.append(send_chat(stack.proxy.url, "after/restart"))
        time.sleep(0.3)
        logged = [rid for rid in sent
                  if requests.get("%s/api/requests/%s" % (stack.logserver.url, rid), timeout=5).status_code == 200]
        if logged:
            rid = logged[-1]
            break
        assert time.monotonic() < deadline, "the proxy never logged again"
    expect(row_of(page, rid)).to_be_visible(timeout=5000)
    expect(row_of(page, rid).locator(".c-status")).to_have_text("200", timeout=5000)
    assert page.evaluate("window.__same_page") is True, "it must recover without a reload"


def test_without_websockets_the_feed_falls_back_to_sse(page, stack):
    expect = _expect()
    page.add_init_script("window.WebSocket = undefined")
    page.goto(stack.logserver.url + "/")
    _wait_live(page, "live (SSE)")
    chat = StreamingChat(stack.proxy.url, "sse/fallback", events=12, interval_ms=100).start()
    expect(row_of(page, chat.id)).to_have_class(re.compile(r"\bin-flight\b"), timeout=3000)
    chat.wait()
    expect(row_of(page, chat.id).locator(".c-tok")).to_have_text("12 → 12", timeout=10000)


def test_the_keyboard_moves_opens_and_closes(page, stack):
    expect = _expect()
    tag = uuid.uuid4().hex[:8]
    ids = [send_chat(stack.proxy.url, "kbd/model", query="?tag=%s&n=%d" % (tag, i)) for i in range(3)]
    for rid in ids:
        wait_row(stack.logserver.url, rid, lambda r: r["state"] == "complete")
    newest_first = ids[::-1]
    page.goto_ui("?q=" + tag)
    expect(page.locator("#f-q")).to_have_value(tag)
    expect(page.locator("#requests tr[data-id]")).to_have_count(3)
    selected = page.locator("#requests tr.selected")
    page.keyboard.press("j")
    expect(selected).to_have_attribute("data-id", newest_first[0])
    page.keyboard.press("j")
    page.keyboard.press("ArrowDown")
    expect(selected).to_have_attribute("data-id", newest_first[2])
    page.keyboard.press("k")
    expect(selected).to_have_attribute("data-id", newest_first[1])
    page.keyboard.press("Enter")
    expect(page.locator("body")).to_have_class(re.compile("detail-open"))
    expect(page.locator(".d-path")).to_contain_text("n=1")
    assert "id=" + newest_first[1] in page.url
    page.keyboard.press("ArrowUp")  # with the detail open, moving opens the next one
    expect(page.locator(".d-path")).to_contain_text("n=2")
    page.keyboard.press("2")
    expect(page.locator('.tab[aria-selected="true"]')).to_have_text("Response")
    page.keyboard.press("Escape")
    expect(page.locator("body")).not_to_have_class(re.compile("detail-open"))
    assert "id=" not in page.url
    page.keyboard.press("/")
    expect(page.locator("#f-q")).to_be_focused()


def test_with_a_token_the_ui_works_once_visited_with_it_and_the_token_leaves_the_address_bar(
        browser, tmp_path_factory, _fake_upstream_session, index_args):
    token = "ui-token-0123456789abcdef"
    stack = Stack(tmp_path_factory, _fake_upstream_session.url, "token", token=token, index=index_args())
    context = browser.new_context(viewport=VIEWPORT)
    try:
        rid = send_chat(stack.proxy.url, "token-model")
        page = context.new_page()
        page.set_default_timeout(10000)
        refused = page.goto(stack.logserver.url + "/")
        assert refused.status == 401
        page.goto(stack.logserver.url + "/?token=" + token + "&model=token-model")
        assert token not in page.url and "model=token-model" in page.url
        _wait_live(page)  # the feed's WebSocket carries the cookie too
        _expect()(row_of(page, rid)).to_be_visible()
        cookie = next(c for c in context.cookies() if c["name"] == "orlogserver_token")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    finally:
        context.close()
        stack.close()


def test_screenshots_conversation_view_curl_and_dark_theme(browser, tmp_path_factory, _fake_upstream_session,
                                                          index_args):
    """Realistic traffic in a logging server of its own; the README's screenshots."""
    expect = _expect()
    stack = Stack(tmp_path_factory, _fake_upstream_session.url, "shots", index=index_args())
    context = browser.new_context(viewport=VIEWPORT, color_scheme="light", permissions=["clipboard-read", "clipboard-write"])
    try:
        agent = [
            {"role": "system", "content": "You are a support agent for Acme. Use the tools to look orders up."},
            {"role": "user", "content": "Where is my order #4521? It was due on Monday."},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_7Qe", "type": "function",
                 "function": {"name": "lookup_order", "arguments": "{\"order_id\": \"4521\"}"}}]},
            {"role": "tool", "tool_call_id": "call_7Qe",
             "content": "{\"status\": \"in transit\", \"carrier\": \"DHL\", \"eta\": \"Thursday\"}"},
            {"role": "user", "content": "Can you make it arrive sooner?"},
        ]
        traffic = [
            ("openai/gpt-4o-mini", "Summarize this support ticket in two sentences.", None, ""),
            ("anthropic/claude-sonnet-4", "Write a haiku about reverse proxies.", None, ""),
            ("google/gemini-2.5-flash", "Translate 'good morning' into French, German and Spanish.", None, ""),
            ("openai/gpt-4o-mini", "Rate limited?", None, "/v1/status/429"),
            ("meta-llama/llama-3.3-70b-instruct", "Explain HTTP keep-alive to a new engineer.", None, ""),
            ("mistralai/mistral-small", "Upstream error", None, "/v1/status/502"),
        ]
        for model, prompt, messages, path in traffic:
            if path:
                requests.post(stack.proxy.url + path, json={"model": model, "messages": [{"role": "user", "content": prompt}]},
                              timeout=10)
            else:
                send_chat(stack.proxy.url, model, prompt, messages=messages)
            time.sleep(0.05)
        StreamingChat(stack.proxy.url, "anthropic/claude-sonnet-4", events=8, interval_ms=30,
                      content="List five uses of a logging proxy.").start().wait()
        agent_id = send_chat(stack.proxy.url, "openai/gpt-4.1", messages=agent)
        wait_row(stack.logserver.url, agent_id, lambda r: r["model"] == "openai/gpt-4.1" and r["state"] == "complete")
        streaming = StreamingChat(stack.proxy.url, "openai/gpt-4.1-mini", events=60, interval_ms=100,
                                  content="Draft a long project update.").start()

        page = context.new_page()
        page.goto(stack.logserver.url + "/")
        _wait_live(page)
        expect(row_of(page, streaming.id)).to_have_class(re.compile(r"\bin-flight\b"))
        expect(page.locator("#requests tr[data-id]")).to_have_count(9)
        page.wait_for_timeout(400)
        shots = Path(os.environ.get("ORPROXY_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
        shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shots / "ui-list.png"))

        row_of(page, agent_id).click()
        conversation = page.locator('[data-panel="conversation"]')
        expect(conversation.locator(".turn.role-system")).to_contain_text("support agent for Acme")
        expect(conversation.locator(".tool-call .tool-name")).to_have_text("lookup_order")
        expect(conversation.locator(".tool-call .tool-args")).to_contain_text('"order_id": "4521"')
        expect(conversation.locator(".turn.role-tool")).to_contain_text("in transit")
        expect(conversation.locator(".turn.is-answer")).to_contain_text("fake upstream's answer")
        page.mouse.move(0, 0)
        page.screenshot(path=str(shots / "ui-detail.png"))

        page.click("text=Copy as curl")
        curl = page.evaluate("navigator.clipboard.readText()")
        assert curl.startswith("curl '%s/api/v1/chat/completions'" % stack.proxy.url)
        assert "-H 'Authorization: Bearer ****cdef'" in curl  # masked as stored, never the key
        assert "0123456789abcdef" not in curl and "Content-Length" not in curl
        assert "\"lookup_order\"" in curl

        page.emulate_media(color_scheme="dark")
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(15, 18, 22)", background
        page.screenshot(path=str(tmp_path_factory.mktemp("dark") / "ui-detail-dark.png"))
        page.emulate_media(color_scheme="light")
        assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(255, 255, 255)"
        streaming.wait(60)
    finally:
        context.close()
        stack.close()


def test_a_detail_opened_before_its_exchange_is_logged_shows_it_once_it_is(page, stack):
    """A replay opens its new exchange at once, before the proxy has logged it: the detail
    says it cannot load it, then shows it when the live feed brings its row."""
    expect = _expect()
    rid = str(uuid.uuid4())
    page.goto_ui("?id=" + rid)
    expect(page.locator(".d-error")).to_contain_text("Cannot load")
    url = "%s/%s/" % (stack.logserver.url, rid)
    requests.put(url + "request", data=b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\n\r\n{}", timeout=10)
    requests.put(url + "response", data=b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{}", timeout=10)
    requests.put(url + "metadata", json={"id": rid, "route": "late", "status": 200, "started_at": time.time(),
                                         "ended_at": time.time(), "log_dropped_bytes": 0}, timeout=10)
    expect(page.get_by_test_id("detail-status")).to_have_text("200", timeout=10000)
    expect(page.locator(".d-error")).to_have_count(0)
