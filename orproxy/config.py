"""The proxy's configuration: every setting declared once, validated by small pure functions.

A mistake is reported as one line, `file: key.path: what was wrong`, and the commands turn
that ConfigError into exit code 2 (see CONTRACT.md, "Configuration").
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable
from urllib.parse import urlsplit

import yaml

from orproxy.hosting.framing import HeadLimits
from orproxy.routes import Route, RouteTable

DEFAULT_REDACTED = ("authorization", "proxy-authorization", "x-api-key", "api-key", "x-goog-api-key",
                    "cookie", "set-cookie")


class ConfigError(Exception):
    """A configuration mistake, already worded for the user."""


@dataclass(frozen=True)
class ModelPrice:
    """A price of your own for models the table does not know (a private or local one), in
    USD per million tokens; `model` is a name or a glob (`qwen3-*`). The logging server
    prices exchanges with it (`orlogserver --config`); the proxy only checks it."""
    model: str
    input: float
    output: float
    cache_read: float | None = None   # default: the input price
    cache_write: float | None = None  # default: the input price


@dataclass(frozen=True)
class Config:
    host: str = "localhost"
    port: int = 5601
    shutdown_timeout: float = 10.0
    limits: HeadLimits = HeadLimits()
    metrics_port: int | None = None            # the proxy's own metrics listener; None: off
    metrics_host: str = "127.0.0.1"            # not server.host: traffic figures stay on this machine
    console: bool = True
    log_file: str | None = None
    server_url: str = "http://localhost:8080"
    logging_enabled: bool = True
    log_unrouted: bool = False
    redact_headers: frozenset[str] = frozenset(DEFAULT_REDACTED)
    spool_dir: str = ".orproxy-spool"          # relative: to the config file's directory
    spool_max_bytes: int = 1024 * 1024 * 1024  # 0: no spool
    log_token: str | None = field(default=None, repr=False)  # the logging server's --token
    routes: RouteTable = field(default_factory=lambda: RouteTable([]))
    prices: tuple[ModelPrice, ...] = ()


# --- validators: each takes (value, where) and returns the clean value or raises ---------

def _fail(where: str, value: Any, expected: str) -> ConfigError:
    shown = json.dumps(value) if isinstance(value, str) else repr(value)
    return ConfigError(f"{where}: {shown} is not {expected}")


def _bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    raise _fail(where, value, "true or false")


def _str(value: Any, where: str) -> str:
    if isinstance(value, str) and value:
        return value
    raise _fail(where, value, "a non-empty string")


def _port(value: Any, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 65535:
        return value
    raise _fail(where, value, "a port number (0-65535)")


def _seconds(value: Any, where: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    raise _fail(where, value, "a positive number of seconds")


def _http_url(value: Any, where: str) -> str:
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise _fail(where, value, "an http(s) URL")
    try:
        parts.port
    except ValueError:
        raise _fail(where, value, "an http(s) URL with a valid port") from None
    return value


def _path_prefix(value: Any, where: str) -> str:
    if isinstance(value, str) and value.startswith("/"):
        return value
    raise _fail(where, value, "a path prefix starting with '/'")


def _count(value: Any, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise _fail(where, value, "a whole number more than 0")


def _byte_count(value: Any, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise _fail(where, value, "a number of bytes (0 or more)")


def _header_list(value: Any, where: str) -> frozenset[str]:
    if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
        return frozenset(v.lower() for v in value)
    raise _fail(where, value, "a list of header names")


def _usd(value: Any, where: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1e6:
        return float(value)
    raise _fail(where, value, "a price in USD per million tokens (0 or more)")


def _prices(data: Any, where: str = "prices") -> tuple[ModelPrice, ...]:
    """`prices: {MODEL: {input: USD, output: USD, cache_read: USD, cache_write: USD}}`."""
    if data is None:
        return ()
    if not isinstance(data, dict):
        raise _fail(where, data, "a mapping of model name to prices")
    prices = []
    for model, spec in data.items():
        path = f"{where}.{model}"
        clean = _section(spec, path, {"input": _usd, "output": _usd, "cache_read": _usd, "cache_write": _usd})
        for required in ("input", "output"):
            if required not in clean:
                raise ConfigError(f"{path}.{required}: missing")
        prices.append(ModelPrice(str(model), **clean))
    return tuple(prices)


def _section(data: Any, where: str, known: dict[str, Callable[[Any, str], Any]]) -> dict[str, Any]:
    """Check a mapping's keys against the declared ones and validate each value."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise _fail(where, data, "a mapping")
    clean = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in known:
            raise ConfigError(f"{path}: unknown key (expected one of: {', '.join(known)})")
        clean[key] = known[key](value, path)
    return clean


_ROUTE_KEYS: dict[str, Callable[[Any, str], Any]] = {
    "source": _path_prefix,
    "destination": _http_url,
    "name": _str,
    "logging": _bool,
    "connect_timeout": _seconds,
    "read_timeout": _seconds,
}


