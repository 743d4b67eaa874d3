"""Cost for every provider and the free-text search over whole texts, through the real
proxy and logging server (the fake upstream's agent endpoints answer with usage)."""
from datetime import datetime, timezone

import genai_prices
import pytest
import requests

from api_helpers import ApiClient, derived_done
from servers import new_logserver

pytestmark = pytest.mark.both_indexes  # with SQLite and with PostgreSQL (conftest.py)


@pytest.fixture
def agent_proxy(make_proxy, fake_upstream):
    return make_proxy(routes=[{"source": "/v1/", "destination": fake_upstream.url + "/agent/v1/",
                               "name": "agent"}])


@pytest.fixture
def api(logserver):
    return ApiClient(logserver.url)


def chat(proxy, model, text="hello", query="", path="/v1/chat/completions", **body):
    if path.endswith("/messages"):
        body.setdefault("max_tokens", 100)
    answer = requests.post(proxy.url + path + query, timeout=10,
                           json={"model": model, "messages": [{"role": "user", "content": text}], **body})
    assert answer.status_code == 200, answer.text
    return answer.headers["X-Request-Id"]


def table_price(row, **usage):
    when = datetime.fromtimestamp(row["started_at"], timezone.utc)
    return float(genai_prices.calc_price(genai_prices.Usage(**usage), row["model"],
                                         genai_request_timestamp=when).total_price)


# -- cost -----------------------------------------------------------------------------------

def test_an_openai_models_cost_comes_from_the_price_table(agent_proxy, api):
    row = api.wait_row(chat(agent_proxy, "gpt-4o", query="?cached=4"), derived_done)
    assert row["cost_source"] == "price_table" and row["cached_tokens"] == 4
    expected = table_price(row, input_tokens=row["prompt_tokens"], output_tokens=row["completion_tokens"],
                           cache_read_tokens=4)
    assert row["cost"] == pytest.approx(expected) and row["cost"] > 0


def test_an_anthropic_models_cost_counts_cached_input_at_its_price(agent_proxy, api):
    row = api.wait_row(chat(agent_proxy, "claude-sonnet-4-5", "x" * 400, query="?cached=50",
                            path="/v1/messages"), derived_done)
    assert (row["cost_source"], row["cached_tokens"], row["cache_write_tokens"]) == ("price_table", 50, 0)
    expected = table_price(row, input_tokens=row["prompt_tokens"], output_tokens=row["completion_tokens"],
                           cache_read_tokens=50, cache_write_tokens=0)
    uncached = table_price(row, input_tokens=row["prompt_tokens"], output_tokens=row["completion_tokens"])
    assert row["cost"] == pytest.approx(expected) and row["cost"] < uncached


def test_the_upstreams_reported_cost_wins_and_an_unknown_model_has_none(agent_proxy, api):
    reported = api.wait_row(chat(agent_proxy, "gpt-4o", query="?cost=0.0123"), derived_done)
    assert (reported["cost"], reported["cost_source"]) == (0.0123, "reported")
    unknown = api.wait_row(chat(agent_proxy, "my-private-model-xyz"), derived_done)
    assert unknown["prompt_tokens"] and (unknown["cost"], unknown["cost_source"]) == (None, None)
    totals = api.ok("/api/stats", route="agent")
    assert totals["cost"] - (totals["estimated_cost"] or 0) >= 0.0123 - 1e-9  # the reported part


def test_prices_of_your_own_come_from_the_config_file(tmp_path, make_proxy, fake_upstream, write_config,
                                                      index_args):
    config = write_config({"prices": {"my-local-*": {"input": 1.0, "output": 2.0},
                                      "gpt-4o": {"input": 0, "output": 0}}}, name="prices.yaml")
    own = new_logserver(tmp_path / "logs", tmp_path / "work", [*index_args(), "--config", str(config)]).start()
    try:
        proxy = make_proxy(routes=[{"source": "/v1/", "destination": fake_upstream.url + "/agent/v1/"}],
                           logging={"server_url": own.url})
        api = ApiClient(own.url)
        local = api.wait_row(chat(proxy, "my-local-llama"), derived_done)
        assert local["cost_source"] == "price_table"
        assert local["cost"] == pytest.approx((local["prompt_tokens"] * 1.0 + local["completion_tokens"] * 2.0) / 1e6)
        free = api.wait_row(chat(proxy, "gpt-4o"), derived_done)
        assert (free["cost"], free["cost_source"]) == (0.0, "price_table")
    finally:
        own.stop()


def test_a_bad_price_is_refused_at_start(write_config, run_cli, tmp_path):
    config = write_config({"prices": {"m": {"input": "cheap", "output": 1}}}, name="prices.yaml")
    done = run_cli("orlogserver", "--config", str(config), "--log-dir", str(tmp_path / "logs"), "--port", "0")
    assert done.returncode == 2
    assert done.stderr.strip() == 'orlogserver: %s: prices.m.input: "cheap" is not a price in USD per ' \
                                  'million tokens (0 or more)' % config


# -- search -----------------------------------------------------------------------------------

def test_the_search_finds_a_word_deep_in_a_request_with_a_snippet(agent_proxy, api):
    filler = "lorem ipsum dolor sit amet " * 400  # 10.8 KB before the word
    found_id = chat(agent_proxy, "gpt-4o", filler + "the xylophonist played")
    api.wait_row(found_id, derived_done)
    page = api.ok("/api/requests", q="xylophonist")
    assert [r["id"] for r in page["items"]] == [found_id]
    snippet = page["items"][0]["snippet"]
    assert {"text": "xylophonist", "match": True} in snippet
    assert "".join(s["text"] for s in snippet).count("lorem") >= 2


def test_the_search_reads_a_long_streamed_answer_to_its_end(agent_proxy, api):
    found_id = chat(agent_proxy, "gpt-4o", "count", query="?pad=2500", stream=True)
    row = api.wait_row(found_id, derived_done)
    assert row["reply_preview"].startswith("Reply to: count")  # the fields skim this stream
    assert [r["id"] for r in api.ok("/api/requests", q="word2499")["items"]] == [found_id]


def test_the_search_reads_the_strings_of_other_json_bodies_and_forgets_deleted_ones(make_proxy, api):
    proxy = make_proxy()
    answer = requests.post(proxy.url + "/v1/echo/notes", json={"note": {"title": "a marmalade recipe"}}, timeout=10)
    found_id = answer.headers["X-Request-Id"]
    api.wait_row(found_id, derived_done)
    assert [r["id"] for r in api.ok("/api/requests", q="marmalade")["items"]] == [found_id]
    assert requests.delete(api.url + "/api/requests/" + found_id, timeout=10).status_code == 200
    assert api.ok("/api/requests", q="marmalade")["items"] == []


def test_the_search_takes_any_text_as_words(agent_proxy, api):
    found_id = chat(agent_proxy, "gpt-4o", 'open "src/app.py" now')
    api.wait_row(found_id, derived_done)
    for q in ('"src/app.py"', "src app py", "SRC/APP.PY", "*app*"):
        assert found_id in [r["id"] for r in api.ok("/api/requests", q=q)["items"]], q
    for q in ("!!!", "NEAR(src", "src AND", '"', "app OR -", "col:src"):  # FTS5 syntax is not spoken
        assert api.get("/api/requests", q=q)[0] == 200, q
