"""Object store on MinIO or any S3-compatible endpoint, through the ``minio`` SDK."""

from __future__ import annotations

import contextlib
import io
import re
import threading
from collections.abc import Callable
from typing import TypeVar

import urllib3
from minio import Minio
from minio.error import MinioException, S3Error

from orchestrator.errors import (
    ConfigError,
    InputError,
    NotFoundError,
    StackError,
    StoreUnavailable,
)
from orchestrator.settings import ObjectsSettings

T = TypeVar("T")

_MISSING = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchObject"})
_ALREADY_THERE = frozenset({"BucketAlreadyOwnedByYou", "BucketAlreadyExists"})
_BUSY = frozenset({"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"})
_BUCKET_PREFIX = re.compile(r"([a-z0-9][a-z0-9.-]*)?")


class MinioObjectStore:
    """Objects as S3 objects; bucket ``b`` lives in the S3 bucket ``bucket_prefix + b``.

    ``bucket_prefix`` (default ``""``) lets several stores share one server
    without seeing each other's objects, as the tests do. It is invisible to
    callers: ``uri`` names the bucket without it.

    Atomicity: ``put`` is one PUT (or a multipart upload, for large objects)
    that S3 publishes whole on completion, so readers see the old object or the
    new one, never part of it. ``delete`` is one idempotent DELETE. ``list``
    pages through the bucket and is not a snapshot: objects put or deleted
    while it runs may or may not appear.

    A bucket is created by the first ``put`` into it; reads of a bucket that
    does not exist yet find nothing. Which buckets exist is cached per store.
    Errors from the server become ``NotFoundError`` (no such key or bucket) or
    ``StackError`` (anything else, naming the endpoint).
    """

    def __init__(
        self,
        endpoint: str,
        access_key: str | None = None,
        secret_key: str | None = None,
        *,
        secure: bool = False,
        region: str | None = None,
        bucket_prefix: str = "",
    ):
        if not _BUCKET_PREFIX.fullmatch(bucket_prefix):
            raise ConfigError(f"bucket prefix {bucket_prefix!r}: use a-z, 0-9, '.' and '-'")
        try:
            self._client = Minio(endpoint, access_key, secret_key, secure=secure, region=region)
        except ValueError as e:
            raise ConfigError(f"object store endpoint {endpoint!r}: {e}") from e
        self.endpoint = endpoint
        self.bucket_prefix = bucket_prefix
        self._buckets: set[str] = set()
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, objects: ObjectsSettings, bucket_prefix: str = "") -> MinioObjectStore:
        """The store the ``objects`` settings group names; ``endpoint`` must be set."""
        if not objects.endpoint:
            raise ConfigError("objects.endpoint is not set")
        return cls(
            objects.endpoint,
            objects.access_key,
            objects.secret_key,
            secure=objects.secure,
            region=objects.region,
            bucket_prefix=bucket_prefix,
        )

    def put(self, bucket: str, key: str, data: bytes) -> None:
        key = _checked(key)
        name = self._ensure_bucket(bucket)

        def upload() -> None:
            self._client.put_object(name, key, io.BytesIO(data), len(data))

        try:
            self._call(f"{name}/{key}", upload)
        except NotFoundError:  # the bucket was removed behind the cache's back
            self._buckets.discard(name)
            self._ensure_bucket(bucket)
            self._call(f"{name}/{key}", upload)

    def get(self, bucket: str, key: str) -> bytes:
        key, name = _checked(key), self.bucket_prefix + bucket

        def read() -> bytes:
            response = self._client.get_object(name, key)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return self._call(f"{name}/{key}", read)

    def exists(self, bucket: str, key: str) -> bool:
        key, name = _checked(key), self.bucket_prefix + bucket
        try:
            self._call(f"{name}/{key}", lambda: self._client.stat_object(name, key))
        except NotFoundError:
            return False
        return True

    def delete(self, bucket: str, key: str) -> None:
        key, name = _checked(key), self.bucket_prefix + bucket
        with contextlib.suppress(NotFoundError):  # the bucket was never made: nothing to delete
            self._call(f"{name}/{key}", lambda: self._client.remove_object(name, key))

    def list(self, bucket: str, prefix: str = "") -> list[str]:
        return sorted(self.list_modified(bucket, prefix))

    def list_modified(self, bucket: str, prefix: str = "") -> dict[str, float]:
        name = self.bucket_prefix + bucket

        def keys() -> dict[str, float]:
            found = self._client.list_objects(name, prefix=prefix, recursive=True)
            return {
                o.object_name: o.last_modified.timestamp() if o.last_modified else 0.0
                for o in found
                if o.object_name is not None
            }

        try:
            return self._call(f"{name}/{prefix}*", keys)
        except NotFoundError:  # the bucket was never created
            return {}

    def uri(self, bucket: str, key: str) -> str:
        # The bucket as callers name it, without bucket_prefix: callers (images.py)
        # parse these URIs back into (bucket, key) for this same store.
        return f"s3://{bucket}/{_checked(key)}"

    def _ensure_bucket(self, bucket: str) -> str:
        name = self.bucket_prefix + bucket
        if name in self._buckets:
            return name
        with self._lock:
            if name not in self._buckets:  # another thread may have made it meanwhile
                self._call(name, lambda: self._make_bucket(name))
                self._buckets.add(name)
        return name

    def _make_bucket(self, name: str) -> None:
        try:
            self._client.make_bucket(name)
        except S3Error as e:
            if e.code not in _ALREADY_THERE:  # another process made it first: fine
                raise

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one SDK call, translating its errors into this package's."""
        try:
            return fn()
        except S3Error as e:
            if e.code in _MISSING:
                raise NotFoundError(f"no object {what}") from e
            if e.code in _BUSY:  # the server asks to be tried again
                raise StoreUnavailable(
                    f"object store at {self.endpoint}: {e.code} on {what}"
                ) from e
            raise StackError(
                f"object store at {self.endpoint}: {e.code} on {what}: {e.message}"
            ) from e
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as e:
            raise StoreUnavailable(
                f"cannot reach the object store at {self.endpoint}: {type(e).__name__}"
            ) from e


def _checked(key: str) -> str:
    """The key itself, if it is a plain relative path; InputError otherwise.

    Refused: empty keys, absolute keys, and ``.``, ``..`` or empty segments,
    which a local folder would resolve to another (or no) object.
    """
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise InputError(f"object key {key!r} is not a plain path inside its bucket")
    return key
