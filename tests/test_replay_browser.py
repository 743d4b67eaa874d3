"""Replay in the UI, in real headless Chromium (the fixtures of tests/test_ui_browser.py):
open an exchange, Replay, edit the model, give a key, send; the new exchange opens with
`replay_of`, the fake upstream got the key, and the page stored it nowhere."""
import json
import os
import re
import uuid

import pytest

import requests

from live_helpers import CHAT_PATH, chat_body, wait_row
from replay_helpers import RECORD, header, new_key, received
from test_ui_browser import _expect, browser, page, row_of, stack  # noqa: F401 (fixtures)

pytestmark = pytest.mark.both_indexes  # with SQLite and with PostgreSQL (conftest.py)


def test_replay_an_exchange_with_another_model_and_a_key_kept_only_in_memory(page, stack,  # noqa: F811
                                                                             _fake_upstream_session):
    expect = _expect()
    tag, key = uuid.uuid4().hex, new_key()
    resp = requests.post(stack.proxy.url + CHAT_PATH, json=chat_body("fake/before-replay", "Replay me"), timeout=10,
                         headers={"Authorization": "Bearer sk-test-0123456789abcdef", RECORD: tag})
    rid = resp.headers["X-Request-Id"]
    wait_row(stack.logserver.url, rid, lambda r: r["state"] == "complete")

    page.goto_ui("?id=" + rid)
    page.get_by_test_id("replay").click()
    dialog = page.get_by_test_id("replay-dialog")
    expect(page.get_by_test_id("replay-to")).to_have_text("POST %s%s" % (stack.proxy.url, CHAT_PATH))
    expect(dialog).to_contain_text("Authorization was masked in the log: your key takes its place")
    page.get_by_test_id("replay-body").fill("{not json")
    page.get_by_test_id("replay-send").click()
    expect(page.get_by_test_id("replay-error")).to_contain_text("not valid JSON")
    assert len(received(_fake_upstream_session, tag)) == 1  # nothing sent
    page.get_by_test_id("replay-body").fill(json.dumps(chat_body("fake/before-replay", "Replay me")))
    expect(page.get_by_test_id("replay-error")).to_be_empty()

    edited = "fake/after-%s" % uuid.uuid4().hex[:6]
    page.get_by_test_id("replay-model").fill(edited)
    expect(page.get_by_test_id("replay-body")).to_have_value(re.compile(re.escape('"model": "%s"' % edited)))
    page.get_by_test_id("replay-key").fill(key)
    if os.environ.get("ORPROXY_SCREENSHOTS"):  # the README's picture of the dialog
        page.screenshot(path=os.path.join(os.environ["ORPROXY_SCREENSHOTS"], "ui-replay.png"))
    page.get_by_test_id("replay-send").click()

    expect(dialog).to_have_count(0)
    expect(page).not_to_have_url(re.compile("id=" + rid))
    new_id = re.search(r"id=([0-9a-f-]{36})", page.url).group(1)
    expect(page.get_by_test_id("replay-of")).to_contain_text(rid[:8])
    expect(row_of(page, new_id)).to_be_visible()
    expect(page.locator(".d-summary")).to_contain_text(edited)
    row = wait_row(stack.logserver.url, new_id, lambda r: r["state"] == "complete")
    assert row["replay_of"] == rid and row["model_requested"] == edited

    again = received(_fake_upstream_session, tag)[-1]
    assert header(again, "Authorization") == "Bearer " + key
    assert json.loads(again["body"]) == chat_body(edited, "Replay me")

    stored = page.evaluate("JSON.stringify([Object.entries(localStorage), Object.entries(sessionStorage), "
                           "document.cookie, history.length, location.href])")
    assert key not in stored and key not in json.dumps(page.context.cookies())
    page.get_by_test_id("replay").click()  # the next replay has it still: the page's memory
    expect(page.get_by_test_id("replay-key")).to_have_value(key)
    page.keyboard.press("Escape")
    expect(page.get_by_test_id("replay-dialog")).to_have_count(0)
    page.get_by_test_id("replay-of").click()  # back to the exchange it replays
    expect(page).to_have_url(re.compile("id=" + rid))

    page.reload()  # and gone with the page
    page.get_by_test_id("replay").click()
    expect(page.get_by_test_id("replay-key")).to_have_value("")
