"""Finding (or starting) the replica that serves a task version.

Handles are cached per dispatcher, so a job costs no Ray name lookup. The
controller of a later layer owns scaling; this pool only knows replica #0.
"""

from __future__ import annotations

import asyncio
from typing import Any

import ray

from orchestrator import keys
from orchestrator.errors import NotFoundError
from orchestrator.models import TaskRecord
from orchestrator.records import RecordStore
from orchestrator.runtime.replica import Replica
from orchestrator.settings import Settings
from orchestrator.taskspec import TaskSpec

ReplicaActor = ray.remote(Replica)


def actor_options(spec: TaskSpec) -> dict[str, Any]:
    """Ray actor options from a task's resources and replica settings."""
    r = spec.resources
    options: dict[str, Any] = {"max_concurrency": spec.replicas.max_concurrency}
    if r.num_cpus is not None:
        options["num_cpus"] = r.num_cpus
    if r.num_gpus is not None:
        options["num_gpus"] = r.num_gpus
    if r.memory is not None:
        options["memory"] = r.memory
    if r.custom:
        options["resources"] = dict(r.custom)
    if spec.runtime_env:
        options["runtime_env"] = spec.runtime_env
    return options


class ReplicaPool:
    """Task records and replica handles, cached for the dispatcher's lifetime."""

    def __init__(self, settings: Settings, records: RecordStore):
        self.settings = settings
        self.records = records
        self._tasks: dict[tuple[str, str | None], TaskRecord] = {}
        self._handles: dict[tuple[str, str], Any] = {}

    async def task(self, task_id: str, version: str | None) -> TaskRecord:
        key = (task_id, version)
        record = self._tasks.get(key)
        if record is None:
            record = await asyncio.to_thread(self.records.get_task, task_id, version)
            if record is None:
                raise NotFoundError(f"unknown task {task_id!r} version {version}")
            self._tasks[key] = record
        return record

    def replica(self, record: TaskRecord) -> Any:
        key = (record.task_id, record.version)
        handle = self._handles.get(key)
        if handle is None:
            name = keys.replica_name(record.task_id, record.version, 0)
            spec = TaskSpec.model_validate(record.spec)
            handle = ReplicaActor.options(
                name=name,
                namespace=self.settings.ray.namespace,
                lifetime="detached",
                get_if_exists=True,
                **actor_options(spec),
            ).remote(self.settings, record, name)
            self._handles[key] = handle
        return handle

    def discard(self, record: TaskRecord, kill: bool = False) -> None:
        """Forget a replica (it died or hung); kill it first if asked."""
        handle = self._handles.pop((record.task_id, record.version), None)
        if handle is not None and kill:
            ray.kill(handle, no_restart=True)
