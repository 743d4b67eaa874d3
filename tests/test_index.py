"""The index on a seeded set of 1,000 exchanges (orproxy/testing/seed_logs.py) written as files,
`orlogserver --reindex`ed, then served: every filter and the cursor pagination return
exactly the right rows in the right order; stats add up; a rebuild from the files
reproduces the index; retention (--max-age, --max-bytes) deletes the right files; the
command-line options refuse bad values."""
import json
import shutil
import time
from datetime import datetime, timezone

import pytest

from api_helpers import ApiClient
from helpers import ServerProcess, script, wait_until
from orproxy.logserver.store.schema import DEFAULT_PRICING, row_from_document
from orproxy.testing.seed_logs import seed

pytestmark = pytest.mark.both_indexes  # with SQLite and with PostgreSQL (conftest.py)

COUNT = 1000


def start_logserver(log_dir, workdir, *args):
    argv = [script("orlogserver"), "--host", "127.0.0.1", "--port", "0", "--log-dir", str(log_dir), *args]
    process = ServerProcess("orlogserver", argv, workdir)
    process.start("listening")
    return process


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, run_cli_module):
    log_dir = tmp_path_factory.mktemp("seeded") / "logs"
    documents = seed(str(log_dir), COUNT)
    result = run_cli_module("orlogserver", "--reindex", "--log-dir", str(log_dir))
    assert result.returncode == 0, result.stderr
    assert "indexed %d exchanges" % COUNT in result.stdout
    # reindex stored the fields it derived (the in-flight ones had none): read the files again
    documents = [json.loads(p.read_text()) for p in sorted(log_dir.glob("*_metadata.json"))]
    process = start_logserver(log_dir, tmp_path_factory.mktemp("seeded_work"))
    yield ApiClient(process.url), log_dir, [row_from_document(d, pricing=DEFAULT_PRICING) for d in documents]
    process.stop(timeout=5)


@pytest.fixture(scope="module")
def run_cli_module(tmp_path_factory):
    from helpers import child_env, run_command
    cwd = tmp_path_factory.mktemp("cli")

    def run(name, *args, timeout=60.0):
        return run_command([script(name), *args], cwd=cwd, env=child_env(), timeout=timeout)
    return run


def newest_first(rows):
    return [r["id"] for r in sorted(rows, key=lambda r: (r["started_at"], r["id"]), reverse=True)]


def ids(client, **params):
    return [i["id"] for i in client.all_items(**params)]


def test_every_row_is_indexed_and_pages_walk_them_once_in_order(seeded):
    api, _, rows = seeded
    assert len(rows) == COUNT
    # several exchanges share a start time: ties are ordered by id, and no page skips one
    assert len({r["started_at"] for r in rows}) < COUNT
    assert ids(api, limit=37) == newest_first(rows)
    assert ids(api, limit=1000) == newest_first(rows)
    first = api.ok("/api/requests")
    assert len(first["items"]) == 50 and first["has_more"]


def test_items_carry_what_a_list_row_shows(seeded):
    api, _, rows = seeded
    by_id = {r["id"]: r for r in rows}
    for item in api.ok("/api/requests", limit=200)["items"]:
        row = by_id[item["id"]]
        for key in ("started_at", "method", "path", "route", "status", "duration_ms", "ttft_ms",
                    "model", "total_tokens", "cost", "request_bytes", "response_bytes", "state"):
            assert item[key] == row[key], key
        assert item["tool_calls"] == (json.loads(row["tool_calls"]) if row["tool_calls"] else None)


def _status_ok(row, spec):
    s = row["status"]
    return s is not None and any((str(s)[0] == v[0]) if v.endswith("xx") else s == int(v) for v in spec.split(","))


