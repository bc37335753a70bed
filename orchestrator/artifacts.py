"""One registry of versioned, content-addressed artifacts: task packages and pipelines.

Registering stores the content in the object store under a key that holds
its sha256, then records the version: the object first and the record last,
so a record never names a missing object. The same content again changes
nothing; other content under a registered version is refused unless forced.
Versions are kept side by side; the latest registered is the default.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from orchestrator import keys
from orchestrator.errors import ConflictError, NotFoundError
from orchestrator.models import PipelineRecord, TaskRecord
from orchestrator.objects import ObjectStore
from orchestrator.records import RecordStore
from orchestrator.suggest import did_you_mean

R = TypeVar("R", TaskRecord, PipelineRecord)


@dataclass(frozen=True)
class Kind:
    """What differs between kinds of artifact: names, bucket and object key."""

    noun: str
    bucket: str
    object_key: Callable[[str, str, str], str]  # (id, version, sha256) -> key
    bump: str  # how a user gives other content a new version


TASK = Kind("task", keys.TASKS_BUCKET, keys.package_key, "bump the version")
PIPELINE = Kind("pipeline", keys.PIPELINES_BUCKET, keys.pipeline_key, "bump metadata.version")


@dataclass(frozen=True)
class Candidate(Generic[R]):
    """An artifact checked and ready to register: its content and how to record it."""

    artifact_id: str
    version: str
    data: bytes
    build: Callable[[str, str], R]  # (sha256, object_key) -> record


class Registry(Generic[R]):
    """Register, resolve and delete the versions of one kind of artifact."""

    def __init__(
        self,
        kind: Kind,
        objects: ObjectStore,
        get: Callable[[str, str | None], R | None],
        put: Callable[[R], None],
        remove: Callable[[str, str | None], int],
        every: Callable[[], list[R]],
        ident: Callable[[R], str],
    ):
        self.kind = kind
        self.objects = objects
        self._get, self._put, self._remove, self._every = get, put, remove, every
        self._ident = ident

    def register(self, candidate: Candidate[R], force: bool = False) -> tuple[R, bool]:
        """Store the content and record it; returns (record, whether anything changed)."""
        existing = self._check(candidate, force)
        if existing is not None:
            return existing, False
        sha = hashlib.sha256(candidate.data).hexdigest()
        key = self.kind.object_key(candidate.artifact_id, candidate.version, sha)
        self.objects.put(self.kind.bucket, key, candidate.data)
        record = candidate.build(sha, key)
        self._put(record)
        return record, True

    def register_all(
        self, candidates: list[Candidate[R]], force: bool = False
    ) -> list[tuple[R, bool]]:
        """Register several, all or none: every conflict is found before anything is stored."""
        for candidate in candidates:
            self._check(candidate, force)
        return [self.register(c, force) for c in candidates]

    def _check(self, candidate: Candidate[R], force: bool) -> R | None:
        """The record already holding this content, if any; ConflictError for other content."""
        existing = self._get(candidate.artifact_id, candidate.version)
        if existing is None:
            return None
        if existing.sha256 == hashlib.sha256(candidate.data).hexdigest():
            return existing
        if not force:
            raise ConflictError(
                f"{self.kind.noun} {candidate.artifact_id} version {candidate.version} is "
                f"registered with other content; {self.kind.bump} or use --force"
            )
        return None

    def resolve(self, artifact_id: str, version: str | None = None) -> R:
        """One version, or the latest registered one; NotFoundError naming it."""
        record = self._get(artifact_id, version)
        if record is None:
            pinned = f" version {version}" if version else ""
            hint = "" if version else did_you_mean(artifact_id, map(self._ident, self._every()))
            raise NotFoundError(
                f"unknown {self.kind.noun} {artifact_id!r}{pinned}{hint}; "
                f"see `wtm {self.kind.noun} list`"
            )
        return record

    def versions(self, artifact_id: str) -> list[R]:
        """Every registered version, oldest first."""
        return [r for r in self._every() if self._ident(r) == artifact_id]

    def delete(self, artifact_id: str, version: str | None = None) -> list[R]:
        """Remove versions (one, or all) from the records, then their objects."""
        doomed = [self.resolve(artifact_id, version)] if version else self.versions(artifact_id)
        if not doomed:
            self.resolve(artifact_id)  # raises: nothing of that name
        for record in doomed:
            self._remove(artifact_id, record.version)
            self.objects.delete(self.kind.bucket, record.object_key)
        return doomed


def tasks(records: RecordStore, objects: ObjectStore) -> Registry[TaskRecord]:
    return Registry(
        TASK,
        objects,
        records.get_task,
        records.put_task,
        records.delete_task,
        records.list_tasks,
        lambda r: r.task_id,
    )


def pipelines(records: RecordStore, objects: ObjectStore) -> Registry[PipelineRecord]:
    return Registry(
        PIPELINE,
        objects,
        records.get_pipeline,
        records.put_pipeline,
        records.delete_pipeline,
        records.list_pipelines,
        lambda r: r.pipeline_id,
    )
