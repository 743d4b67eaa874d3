"""The two commands, `orproxy` and `orlogserver`.

gevent must patch the standard library before anything else imports it, so this module
does that first. Mistakes in arguments or configuration print one line and exit 2.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import sqlite3  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from typing import NoReturn, TypeVar  # noqa: E402

from orproxy import __version__  # noqa: E402
from orproxy.config import ConfigError, ModelPrice, load_config, load_prices  # noqa: E402
from orproxy.hosting.server import prepare_process, serve  # noqa: E402
from orproxy.logserver.store.stores import IndexUnavailable, StoreUnavailable, named_store, open_stores  # noqa: E402
from orproxy.logserver.store.sweeper import STALE_AFTER  # noqa: E402
from orproxy.logserver.web.guard import is_loopback, token_problem  # noqa: E402
from orproxy.logserver.web.units import parse_duration, parse_size  # noqa: E402

T = TypeVar("T", int, float)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def _port(text: str) -> int:
    if text.isdigit() and int(text) <= 65535:
        return int(text)
    raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")


def _replay_origin(text: str) -> str:
    from orproxy.logserver.web.replay import parse_origin  # noqa: PLC0415 (the API's imports, only when given)
    try:
        return parse_origin(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _fail(prog: str, message: str) -> NoReturn:
    print(f"{prog}: {message}", file=sys.stderr)
    sys.exit(2)


def proxy_main(argv: list[str] | None = None) -> None:
    parser = _Parser(prog="orproxy", description="A logging reverse proxy for LLM APIs.")
    parser.add_argument("--config", default="config.yaml", help="YAML configuration (default: config.yaml)")
    parser.add_argument("--host", help="listen address (overrides server.host)")
    parser.add_argument("--port", type=_port, help="listen port (overrides server.port; 0 picks a free one)")
    parser.add_argument("--version", action="version", version=f"orproxy {__version__}")
    args = parser.parse_args(argv)
    prepare_process()  # before the app: its log sink sizes itself by the files limit

    from orproxy.proxy import ProxyApp

    try:
        config = load_config(args.config)
    except ConfigError as e:
        _fail("orproxy", str(e))
    try:
        app = ProxyApp(config)
    except ConfigError as e:
        _fail("orproxy", f"{args.config}: {e}")
    try:
        serve(app, args.host or config.host, config.port if args.port is None else args.port,
              "orproxy", config.shutdown_timeout)
    except OSError as e:
        _fail("orproxy", f"cannot listen on {args.host or config.host}:{args.port or config.port}: {e.strerror}")


def _more_than_0(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type: `parse`'s value, which must be more than 0."""
    def checked(text: str) -> T:
        try:
            value = parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
        return value
    return checked


PRIORITIES = ("idle", "low", "normal")


def lower_priority(priority: str) -> None:
    """SCHED_IDLE for "idle": unlike any nice level, it lets a waking proxy preempt this
    server at once instead of after the scheduler's slice (~1.5 ms, the proxy's p99 at
    concurrency 1). Where SCHED_IDLE is missing (not Linux): nice 19."""
    if priority == "idle" and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return
        except OSError:  # e.g. a seccomp profile that forbids it
            pass
    if priority != "normal":
        os.nice(10 if priority == "low" else 19)