def _routes(data: Any, defaults: dict[str, float], log_unrouted: bool) -> RouteTable:
    """Accept a list of routes, or the Go program's mapping of name -> {source, destination}.
    At least one, unless `logging.default` asks to log unrouted requests on purpose (a
    proxy without routes answers 404 to everything: a mistake, unless it is a logging trap)."""
    if not data:
        if log_unrouted:
            return RouteTable([])
        raise ConfigError("routes: at least one route is required")
    if isinstance(data, dict):
        items = [(f"routes.{name}", {"name": str(name), **(spec or {})} if isinstance(spec, dict) else spec)
                 for name, spec in data.items()]
    elif isinstance(data, list):
        items = [(f"routes[{i}]", spec) for i, spec in enumerate(data)]
    else:
        raise _fail("routes", data, "a list of routes or a mapping of name to route")
    routes = []
    for where, spec in items:
        clean = _section(spec, where, _ROUTE_KEYS)
        for required in ("source", "destination"):
            if required not in clean:
                raise ConfigError(f"{where}.{required}: missing")
        routes.append(Route(
            source=clean["source"],
            destination=clean["destination"],
            name=clean.get("name") or clean["source"],
            logging=clean.get("logging", True),
            connect_timeout=clean.get("connect_timeout", defaults["connect_timeout"]),
            read_timeout=clean.get("read_timeout", defaults["read_timeout"]),
        ))
    return RouteTable(routes)


def parse_config(data: Any) -> Config:
    """Build a Config from parsed YAML; raise ConfigError naming the key on any mistake."""
    top = _section(data, "", {"server": lambda v, w: v, "logging": lambda v, w: v,
                              "upstream": lambda v, w: v, "routes": lambda v, w: v, "prices": _prices})
    server = _section(top.get("server"), "server", {
        "port": _port, "host": _str, "shutdown_timeout": _seconds, "max_header_bytes": _count,
        "max_headers": _count, "head_timeout": _seconds, "idle_timeout": _seconds,
        "metrics_port": _port, "metrics_host": _str})
    if server.get("metrics_port") and server.get("metrics_port") == server.get("port", Config.port):
        raise ConfigError(f"server.metrics_port: {server['metrics_port']} is server.port already "
                          "(the metrics need a port of their own)")
    log = _section(top.get("logging"), "logging", {
        "console": _bool, "file": _str, "server_url": _http_url, "enabled": _bool,
        "binary_files": _bool, "redact_headers": _header_list, "default": _bool,
        "spool_dir": _str, "spool_max_bytes": _byte_count, "token": _str})
    upstream = _section(top.get("upstream"), "upstream", {
        "connect_timeout": _seconds, "read_timeout": _seconds})
    defaults = {"connect_timeout": upstream.get("connect_timeout", 10.0),
                "read_timeout": upstream.get("read_timeout", 600.0)}
    return Config(
        host=server.get("host", "localhost"),
        port=server.get("port", 5601),
        shutdown_timeout=server.get("shutdown_timeout", 10.0),
        metrics_port=server.get("metrics_port"),
        metrics_host=server.get("metrics_host", Config.metrics_host),
        limits=HeadLimits(**{k: server[k] for k in ("max_header_bytes", "max_headers", "head_timeout",
                                                     "idle_timeout") if k in server}),
        console=log.get("console", True),
        log_file=log.get("file"),
        server_url=log.get("server_url", "http://localhost:8080").rstrip("/"),
        # `binary_files: false` was the Go program's switch for the same stream.
        logging_enabled=log.get("enabled", True) and log.get("binary_files", True),
        log_unrouted=log.get("default", False),
        redact_headers=log.get("redact_headers", frozenset(DEFAULT_REDACTED)),
        spool_dir=log.get("spool_dir", Config.spool_dir),
        spool_max_bytes=log.get("spool_max_bytes", Config.spool_max_bytes),
        log_token=log.get("token"),
        routes=_routes(top.get("routes"), defaults, log.get("default", False)),
        prices=top.get("prices", ()),
    )


def load_prices(path: str) -> tuple[ModelPrice, ...]:
    """The `prices` of a configuration file, for the logging server: the rest of the file
    is the proxy's (a file of its own may hold `prices` alone)."""
    data = _read_yaml(path)
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: not a mapping of sections (server, logging, routes, prices)")
    try:
        return _prices((data or {}).get("prices"))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _read_yaml(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: invalid YAML{line}: {problem}") from None
    return data


def load_config(path: str) -> Config:
    """Read and validate a YAML file; every error message starts with the file name."""
    data = _read_yaml(path)
    try:
        config = parse_config(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    # The spool is found where the configuration says, wherever the proxy was started.
    return replace(config, spool_dir=os.path.join(os.path.dirname(os.path.abspath(path)), config.spool_dir))
