"""The UI's "Download HAR" buttons in real headless Chromium (as tests/test_ui_browser.py,
whose fixtures this module shares): the exchange view downloads that exchange, the list
downloads what its current filters match. Each download is read with playwright's
download API and checked against the HAR 1.2 schema (har_helpers)."""
import re
import uuid
from pathlib import Path

import pytest

from har_helpers import load_har
from live_helpers import send_chat, wait_row
from test_ui_browser import _expect, browser, page, row_of, stack  # noqa: F401 (fixtures)

pytestmark = pytest.mark.both_indexes  # with SQLite and with PostgreSQL (conftest.py)


def _download(page, locator):
    with page.expect_download() as info:
        locator.click()
    download = info.value
    assert download.failure() is None
    return download.suggested_filename, Path(download.path()).read_bytes()


def test_the_exchange_view_downloads_its_har(page, stack):
    expect = _expect()
    rid = send_chat(stack.proxy.url, "acme/har-one")
    wait_row(stack.logserver.url, rid, lambda r: r["state"] == "complete")
    page.goto_ui("?id=" + rid)
    button = page.get_by_test_id("detail-har")
    expect(button).to_have_text("Download HAR")
    name, data = _download(page, button)
    assert name == "orproxy-%s.har" % rid[:8]
    _, entries = load_har(data)
    assert [e["_requestId"] for e in entries] == [rid]
    assert entries[0]["_exchange"]["model"] == "acme/har-one"
    assert b"0123456789abcdef" not in data and "Bearer ****cdef" in str(entries[0]["request"]["headers"])


def test_the_list_downloads_what_its_current_filters_match(page, stack):
    expect = _expect()
    model = "acme-%s/har" % uuid.uuid4().hex[:6]
    ids = [send_chat(stack.proxy.url, model) for _ in range(3)]
    other = send_chat(stack.proxy.url, "acme/not-this-one")
    for rid in ids + [other]:
        wait_row(stack.logserver.url, rid, lambda r: r["state"] == "complete")
    page.goto_ui()
    expect(row_of(page, other)).to_be_visible()
    page.fill("#f-model", model)
    page.press("#f-model", "Enter")
    expect(row_of(page, other)).to_have_count(0)
    expect(row_of(page, ids[0])).to_be_visible()
    link = page.locator("#download-har")
    expect(link).to_have_attribute("href", re.compile(r"^/api/har\?model=acme-[0-9a-f]{6}%2Fhar$"))
    name, data = _download(page, link)
    assert re.fullmatch(r"orproxy-\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d\.har", name)
    _, entries = load_har(data)
    assert [e["_requestId"] for e in entries] == ids[::-1]  # newest first, as the list