def logserver_main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["migrate"]:
        return migrate_main(argv[1:])
    parser = _Parser(prog="orlogserver", description="The logging server of orproxy: ingest, API and UI.")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default: 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=8080, help="listen port (default: 8080; 0 picks a free one)")
    parser.add_argument("--log-dir", default="logs", help="where the log files go (default: logs)")
    parser.add_argument("--shutdown-timeout", type=float, default=10.0,
                        help="seconds in-flight uploads get to finish on SIGTERM (default: 10)")
    parser.add_argument("--priority", choices=PRIORITIES, default="idle",
                        help="CPU priority: idle (default) runs only on CPU time nothing else wants, "
                             "so that on a shared machine the proxy's traffic always goes first; "
                             "low is nice 10; normal keeps the priority it was started with")
    parser.add_argument("--index", metavar="URL", default=os.environ.get("ORLOGSERVER_INDEX") or None,
                        help="the index in PostgreSQL, postgresql://USER@HOST/DB, which several logging "
                             "servers can share (default: $ORLOGSERVER_INDEX, else SQLite in the log dir)")
    parser.add_argument("--store", metavar="URL", default=os.environ.get("ORLOGSERVER_STORE") or None,
                        help="keep the bodies in an S3-compatible object store, s3://BUCKET/PREFIX, with "
                             "--index in PostgreSQL, so that servers on several hosts share them; the "
                             "endpoint and credentials come from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ... "
                             "(default: $ORLOGSERVER_STORE, else the files in the log dir)")
    parser.add_argument("--reindex", action="store_true",
                        help="rebuild the index (.ids/index.sqlite3 in the log dir) from the files, then exit; "
                             "with --store, from the segment objects")
    parser.add_argument("--max-age", type=_more_than_0(parse_duration), metavar="DURATION",
                        help="delete exchanges older than this, in the background (e.g. 7d, 12h, 3600)")
    parser.add_argument("--stale-after", type=_more_than_0(parse_duration), metavar="DURATION",
                        default=STALE_AFTER,
                        help="an exchange in flight whose files do not change for this long gets a "
                             "final state (default: 15m, longer than the proxy's read timeout)")
    parser.add_argument("--max-bytes", type=_more_than_0(parse_size), metavar="SIZE",
                        help="delete the oldest exchanges while their files exceed this (e.g. 500M, 10G)")
    parser.add_argument("--token", default=os.environ.get("ORLOGSERVER_TOKEN"),
                        help="require this token on every request (default: $ORLOGSERVER_TOKEN): proxies send "
                             "it as logging.token, a browser opens /?token=... once")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="also answer requests addressed to this host name (repeatable); by default only "
                             "the listen address, localhost, 127.0.0.1 and [::1]")
    parser.add_argument("--config", metavar="PATH", default=os.environ.get("ORLOGSERVER_CONFIG"),
                        help="read prices of your own (the `prices` section) from this YAML file, e.g. the "
                             "proxy's config.yaml (default: $ORLOGSERVER_CONFIG)")
    parser.add_argument("--replay-via", action="append", default=[], metavar="ORIGIN",
                        type=_replay_origin,
                        help="also replay logged requests through the proxy at this origin, e.g. "
                             "http://proxy.lan:5601 (repeatable); by default only through proxies on loopback")
    parser.add_argument("--version", action="version", version=f"orlogserver {__version__}")
    args = parser.parse_args(argv)
    prices = ()
    if args.config:
        try:
            prices = load_prices(args.config)
        except ConfigError as e:
            _fail("orlogserver", str(e))
    if args.token is not None and token_problem(args.token):
        _fail("orlogserver", f"--token: {token_problem(args.token)}")
    if not args.token and not is_loopback(args.host):
        _fail("orlogserver", f"--host {args.host} reaches beyond this machine: set a token with --token or "
                             "ORLOGSERVER_TOKEN (the log holds every prompt and answer), or listen on 127.0.0.1")

    lower_priority(args.priority)
    prepare_process()
    if args.reindex:
        _reindex(args.log_dir, args.index, args.store, prices)
        return

    from orproxy.logserver.app import LogServerApp

    with _storage_mistakes(args.log_dir, "opened"):
        app = LogServerApp(args.log_dir, max_age=args.max_age, max_bytes=args.max_bytes,
                           stale_after=args.stale_after, allowed_hosts=args.allowed_host, token=args.token,
                           prices=prices, replay_via=args.replay_via, index_url=args.index,
                           store_url=args.store)
    try:
        serve(app, args.host, args.port, "orlogserver", args.shutdown_timeout)
    except OSError as e:
        _fail("orlogserver", f"cannot listen on {args.host}:{args.port}: {e.strerror}")