FILTERS = [
    ({"route": "anthropic"}, lambda r: r["route"] == "anthropic"),
    ({"route": "openai,local"}, lambda r: r["route"] in ("openai", "local")),
    ({"method": "get"}, lambda r: r["method"] == "GET"),
    ({"status": "4xx"}, lambda r: _status_ok(r, "4xx")),
    ({"status": "429,500"}, lambda r: _status_ok(r, "429,500")),
    ({"status": "2xx,503"}, lambda r: _status_ok(r, "2xx,503")),
    ({"error": "any"}, lambda r: r["error"] is not None),
    ({"error": "none"}, lambda r: r["error"] is None),
    ({"error": "client_disconnected"}, lambda r: r["error"] == "client_disconnected"),
    ({"model": "gpt-4.1"}, lambda r: "gpt-4.1" in (r["model"], r["model_requested"])),
    ({"model": "gpt-4.1-2025-04-14"}, lambda r: r["model"] == "gpt-4.1-2025-04-14"),
    ({"model": "anthropic/*"}, lambda r: any((m or "").startswith("anthropic/")
                                             for m in (r["model"], r["model_requested"]))),
    ({"model": "o3-mini,llama3.2:3b"}, lambda r: {"o3-mini", "llama3.2:3b"} & {r["model"], r["model_requested"]}),
    ({"provider": "Google"}, lambda r: r["provider"] == "Google"),
    ({"api": "anthropic"}, lambda r: r["api"] == "anthropic"),
    ({"state": "in_flight"}, lambda r: r["state"] == "in_flight"),
    ({"state": "incomplete,in_flight"}, lambda r: r["state"] in ("incomplete", "in_flight")),
    ({"streamed": "true"}, lambda r: r["streamed"] == 1),
    ({"streamed": "false"}, lambda r: not r["streamed"]),
    # q in the short columns (the seeded bodies are filler): whole words, in order
    ({"q": "RATE LIMITED"}, lambda r: "rate limited" in (r["error_message"] or "")),
    ({"q": "/local/"}, lambda r: "/local/" in (r["path"] or "")),
    ({"q": "claude sonnet"}, lambda r: any("claude-sonnet" in (r[c] or "") for c in ("model", "model_requested"))),
    ({"q": "gpt-4.1"}, lambda r: any("gpt-4.1" in (r[c] or "") for c in ("model", "model_requested"))),
    ({"q": "Upstream_Unreachable"}, lambda r: r["error"] == "upstream_unreachable"),
]


@pytest.mark.parametrize("params, keep", FILTERS, ids=[json.dumps(p) for p, _ in FILTERS])
def test_each_filter_returns_exactly_the_right_rows(seeded, params, keep):
    api, _, rows = seeded
    expected = newest_first([r for r in rows if keep(r)])
    assert expected, "the seed should have rows for %s" % params
    assert ids(api, **dict(params, limit=100)) == expected


def test_time_range_in_every_form_and_combined_with_other_filters(seeded):
    api, _, rows = seeded
    times = sorted(r["started_at"] for r in rows)
    low, high = times[200], times[700]
    expected = newest_first([r for r in rows if low <= r["started_at"] < high])
    assert ids(api, since=repr(low), until=repr(high)) == expected
    iso = lambda t: datetime.fromtimestamp(t, timezone.utc).isoformat()  # noqa: E731
    second_low, second_high = int(low) + 1, int(high) + 1
    expected_iso = newest_first([r for r in rows if second_low <= r["started_at"] < second_high])
    assert ids(api, since=iso(second_low), until=iso(second_high).replace("+00:00", "Z")) == expected_iso
    naive = datetime.fromtimestamp(second_low, timezone.utc).replace(tzinfo=None).isoformat()
    assert ids(api, since=naive, until=str(second_high)) == expected_iso  # no zone means UTC
    combined = newest_first([r for r in rows if low <= r["started_at"] < high and r["route"] == "openrouter"
                             and r["status"] == 200 and "anthropic/claude-sonnet-4" in
                             (r["model"], r["model_requested"])])
    assert combined
    assert ids(api, since=repr(low), until=repr(high), route="openrouter", status="200",
               model="anthropic/claude-sonnet-4", limit=3) == combined
    assert ids(api, since="-1h") == []  # the seed is long past


