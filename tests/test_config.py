"""Configuration: the seed's examples load, the Go program's forms are accepted, and every
mistake is refused with the file, the key path and what was expected (exit code 2)."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from orproxy.config import ConfigError, load_config, parse_config

SEED_CONFIGS = Path(__file__).resolve().parent / "fixtures" / "seed_configs"
BIN = Path(sys.executable).parent


def seed_configs():
    """The seed document's example configurations (its ```yaml blocks, shipped in
    tests/fixtures/seed_configs/), those that have routes."""
    texts = [p.read_text() for p in sorted(SEED_CONFIGS.glob("*.yaml"))]
    return [t for t in texts if "routes:" in t]


def test_the_seed_has_example_configs():
    assert len(seed_configs()) >= 3


@pytest.mark.parametrize("name", sorted(p.name for p in SEED_CONFIGS.glob("*.yaml")))
def test_every_seed_example_loads(tmp_path, name):
    path = tmp_path / "config.yaml"
    path.write_text((SEED_CONFIGS / name).read_text())
    config = load_config(str(path))
    assert len(config.routes) >= 1
    assert all(r.destination.startswith("https://") for r in config.routes.routes)


def test_seed_example_with_binary_files_false_turns_logging_off(tmp_path):
    example = next(c for c in seed_configs() if "binary_files: false" in c)
    path = tmp_path / "config.yaml"
    path.write_text(example)
    config = load_config(str(path))
    assert config.logging_enabled is False
    assert config.host == "0.0.0.0" and config.port == 8080


def test_the_repository_config_loads():
    config = load_config(str(Path(__file__).resolve().parents[1] / "config.yaml"))
    assert config.host == "127.0.0.1"
    assert config.routes.match("/api/v1/chat/completions").name == "openrouter"


def test_routes_as_a_mapping_with_per_route_logging_and_default():
    config = parse_config({
        "logging": {"default": True},
        "routes": {"openrouter": {"source": "/api/v1/", "destination": "https://openrouter.ai/"},
                   "models": {"source": "/api/v1/models", "destination": "https://openrouter.ai/",
                              "logging": False}},
    })
    assert config.log_unrouted is True
    assert config.routes.match("/api/v1/chat").name == "openrouter"
    models = config.routes.match("/api/v1/models")
    assert models.name == "models" and models.logging is False


def test_defaults():
    config = parse_config({"routes": [{"source": "/a/", "destination": "http://x/"}]})
    assert (config.host, config.port, config.console, config.logging_enabled) == ("localhost", 5601, True, True)
    route = config.routes.match("/a/b")
    assert (route.connect_timeout, route.read_timeout, config.shutdown_timeout) == (10.0, 600.0, 10.0)
    assert "authorization" in config.redact_headers
    assert (config.metrics_port, config.metrics_host) == (None, "127.0.0.1")  # no metrics listener


def test_the_metrics_listener_is_configured_apart_from_the_server():
    config = parse_config({"server": {"host": "0.0.0.0", "metrics_port": 9464},
                           "routes": [{"source": "/a/", "destination": "http://x/"}]})
    assert (config.host, config.metrics_host, config.metrics_port) == ("0.0.0.0", "127.0.0.1", 9464)


@pytest.mark.parametrize("routes", [None, [], {}])
def test_a_config_without_routes_is_refused(routes):
    data = {"server": {"port": 5601}} if routes is None else {"routes": routes}
    with pytest.raises(ConfigError) as error:
        parse_config(data)
    assert str(error.value) == "routes: at least one route is required"


def test_no_routes_are_allowed_when_unrouted_requests_are_logged_on_purpose():
    config = parse_config({"logging": {"default": True}})
    assert len(config.routes) == 0 and config.log_unrouted


def test_upstream_timeouts_apply_to_routes_unless_overridden():
    config = parse_config({"upstream": {"connect_timeout": 3, "read_timeout": 30},
                           "routes": [{"source": "/a/", "destination": "http://x/"},
                                      {"source": "/b/", "destination": "http://x/", "read_timeout": 5}]})
    a, b = config.routes.match("/a/1"), config.routes.match("/b/1")
    assert (a.connect_timeout, a.read_timeout) == (3.0, 30.0)
    assert (b.connect_timeout, b.read_timeout) == (3.0, 5.0)


@pytest.mark.parametrize("data, message", [
    ({"routes": [{"source": "/a/", "destination": "http://x/"}, {"source": "/b/", "destination": "ftp://x"}]},
     'routes[1].destination: "ftp://x" is not an http(s) URL'),
    ({"server": {"port": "80"}}, 'server.port: "80" is not a port number'),
    ({"server": {"port": 70000}}, "server.port: 70000 is not a port number"),
    ({"server": {"prot": 80}}, "server.prot: unknown key"),
    ({"loging": {}}, "loging: unknown key"),
    ({"logging": {"console": "yes"}}, 'logging.console: "yes" is not true or false'),
    ({"logging": {"server_url": "localhost:8080"}}, "logging.server_url:"),
    ({"upstream": {"read_timeout": -1}}, "upstream.read_timeout: -1 is not a positive number"),
    ({"routes": [{"source": "api/", "destination": "http://x/"}]}, "routes[0].source:"),
    ({"routes": [{"source": "/api/"}]}, "routes[0].destination: missing"),
    ({"routes": [{"source": "/a/", "destination": "http://x/", "colour": 1}]}, "routes[0].colour: unknown key"),
    ({"routes": {"or": {"source": "/a/", "destination": 5}}}, "routes.or.destination: 5 is not an http(s) URL"),
    ({"routes": "x"}, "routes:"),
    ([1, 2], "is not a mapping"),
    ({"server": {"metrics_port": "9464"}}, 'server.metrics_port: "9464" is not a port number (0-65535)'),
    ({"server": {"metrics_port": True}}, "server.metrics_port: True is not a port number"),
    ({"server": {"metrics_host": ""}}, 'server.metrics_host: "" is not a non-empty string'),
    ({"server": {"port": 9464, "metrics_port": 9464}}, "server.metrics_port: 9464 is server.port already"),
])
def test_mistakes_name_the_key_and_what_was_expected(data, message):
    with pytest.raises(ConfigError) as error:
        parse_config(data)
    assert message in str(error.value)


def run_proxy(*args, cwd=None):
    return subprocess.run([str(BIN / "orproxy"), *args], capture_output=True, text=True, timeout=20, cwd=cwd)


@pytest.mark.parametrize("content, expected", [
    ("routes:\n  - source: /a/\n    destination: ftp://x\n", 'config.yaml: routes[0].destination: "ftp://x" is not an http(s) URL'),
    ("server: [unclosed\n", "config.yaml: invalid YAML (line 2)"),
    ("server:\n  port: 5601\n  bogus: 1\n", "config.yaml: server.bogus: unknown key"),
    ("server:\n  port: 5601\n", "config.yaml: routes: at least one route is required"),
    ("server:\n  metrics_port: -1\nroutes: [{source: /, destination: 'http://x/'}]\n",
     "config.yaml: server.metrics_port: -1 is not a port number (0-65535)"),
])
def test_bad_config_exits_2_with_one_line(tmp_path, content, expected):
    (tmp_path / "config.yaml").write_text(content)
    result = run_proxy(cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"orproxy: {expected}")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_missing_config_file_exits_2(tmp_path):
    result = run_proxy("--config", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"orproxy: {tmp_path / 'absent.yaml'}: cannot read: No such file or directory"


def test_unwritable_log_file_exits_2(tmp_path):
    (tmp_path / "config.yaml").write_text(textwrap.dedent("""\
        logging: {file: /nonexistent-dir/requests.log}
        routes: [{source: /, destination: "http://127.0.0.1:9/"}]
    """))
    result = run_proxy(cwd=tmp_path)
    assert result.returncode == 2
    assert "logging.file" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [["--port", "x"], ["--bogus"], ["--port", "99999"]])
def test_bad_arguments_exit_2_with_one_line(args):
    result = run_proxy(*args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1


def test_help_and_version():
    for command in ("orproxy", "orlogserver"):
        result = subprocess.run([str(BIN / command), "--version"], capture_output=True, text=True, timeout=20)
        assert result.returncode == 0 and result.stdout.startswith(command)
        result = subprocess.run([str(BIN / command), "--help"], capture_output=True, text=True, timeout=20)
        assert result.returncode == 0 and "--port" in result.stdout
