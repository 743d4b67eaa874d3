"""The object store that holds the bodies' segments (`orlogserver --store s3://bucket/prefix`).

obstore's S3 client, run in a gevent thread pool: docs/scaling-out.md measured it the
cheapest for the logging server (0.67 ms of CPU a PUT, on Rust threads that leave the
loop free; boto3 held the loop 12.5 ms). The endpoint and credentials come from the AWS
variables (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
`AWS_REGION`, ...), so AWS S3, MinIO, Cloudflare R2 and GCS's interop all work; an
`http://` endpoint (a MinIO on the LAN, the tests' moto) is allowed as it is named.

A call from a thread that is not the loop's (the deriver's pool) runs right there.
"""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from gevent.monkey import get_original
from gevent.threadpool import ThreadPool

from orproxy.logserver.store.stores import StoreUnavailable

THREADS = 8
_thread_id = get_original("_thread", "get_ident")


def _caught(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[bool, Any]:
    try:
        return False, fn(*args, **kwargs)
    except Exception as e:
        return True, e


class ObjectStoreError(StoreUnavailable):
    """The object store refused or did not answer (named in the message, never its keys)."""


def parse_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of `s3://bucket/prefix`; ValueError for anything else."""
    if not url.startswith("s3://"):
        raise ValueError(f"{url.split(':', 1)[0]!r} is not a store this server knows: give s3://BUCKET/PREFIX, "
                         "or file:DIR (the default: the log dir)")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"{url}: no bucket named (s3://BUCKET/PREFIX)")
    return bucket, prefix.strip("/")


class Objects:
    """put, a range read, list and delete, by key under the store's prefix."""

    def __init__(self, url: str, threads: int = THREADS) -> None:
        from obstore.store import S3Store
        self.url = url.rstrip("/")
        bucket, prefix = parse_url(url)
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
        options: dict[str, Any] = {"timeout": "60s", "connect_timeout": "5s"}
        if endpoint.startswith("http://"):
            options["allow_http"] = True
        self._store = S3Store(bucket, prefix=prefix or None, client_options=options,
                              retry_config={"max_retries": 3, "retry_timeout": timedelta(seconds=10),
                                            "backoff": {"init_backoff": timedelta(milliseconds=50),
                                                        "max_backoff": timedelta(seconds=2), "base": 2}})
        self._pool = ThreadPool(threads)
        self._loop_thread = _thread_id()

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if _thread_id() == self._loop_thread:  # its error comes back as a value: gevent would print it
            failed, value = self._pool.apply(_caught, (fn, args, kwargs))
        else:
            failed, value = _caught(fn, args, kwargs)
        if not failed:
            return value
        if isinstance(value, FileNotFoundError):
            raise value
        # obstore's errors carry the request, not the credentials
        raise ObjectStoreError(f"{self.url}: {str(value).splitlines()[0][:300]}") from None

    def put(self, key: str, data: bytes) -> None:
        import obstore
        self._call(obstore.put, self._store, key, data)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        import obstore
        return bytes(self._call(obstore.get_range, self._store, key, start=start, length=length))

    def sizes(self, under: str) -> list[tuple[str, int]]:
        """(key, size) of every object under `under`, by key."""
        import obstore

        def listing() -> list[tuple[str, int]]:
            return sorted((m["path"], m["size"]) for batch in obstore.list(self._store, under) for m in batch)
        return self._call(listing)

    def delete(self, keys: list[str]) -> None:
        import obstore
        if keys:
            self._call(obstore.delete, self._store, keys)

    def check(self) -> None:
        """Fail now, with the reason, if the bucket cannot be listed (missing, no rights)."""
        try:
            self.sizes("segments/none")
        except FileNotFoundError as e:
            raise ObjectStoreError(f"{self.url}: {str(e).splitlines()[0][:300]}") from None

    def close(self) -> None:
        self._pool.kill()
