"""The object store that holds the bodies' segments (`orlogserver --store s3://bucket/prefix`).

obstore's S3 client, run in a gevent thread pool: docs/scaling-out.md measured it the
cheapest for the logging server (0.67 ms of CPU a PUT, on Rust threads that leave the
loop free; boto3 held the loop 12.5 ms). The endpoint and credentials come from the AWS
variables (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
`AWS_REGION`, ...), so AWS S3, MinIO, Cloudflare R2 and GCS's interop all work; an
`http://` endpoint (a MinIO on the LAN, the tests' moto) is allowed as it is named.

A call from a thread that is not the loop's (the deriver's pool) runs right there.

Multipart uploads (store/uploads.py) go through boto3 instead, on the loop over gevent's
sockets: obstore offers no call that uploads one part and says when it is stored. A 5 MiB
part costs the loop 5.3 ms of CPU (docs/scaling-out.md).
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
        self._bucket, self._prefix = bucket, f"{prefix}/" if prefix else ""
        self._endpoint = endpoint
        self._boto: Any = None

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

    # -- multipart uploads (boto3) --------------------------------------------------------------

    def _multipart(self, call: str, key: str, **kwargs: Any) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError
        if self._boto is None:
            import boto3
            from botocore.config import Config
            # Each part carries its CRC32, which S3 checks, instead of a SHA-256 signature of its
            # bytes (5.3 ms of CPU a 5 MiB part against 7.1 over http; over https botocore
            # signs the bytes unless a checksum goes with them).
            self._boto = boto3.client("s3", config=Config(
                connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"},
                response_checksum_validation="when_required",
                s3={"addressing_style": "path" if self._endpoint else "auto",  # as obstore addresses it
                    "payload_signing_enabled": False}))
        try:
            return getattr(self._boto, call)(Bucket=self._bucket, Key=self._prefix + key, **kwargs)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            raise ObjectStoreError(f"{self.url}: {call}: {code or 'error'}: {str(e)[:300]}") from None
        except BotoCoreError as e:
            raise ObjectStoreError(f"{self.url}: {call}: {str(e)[:300]}") from None

    def start_upload(self, key: str) -> str:
        """A new multipart upload of `key`: its upload id."""
        return str(self._multipart("create_multipart_upload", key)["UploadId"])

    def put_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        """Upload part `number` (stored once this returns); its ETag."""
        return str(self._multipart("upload_part", key, UploadId=upload_id, PartNumber=number, Body=data)["ETag"])

    def complete_upload(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> None:
        """Join the parts, in number order, into the object `key`."""
        self._multipart("complete_multipart_upload", key, UploadId=upload_id, MultipartUpload={
            "Parts": [{"PartNumber": number, "ETag": etag} for number, etag in sorted(parts)]})

    def abort_upload(self, key: str, upload_id: str) -> None:
        """Drop an upload's parts (none of its bytes is wanted any more)."""
        try:
            self._multipart("abort_multipart_upload", key, UploadId=upload_id)
        except ObjectStoreError:
            pass  # gone already; else a lifecycle rule's to remove (README, "Scaling out")

    def size(self, key: str) -> int | None:
        """An object's size; None if there is none."""
        import obstore
        try:
            return int(self._call(obstore.head, self._store, key)["size"])
        except FileNotFoundError:
            return None

    def check(self) -> None:
        """Fail now, with the reason, if the bucket cannot be listed (missing, no rights)."""
        try:
            self.sizes("segments/none")
        except FileNotFoundError as e:
            raise ObjectStoreError(f"{self.url}: {str(e).splitlines()[0][:300]}") from None

    def close(self) -> None:
        self._pool.kill()
        if self._boto is not None:
            self._boto.close()
