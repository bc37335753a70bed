"""Operating the workers: status from the records, control through the controller.

`wtm worker ...` and notebooks call these; unlike :class:`Client`, control
needs a Ray connection (status does not).
"""

from __future__ import annotations

import time
from typing import Any

from orchestrator import keys, packages, stack
from orchestrator.errors import NotFoundError
from orchestrator.models import TaskRecord, WorkerRecord
from orchestrator.records import RecordStore, open_records
from orchestrator.settings import Settings

#: A replica whose heartbeat is older than this many intervals is shown dead.
STALE_INTERVALS = 3


def worker_status(
    records: RecordStore, settings: Settings, now: float | None = None
) -> list[WorkerRecord]:
    """Every replica's last heartbeat; silent ones are reported ``dead``."""
    now = time.time() if now is None else now
    limit = STALE_INTERVALS * settings.controller.heartbeat_s
    out = []
    for w in records.list_workers():
        if w.state != "dead" and (w.heartbeat_at is None or now - w.heartbeat_at > limit):
            w = w.model_copy(update={"state": "dead"})
        out.append(w)
    return out


class Workers:
    """Start, stop and scale replica sets and dispatchers on the cluster."""

    def __init__(self, settings: Settings):
        self.settings = stack.ensure(settings)
        self.records = open_records(self.settings)
        stack.connect_ray(self.settings)
        import ray

        self._ray = ray
        self.controller = ray.get_actor(keys.CONTROLLER, namespace=self.settings.ray.namespace)

    def start(
        self,
        task_ids: list[str] | None = None,
        replicas: int = 1,
        queues: list[str] | None = None,
        concurrency: int | None = None,
    ) -> dict[str, Any]:
        """Bring up replicas for tasks (and a dispatcher for queues); waits until ready."""
        # --queues alone adds a dispatcher; replicas still start on demand.
        tasks = [] if queues and not task_ids else self._tasks(task_ids)
        started = {}
        for record in tasks:
            started[record.task_id] = self._ray.get(
                self.controller.ensure.remote(record.task_id, record.version, replicas)
            )
        dispatcher = None
        if queues or concurrency:
            dispatcher = self._dispatcher(queues or [], concurrency)
        return {"replicas": started, "dispatcher": dispatcher}

    def scale(self, task_id: str, count: int, version: str | None = None) -> int:
        record = packages.resolve(self.records, task_id, version)
        return self._ray.get(self.controller.scale.remote(record.task_id, record.version, count))

    def stop(self, task_id: str | None = None) -> list[str]:
        if task_id is not None:
            packages.resolve(self.records, task_id)
        return self._ray.get(self.controller.stop.remote(task_id))

    def stop_dispatchers(self) -> list[str]:
        """Stop the dispatchers `start --queues` added (the stack's own stay)."""
        ns = self.settings.ray.namespace
        prefix = f"{keys.PREFIX}:dispatcher:"
        names = [
            a["name"]
            for a in self._ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == ns and a["name"].startswith(prefix)
        ]
        for name in names:
            self._ray.kill(self._ray.get_actor(name, namespace=ns))
        return sorted(names)

    def sets(self) -> list[dict[str, Any]]:
        return self._ray.get(self.controller.status.remote())

    def _tasks(self, task_ids: list[str] | None) -> list[TaskRecord]:
        wanted = task_ids or self.settings.worker.active_tasks
        if wanted:
            return [packages.resolve(self.records, t) for t in wanted]
        latest: dict[str, TaskRecord] = {}
        for record in self.records.list_tasks():  # ordered by registration time
            latest[record.task_id] = record
        if not latest:
            raise NotFoundError("no tasks are registered; see `wtm task register`")
        return list(latest.values())

    def _dispatcher(self, queues: list[str], concurrency: int | None) -> str:
        from orchestrator import dispatcher

        settings = self.settings.model_copy(deep=True)
        settings.dispatcher.queues = queues
        settings.dispatcher.concurrency = concurrency or self.settings.worker.max_concurrent_tasks
        # The seed's worker_id names the dispatcher this worker runs.
        name = f"{keys.PREFIX}:dispatcher:{self.settings.worker.worker_id}"
        return dispatcher.deploy_one(settings, name)
