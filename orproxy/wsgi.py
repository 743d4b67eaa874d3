"""App factories for gunicorn (CONTRACT.md, "Programs"); gunicorn's worker patches the stdlib.

    ORPROXY_CONFIG=config.yaml gunicorn -k gevent 'orproxy.wsgi:proxy_app()'
    ORPROXY_CONFIG=config.yaml gunicorn -k orproxy.worker.GeventWorker 'orproxy.wsgi:proxy_app()'
    ORLOGSERVER_LOG_DIR=logs gunicorn -k orproxy.worker.GeventWorker 'orproxy.wsgi:logserver_app()'
    ORLOGSERVER_LOG_DIR=logs gunicorn -k gevent 'orproxy.wsgi:logserver_app()'
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable

from orproxy.config import ConfigError, load_config, load_prices

# Each worker's metrics listener takes the first free port from server.metrics_port on,
# up to this many (proxymetrics.py): worker i of N scrapes at metrics_port + i.
WORKER_METRICS_PORTS = 64


def proxy_app() -> Callable:
    from orproxy.hosting.gunicorn import for_gunicorn
    from orproxy.hosting.server import prepare_process
    from orproxy.proxy import ProxyApp

    prepare_process()  # before the app: its log sink sizes itself by the files limit
    path = os.environ.get("ORPROXY_CONFIG", "config.yaml")
    try:
        return for_gunicorn(ProxyApp(load_config(path), metrics_ports=WORKER_METRICS_PORTS))
    except ConfigError as e:
        print(f"orproxy: {e}", file=sys.stderr)
        sys.exit(2)


def logserver_app() -> Callable:
    """The logging server; ORLOGSERVER_LOG_DIR (default logs), retention from
    ORLOGSERVER_MAX_AGE (e.g. 7d) and ORLOGSERVER_MAX_BYTES (e.g. 10G), and
    ORLOGSERVER_STALE_AFTER (e.g. 15m), as --max-age, --max-bytes and --stale-after;
    ORLOGSERVER_TOKEN, ORLOGSERVER_ALLOWED_HOSTS and ORLOGSERVER_REPLAY_VIA (both
    comma-separated) as --token, --allowed-host and --replay-via, ORLOGSERVER_CONFIG (prices of
    your own) as --config, ORLOGSERVER_INDEX (postgresql://…) as --index. Bound beyond
    loopback without a token, it refuses every request.
    Create it in each worker (no --preload): it starts threads."""
    log_dir = os.environ.get("ORLOGSERVER_LOG_DIR", "logs")
    os.makedirs(os.path.join(log_dir, ".ids"), exist_ok=True)  # at once: the imports take a while
    from orproxy.hosting.gunicorn import for_gunicorn
    from orproxy.hosting.server import prepare_process
    from orproxy.logserver.app import LogServerApp
    from orproxy.logserver.web.guard import token_problem
    from orproxy.logserver.web.replay import parse_origin
    from orproxy.logserver.web.units import parse_duration, parse_size

    prepare_process()

    limits = {}
    for key, name, parse in (("max_age", "ORLOGSERVER_MAX_AGE", parse_duration),
                             ("max_bytes", "ORLOGSERVER_MAX_BYTES", parse_size),
                             ("stale_after", "ORLOGSERVER_STALE_AFTER", parse_duration)):
        text = os.environ.get(name)
        if not text:
            continue
        try:
            limits[key] = parse(text)
            if limits[key] <= 0:
                raise ValueError(f"{text!r} must be more than 0")
        except ValueError as e:
            print(f"orlogserver: {name}: {e}", file=sys.stderr)
            sys.exit(4)  # gunicorn's APP_LOAD_ERROR: the master stops instead of rebooting workers
    token = os.environ.get("ORLOGSERVER_TOKEN") or None
    if token is not None and token_problem(token):
        print(f"orlogserver: ORLOGSERVER_TOKEN: {token_problem(token)}", file=sys.stderr)
        sys.exit(4)
    hosts = [h.strip() for h in os.environ.get("ORLOGSERVER_ALLOWED_HOSTS", "").split(",") if h.strip()]
    prices = ()
    if os.environ.get("ORLOGSERVER_CONFIG"):
        try:
            prices = load_prices(os.environ["ORLOGSERVER_CONFIG"])
        except ConfigError as e:
            print(f"orlogserver: ORLOGSERVER_CONFIG: {e}", file=sys.stderr)
            sys.exit(4)
    via = [o.strip() for o in os.environ.get("ORLOGSERVER_REPLAY_VIA", "").split(",") if o.strip()]
    try:
        via = [parse_origin(origin) for origin in via]
    except ValueError as e:
        print(f"orlogserver: ORLOGSERVER_REPLAY_VIA: {e}", file=sys.stderr)
        sys.exit(4)
    from orproxy.logserver.store.stores import IndexUnavailable, StoreUnavailable
    try:
        app = LogServerApp(log_dir, **limits, allowed_hosts=hosts, token=token, replay_via=via, prices=prices,
                           index_url=os.environ.get("ORLOGSERVER_INDEX") or None,
                           store_url=os.environ.get("ORLOGSERVER_STORE") or None)
    except IndexUnavailable as e:
        print(f"orlogserver: ORLOGSERVER_INDEX {e}", file=sys.stderr)
        sys.exit(4)
    except StoreUnavailable as e:
        print(f"orlogserver: ORLOGSERVER_STORE {e}", file=sys.stderr)
        sys.exit(4)
    return for_gunicorn(app)
