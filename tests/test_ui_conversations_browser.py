"""The conversation view, the Diff tab and the search snippets in real headless Chromium
(the fixtures of tests/test_ui_browser.py). Conversations are held through the proxy with
the fake upstream's agent endpoints (orproxy/testing/agent_api.py): the answer to T is
"Reply to: T", or a tool call when T says "use tool NAME"; `?cost=` reports a cost."""
import re
import uuid

import pytest
import requests

from api_helpers import derived_done
from helpers import wait_until
from live_helpers import wait_row
from test_ui_browser import _expect, browser, page, row_of, stack  # noqa: F401 (fixtures)

pytestmark = pytest.mark.both_indexes  # with SQLite and with PostgreSQL (conftest.py)

AGENT_PATH = "/v1/agent/v1/chat/completions"  # the default route /v1/ leads to the fake upstream
EVIL = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'


class Chat:
    """One OpenAI-chat conversation through the proxy; `ids` are its turns' exchanges."""

    def __init__(self, stack, model="gpt-4o"):
        self.url = stack.proxy.url + AGENT_PATH
        self.logserver = stack.logserver.url
        self.model = model
        self.messages = [{"role": "system", "content": "You are a test agent."}]
        self.ids = []

    def say(self, text, cost=None):
        self.messages.append({"role": "user", "content": text})
        return self.send(cost)

    def give_tool_result(self, text):
        call = self.messages[-1]["tool_calls"][0]
        self.messages.append({"role": "tool", "tool_call_id": call["id"], "content": text})
        return self.send(None)

    def send(self, cost):
        answer = requests.post(self.url, params={"cost": cost} if cost is not None else None, timeout=10,
                               json={"model": self.model, "messages": self.messages},
                               headers={"Authorization": "Bearer sk-test-0123456789abcdef"})
        assert answer.status_code == 200, answer.text
        message = answer.json()["choices"][0]["message"]
        self.messages.append({k: v for k, v in message.items() if k in ("role", "content", "tool_calls")})
        self.ids.append(answer.headers["X-Request-Id"])
        return self.ids[-1]

    def rows(self):
        """Every turn's row once priced and linked to the turn before (with two logging
        servers a turn may be linked a moment later: relinking.py)."""
        def ready():
            found = [wait_row(self.logserver, i, derived_done) for i in self.ids]
            return found if [r["previous_id"] for r in found] == [None, *self.ids[:-1]] else None
        return wait_until(ready, 10, 0.1, "each turn linked to the one before it")


def js_cost(c):
    """format.js's cost() for the costs these tests sum (from a cent up)."""
    assert 0.01 <= c < 1
    return "$%.3f" % c


def test_the_conversation_view_lists_the_turns_in_order_with_running_totals_and_updates_live(page, stack):
    expect = _expect()
    chat = Chat(stack)
    chat.say("first question %s" % uuid.uuid4().hex, cost=0.01)
    chat.say("second question, priced from the table")  # no reported cost: estimated
    chat.say("third question", cost=0.02)
    rows = chat.rows()
    assert [r["cost_source"] for r in rows] == ["reported", "price_table", "reported"]
    assert [r["previous_id"] for r in rows] == [None, chat.ids[0], chat.ids[1]]

    page.goto_ui("?id=" + chat.ids[1])
    expect(row_of(page, chat.ids[1]).locator(".row-scope")).to_be_visible()  # the list row links it too
    page.get_by_test_id("open-conversation").click()
    expect(page).to_have_url(re.compile(r"[?&]conversation_id=" + chat.ids[0]))
    turns = page.locator('[data-testid="turns"] tbody tr[data-id]')
    expect(turns).to_have_count(3)
    assert [turns.nth(i).get_attribute("data-id") for i in range(3)] == chat.ids  # oldest first
    expect(page.locator("#requests")).to_be_hidden()

    # Each turn's cost: the estimate marked, the reported ones not; the totals run on.
    costs = [turns.nth(i).locator(".t-cost") for i in range(3)]
    expect(costs[0]).to_have_text(js_cost(0.01))
    expect(costs[1].locator(".cost-estimated")).to_have_attribute("title", "estimated from the price table")
    expect(costs[1]).to_have_text(re.compile(r"^≈\$"))
    expect(costs[2].locator(".cost-estimated")).to_have_count(0)
    expect(turns.nth(0).locator(".t-sum-cost")).to_have_text(js_cost(0.01))
    total = sum(r["cost"] for r in rows)
    expect(turns.nth(2).locator(".t-sum-cost")).to_have_text("≈" + js_cost(total))
    expect(turns.nth(2).locator(".t-sum-tok")).to_have_text("%d → %d" % (
        sum(r["prompt_tokens"] for r in rows), sum(r["completion_tokens"] for r in rows)))
    expect(page.get_by_test_id("conv-turns")).to_have_text("3 turns")

    fourth = chat.say("a fourth question, while the view is open", cost=0.5)
    expect(turns).to_have_count(4, timeout=5000)
    expect(turns.nth(3)).to_have_attribute("data-id", fourth)
    expect(turns.nth(3).locator(".t-n")).to_have_text("4")

    turns.nth(3).locator("a", has_text="diff").click()  # a turn opens on its diff
    expect(page.locator('.tab[aria-selected="true"]')).to_have_text("Diff")
    expect(page.get_by_test_id("diff-added").last).to_contain_text("a fourth question")

    page.goto(page.url)  # the URL is the view: reloaded (or shared), it shows the same
    expect(turns).to_have_count(4)
    expect(page.get_by_test_id("scope-conversation_id")).to_be_visible()
    page.get_by_test_id("scope-conversation_id").locator("button").click()
    expect(page.locator("#requests")).to_be_visible()
    assert "conversation_id=" not in page.url