def test_a_cursor_keeps_its_place_and_is_opaque(seeded):
    api, _, rows = seeded
    page = api.ok("/api/requests", limit=10, route="openai")
    second = api.ok("/api/requests", limit=10, route="openai", cursor=page["next_cursor"])
    expected = newest_first([r for r in rows if r["route"] == "openai"])
    assert [i["id"] for i in page["items"] + second["items"]] == expected[:20]
    status, data = api.get("/api/requests", cursor=page["next_cursor"][:-3])
    assert status == 400 and data["error"]["parameter"] == "cursor"


def test_stats_add_up(seeded):
    api, _, rows = seeded
    picked = [r for r in rows if r["route"] == "openrouter"]
    stats = api.ok("/api/stats", route="openrouter")
    assert stats["count"] == len(picked)
    assert stats["errors"] == sum(1 for r in picked if r["error"] or (r["status"] or 0) >= 400)
    assert stats["total_tokens"] == sum(r["total_tokens"] or 0 for r in picked)
    assert stats["cost"] == pytest.approx(sum(r["cost"] or 0 for r in picked))
    by_model = {g["name"]: g for g in stats["by_model"]}
    for model in {r["model"] for r in picked}:
        group = [r for r in picked if r["model"] == model]
        assert by_model[model]["count"] == len(group)
        assert by_model[model]["prompt_tokens"] == sum(r["prompt_tokens"] or 0 for r in group)
    durations = sorted(r["duration_ms"] for r in picked if r["duration_ms"] is not None)
    assert stats["latency_ms"]["count"] == len(durations)
    assert stats["latency_ms"]["p50"] == durations[(len(durations) + 1) // 2 - 1]
    assert stats["latency_ms"]["max"] == durations[-1]
    ttfts = sorted(r["ttft_ms"] for r in picked if r["ttft_ms"] is not None)
    assert stats["ttft_ms"]["p99"] == ttfts[-(-99 * len(ttfts) // 100) - 1]
    assert sum(g["count"] for g in api.ok("/api/stats")["by_route"]) == COUNT


def test_a_rebuild_from_the_files_reproduces_the_index(seeded, tmp_path, run_cli_module):
    api, log_dir, _ = seeded
    before = api.all_items(limit=1000)
    copy = tmp_path / "copy"
    shutil.copytree(log_dir, copy, symlinks=True, ignore=shutil.ignore_patterns("index.sqlite3*"))
    shutil.rmtree(copy / ".ids")  # the links too: a plain copy of the files
    result = run_cli_module("orlogserver", "--reindex", "--log-dir", str(copy))
    assert result.returncode == 0, result.stderr
    process = start_logserver(copy, tmp_path / "work")
    try:
        after = ApiClient(process.url).all_items(limit=1000)
    finally:
        process.stop(timeout=5)
    strip = lambda items: [{k: v for k, v in i.items() if k != "seq"} for i in items]  # noqa: E731
    assert strip(after) == strip(before)


def test_a_server_on_files_without_an_index_builds_it_by_itself(seeded, tmp_path):
    _, log_dir, rows = seeded
    copy = tmp_path / "copy"
    shutil.copytree(log_dir, copy, symlinks=True, ignore=shutil.ignore_patterns("index.sqlite3*"))
    process = start_logserver(copy, tmp_path / "work")
    try:
        api = ApiClient(process.url)
        wait_indexed(api, COUNT)
        assert ids(api, limit=1000) == newest_first(rows)
    finally:
        process.stop(timeout=5)


def test_reindex_removes_rows_whose_files_are_gone(seeded, tmp_path, run_cli_module):
    _, log_dir, rows = seeded
    copy = tmp_path / "copy"
    shutil.copytree(log_dir, copy, symlinks=True)
    gone = sorted(copy.glob("*_metadata.json"))[:10]
    for path in gone:
        path.unlink()
    result = run_cli_module("orlogserver", "--reindex", "--log-dir", str(copy))
    assert result.returncode == 0, result.stderr
    assert "indexed %d exchanges" % (COUNT - 10) in result.stdout and "10 stale rows removed" in result.stdout


# -- retention -----------------------------------------------------------------------------


def wait_indexed(api, count):
    wait_until(lambda: (lambda h: h["exchanges"] >= count and not h["rebuilding"])(api.ok("/api/health")),
               30, 0.1, "the index to be built")


def exchange_files(log_dir):
    return {p.name for p in log_dir.iterdir() if p.is_file()}


def test_max_age_deletes_the_old_exchanges_files_and_rows(tmp_path):
    log_dir = tmp_path / "logs"
    now = time.time()
    documents = seed(str(log_dir), 300, seed_value=5, base_time=now - 600)  # one every ~2 s
    rows = {d["id"]: row_from_document(d, pricing=DEFAULT_PRICING) for d in documents}
    process = start_logserver(log_dir, tmp_path / "work", "--max-age", "5m")
    try:
        api = ApiClient(process.url)
        wait_indexed(api, 1)
        cutoff = now - 300
        old = {i for i, r in rows.items() if r["started_at"] < cutoff - 30 and r["state"] != "in_flight"}
        young = {i for i, r in rows.items() if r["started_at"] > cutoff + 30}
        wait_until(lambda: not (old & {i["id"] for i in api.all_items(limit=1000)}), 30, 0.2,
                   "the old exchanges to be pruned")
        left = {i["id"] for i in api.all_items(limit=1000)}
        assert young <= left
        names = exchange_files(log_dir)
        for exchange_id in old:
            assert not any(exchange_id[:8] in n for n in names), exchange_id
            assert not (log_dir / ".ids" / exchange_id).exists()
        for exchange_id in young:
            assert sum(exchange_id[:8] in n for n in names) == 3, exchange_id
        in_flight = {i for i, r in rows.items() if r["state"] == "in_flight"}
        assert in_flight and in_flight <= left  # still arriving: spared
    finally:
        process.stop(timeout=5)


def test_max_bytes_deletes_the_oldest_until_under_the_limit(tmp_path):
    log_dir = tmp_path / "logs"
    documents = seed(str(log_dir), 200, seed_value=9)
    rows = [row_from_document(d, pricing=DEFAULT_PRICING) for d in documents]
    total = sum(r["stored_bytes"] for r in rows)
    limit = total // 2
    process = start_logserver(log_dir, tmp_path / "work", "--max-bytes", str(limit))
    try:
        api = ApiClient(process.url)
        wait_indexed(api, 1)
        wait_until(lambda: sum(i["stored_bytes"] for i in api.all_items(limit=1000)) <= limit,
                   30, 0.2, "pruning to --max-bytes")
        left = {i["id"] for i in api.all_items(limit=1000)}
        deleted = [r for r in rows if r["id"] not in left]
        kept = [r for r in rows if r["id"] in left and r["state"] != "in_flight"]
        assert deleted and kept
        assert max(r["started_at"] for r in deleted) <= min(r["started_at"] for r in kept)
        assert sum(r["stored_bytes"] for r in rows if r["id"] in left) > limit - max(
            r["stored_bytes"] for r in rows)  # no more than needed
        names = exchange_files(log_dir)
        assert all(not any(r["id"][:8] in n for n in names) for r in deleted)
    finally:
        process.stop(timeout=5)


@pytest.mark.parametrize("args, message", [
    (["--max-age", "forever"], "--max-age"),
    (["--max-age", "0"], "--max-age"),
    (["--max-bytes", "lots"], "--max-bytes"),
    (["--max-bytes", "0"], "--max-bytes"),
    (["--reindex", "--log-dir", "/nonexistent/orproxy-logs"], "no such directory"),
])
def test_bad_options_exit_2_with_one_line(run_cli, args, message):
    result = run_cli("orlogserver", *args)
    assert result.returncode == 2, result
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_gunicorn_retention_settings_are_checked(run_cli, tmp_path):
    result = run_cli("gunicorn", "-k", "gevent", "--no-control-socket", "-b", "127.0.0.1:0",
                     "orproxy.wsgi:logserver_app()",
                     env={"ORLOGSERVER_LOG_DIR": str(tmp_path / "l"), "ORLOGSERVER_MAX_AGE": "soon"})
    assert result.returncode != 0 and "ORLOGSERVER_MAX_AGE" in result.stderr
    assert result.stderr.count("is not a duration") == 1  # gunicorn gave up at once