@contextmanager
def _storage_mistakes(log_dir: str, index_done: str) -> Iterator[None]:
    """The store's and the index's refusals as one-line mistakes (exit code 2), each naming
    the option to put right."""
    try:
        yield
    except StoreUnavailable as e:  # an OSError too: first
        _fail("orlogserver", f"--store {e}")
    except OSError as e:
        _fail("orlogserver", f"--log-dir {log_dir}: {e.strerror or e}")
    except sqlite3.Error as e:
        _fail("orlogserver", f"--log-dir {log_dir}: the index cannot be {index_done}: {e}")
    except IndexUnavailable as e:
        _fail("orlogserver", f"--index {e}")


def _reindex(log_dir: str, index_url: str | None, store_url: str | None, prices: tuple[ModelPrice, ...]) -> None:
    from orproxy.logserver.llm.pricing import Pricing
    from orproxy.logserver.store.reindex import reindex

    store_url, log_dir = named_store(store_url, log_dir)
    if store_url is None and not os.path.isdir(log_dir):
        _fail("orlogserver", f"--log-dir {log_dir}: no such directory")
    with _storage_mistakes(log_dir, "written"):
        files, index = open_stores(store_url, log_dir, index_url, Pricing(prices))
        if store_url is not None:
            from orproxy.logserver.store.transfer import restore_from_segments
            restored = restore_from_segments(files)
            print(f"orlogserver: {restored.segments} segments in {files.path} ({restored.recorded} recorded now), "
                  f"{restored.documents} documents")
        result = reindex(files, index)
        index.close()
        files.close()
    print(f"orlogserver: indexed {result.indexed} exchanges from {files.path} in {result.seconds:.1f}s "
          f"({result.derived} derived from their bodies, {result.removed} stale rows removed, "
          f"{result.skipped} unreadable metadata files skipped)")


def migrate_main(argv: list[str]) -> None:
    """`orlogserver migrate --from file:DIR --to s3://… --index postgresql://…`."""
    parser = _Parser(prog="orlogserver migrate",
                     description="Copy a log dir (its bodies, documents and index) into an object store and "
                                 "PostgreSQL; run it again to resume, or to copy what changed since.")
    parser.add_argument("--from", dest="source", required=True, metavar="file:DIR", help="the log dir to copy")
    parser.add_argument("--to", dest="target", required=True, metavar="s3://BUCKET/PREFIX",
                        help="the object store (endpoint and credentials: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...)")
    parser.add_argument("--index", metavar="URL", default=os.environ.get("ORLOGSERVER_INDEX") or None,
                        help="the PostgreSQL database, postgresql://USER@HOST/DB (default: $ORLOGSERVER_INDEX)")
    args = parser.parse_args(argv)
    other, source_dir = named_store(args.source, "")
    if other is not None or not source_dir:
        _fail("orlogserver migrate", f"--from {args.source}: give file:DIR, the log dir to copy")
    if not args.target.startswith("s3://"):
        _fail("orlogserver migrate", f"--to {args.target}: give s3://BUCKET/PREFIX, the object store to fill")
    if not os.path.isdir(source_dir):
        _fail("orlogserver migrate", f"--from {args.source}: no such directory")
    prepare_process()
    from orproxy.logserver.store.logdir import LogDir
    from orproxy.logserver.store.transfer import migrate
    work = os.path.join(os.path.abspath(source_dir), ".ids", "migrate")
    try:
        target, index = open_stores(args.target, work, args.index)
        source = LogDir(source_dir)
        result = migrate(source, target, index, say=print)
        index.close()
        target.close()
    except StoreUnavailable as e:
        _fail("orlogserver migrate", f"--to {e}")
    except IndexUnavailable as e:
        _fail("orlogserver migrate", f"--index {e}")
    print(f"orlogserver: migrated {result.copied} exchanges ({result.bytes} bytes of bodies) from {source.path} "
          f"to {target.path} in {result.seconds:.1f}s; {result.already} were there already, {result.skipped} "
          f"skipped; {result.indexed} indexed")


if __name__ == "__main__":
    {"proxy": proxy_main, "logserver": logserver_main}[sys.argv[1]](sys.argv[2:])
