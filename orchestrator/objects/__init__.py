"""The object store contract and how settings choose an implementation.

Objects are addressed by (bucket, key). A ``put`` is atomic: readers see the
old object or the whole new one, never a partial write.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from orchestrator.settings import Settings


class ObjectStore(Protocol):
    """Code and data: package archives, pipeline files, large inputs and results."""

    def put(self, bucket: str, key: str, data: bytes) -> None:
        """Store data under key, replacing any object there, atomically."""

    def get(self, bucket: str, key: str) -> bytes:
        """The object's bytes; NotFoundError if there is none."""

    def exists(self, bucket: str, key: str) -> bool:
        """Whether an object is stored under key."""

    def delete(self, bucket: str, key: str) -> None:
        """Remove the object; no error if it is already gone."""

    def list(self, bucket: str, prefix: str = "") -> list[str]:
        """Keys under prefix, sorted."""

    def list_modified(self, bucket: str, prefix: str = "") -> dict[str, float]:
        """Keys under prefix, each with when it was last written (epoch seconds)."""

    def uri(self, bucket: str, key: str) -> str:
        """A URI naming the object, e.g. ``s3://bucket/key`` or ``file:///...``."""


def open_objects(settings: Settings) -> ObjectStore:
    """MinIO (any S3 endpoint) when an endpoint is set, else a local folder."""
    if settings.objects.endpoint:
        from orchestrator.objects.minio import MinioObjectStore

        return MinioObjectStore.from_settings(settings.objects)
    from orchestrator.objects.local import LocalObjectStore

    return LocalObjectStore(settings.objects_dir)