def test_the_diff_tab_shows_new_messages_the_answer_and_a_character_diff(page, stack):
    expect = _expect()
    chat = Chat(stack)
    chat.say("please use tool grep on the repository")
    chat.give_tool_result("grep found three matches in main.py")
    chat.rows()
    page.goto_ui("?id=" + chat.ids[1])
    page.keyboard.press("d")
    expect(page.locator('.tab[aria-selected="true"]')).to_have_text("Diff")
    diff = page.get_by_test_id("diff")
    expect(diff.get_by_test_id("diff-same")).to_have_text(re.compile(r"^1 unchanged message"))
    added = diff.get_by_test_id("diff-added")
    expect(added).to_have_count(2)
    expect(added.nth(0)).to_contain_text("grep(")  # the previous turn's answer: a tool call
    expect(added.nth(0).locator(".answer-badge")).to_have_text("previous answer")
    expect(added.nth(1)).to_contain_text("grep found three matches")
    expect(added.nth(1).locator(".answer-badge")).to_have_count(0)

    # Compared with another exchange: a changed message gets a character diff.
    other = Chat(stack)
    other.say("please use tool grep on the documentation")
    other.give_tool_result("grep found three matches in README.md")
    other.rows()
    page.get_by_test_id("diff-against").fill(other.ids[1])
    page.get_by_test_id("diff-compare").click()
    expect(diff.locator(".diff-summary")).to_contain_text("against")
    changed = diff.get_by_test_id("diff-changed")
    expect(changed.first.get_by_test_id("char-diff")).to_be_visible()
    # in the user's text and in the tool call's arguments
    expect(changed.locator("del", has_text="documentation")).to_have_count(2)
    expect(changed.locator("ins", has_text="repository")).to_have_count(2)
    expect(changed.locator("del", has_text="README")).to_have_count(1)
    page.get_by_test_id("diff-against").fill("not-an-id")
    page.get_by_test_id("diff-compare").click()
    expect(page.get_by_test_id("diff-error")).to_contain_text("UUID")


def test_hostile_text_in_a_diff_stays_text(page, stack):
    expect = _expect()
    first = Chat(stack)
    first.say("quote this: " + EVIL)
    second = Chat(stack)
    second.say("quote that: " + EVIL + " again")
    second.say("and now " + EVIL)
    second.rows()
    first.rows()
    page.goto_ui("?id=" + second.ids[1])
    page.locator('.tab[data-tab="diff"]').click()
    diff = page.get_by_test_id("diff")
    expect(diff.get_by_test_id("diff-added").last).to_contain_text("and now " + EVIL)
    page.get_by_test_id("diff-against").fill(first.ids[0])
    page.get_by_test_id("diff-compare").click()
    expect(diff.get_by_test_id("diff-changed").first).to_contain_text(EVIL)
    page.wait_for_timeout(300)
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#main img, #main script").count() == 0


def test_search_snippets_are_highlighted_and_estimated_costs_marked_in_the_list(page, stack):
    expect = _expect()
    word = "zq" + uuid.uuid4().hex[:10]
    deep = "filler text " * 900 + "the needle %s sits here %s" % (word, EVIL)  # 10 KB deep
    found = Chat(stack).say(deep)
    priced = Chat(stack)
    priced.say("one more %s" % word, cost=0.25)
    rows = [wait_row(stack.logserver.url, i, derived_done) for i in (found, priced.ids[0])]
    page.goto_ui("?q=" + word)
    expect(page.locator("#requests tbody tr[data-id]")).to_have_count(2)
    snippet = row_of(page, found).get_by_test_id("snippet")
    expect(snippet.locator("mark").first).to_have_text(re.compile(word, re.I))
    expect(snippet).to_contain_text("<img src=x")
    assert page.locator("#main img").count() == 0 and page.evaluate("window.__pwned") is None
    assert rows[0]["cost_source"] == "price_table" and rows[1]["cost_source"] == "reported"
    expect(row_of(page, found).locator(".c-cost .cost-estimated")).to_have_attribute(
        "title", "estimated from the price table")
    expect(row_of(page, found).locator(".c-cost")).to_have_text(re.compile(r"^≈\$"))
    expect(row_of(page, priced.ids[0]).locator(".c-cost")).to_have_text("$0.250")
