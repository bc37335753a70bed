"""Object store in a local folder: ``<root>/<bucket>/<key>``, atomic writes."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from orchestrator.errors import ConflictError, InputError, NotFoundError


class LocalObjectStore:
    """The embedded object store; safe for concurrent writers via rename."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _path(self, bucket: str, key: str) -> Path:
        path = (self.root / bucket / key).resolve()
        if not path.is_relative_to((self.root / bucket).resolve()) or not key:
            raise InputError(f"object key {key!r} escapes bucket {bucket!r}")
        return path

    def put(self, bucket: str, key: str, data: bytes) -> None:
        path = self._path(bucket, key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as e:
            raise ConflictError(f"object key {key!r} nests under an existing object") from e
        if path.is_dir():
            raise ConflictError(f"object key {key!r} is a prefix of other objects")
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, bucket: str, key: str) -> bytes:
        try:
            return self._path(bucket, key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            raise NotFoundError(f"no object {bucket}/{key}") from e

    def exists(self, bucket: str, key: str) -> bool:
        return self._path(bucket, key).is_file()

    def delete(self, bucket: str, key: str) -> None:
        path = self._path(bucket, key)
        if path.is_file():
            path.unlink(missing_ok=True)

    def list(self, bucket: str, prefix: str = "") -> list[str]:
        return sorted(self.list_modified(bucket, prefix))

    def list_modified(self, bucket: str, prefix: str = "") -> dict[str, float]:
        base = self.root / bucket
        if not base.is_dir():
            return {}
        found = {}
        for path in base.rglob("*"):
            key = path.relative_to(base).as_posix()
            if not key.startswith(prefix) or path.name.startswith(".tmp-"):
                continue
            with contextlib.suppress(FileNotFoundError):  # deleted while listing
                if path.is_file():
                    found[key] = path.stat().st_mtime
        return found

    def uri(self, bucket: str, key: str) -> str:
        return self._path(bucket, key).as_uri()
