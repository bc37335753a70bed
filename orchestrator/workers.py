"""Operating the workers: status from the records, control through the controller.

`wtm worker ...` and notebooks call these. Status needs only the records
(:func:`worker_status`, also ``Client.workers()``); control (:class:`Workers`)
makes this process a Ray driver of the stack's cluster.
"""

from __future__ import annotations

import time
from typing import Any

from orchestrator import artifacts, cluster, keys, stack
from orchestrator.errors import NotFoundError
from orchestrator.models import ReplicaEvent, TaskRecord, WorkerRecord, WorkerState
from orchestrator.objects import open_objects
from orchestrator.records import RecordStore, open_records
from orchestrator.settings import Settings


def replica_events(r: Any, limit: int = 20, task_id: str | None = None) -> list[ReplicaEvent]:
    """The newest replica starts and stops first, each with why (from the controller)."""
    events = []
    for _, fields in r.xrevrange(keys.REPLICA_EVENTS, count=limit if task_id is None else None):
        raw = fields.get(b"event", fields.get("event"))
        event = ReplicaEvent.model_validate_json(raw)
        if task_id is None or event.task_id == task_id:
            events.append(event)
        if len(events) >= limit:
            break
    return events


def worker_status(
    records: RecordStore, settings: Settings, now: float | None = None
) -> list[WorkerRecord]:
    """Every replica's last heartbeat; silent ones are reported dead."""
    now = time.time() if now is None else now
    limit = settings.controller.dead_after_beats * settings.controller.heartbeat_s
    out = []
    for w in records.list_workers():
        silent = w.heartbeat_at is None or now - w.heartbeat_at > limit
        if w.state != WorkerState.DEAD and silent:
            w = w.model_copy(update={"state": WorkerState.DEAD})
        out.append(w)
    return out


class Workers:
    """Start, stop and scale replica sets and dispatchers on a running stack's cluster.

    Nothing is started here: the stack must be up (``stack.ensure`` starts it),
    and this process becomes a driver of its cluster (``cluster.connect``).
    """

    def __init__(self, settings: Settings):
        import ray

        self.settings = stack.resolve(settings)
        self.records = open_records(self.settings)
        self.tasks = artifacts.tasks(self.records, open_objects(self.settings))
        cluster.connect(self.settings)
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
        tasks = [] if queues and not task_ids else self._wanted(task_ids)
        started = {}
        for record in tasks:
            started[record.task_id] = self._ray.get(
                self.controller.ensure.remote(record.task_id, record.version, replicas)
            )
        dispatcher = None
        if queues or concurrency:
            dispatcher = self._dispatcher(queues or [], concurrency)
        return {"replicas": started, "dispatcher": dispatcher}

    def warm(
        self, slots: dict[tuple[str, str], int], timeout_s: float | None = None
    ) -> dict[str, Any]:
        """Start replicas ahead of a burst: ``slots`` per (task, version) (see
        :meth:`~orchestrator.plan.Plan.slots`); returns when they are loaded, or
        as many as the cluster holds, with why any set has fewer."""
        wanted = [(task_id, version, n) for (task_id, version), n in slots.items()]
        timeout = self.settings.controller.load_timeout_s if timeout_s is None else timeout_s
        return self._ray.get(self.controller.warm.remote(wanted, timeout))

    def scale(self, task_id: str, count: int, version: str | None = None) -> int:
        record = self.tasks.resolve(task_id, version)
        return self._ray.get(self.controller.scale.remote(record.task_id, record.version, count))

    def stop(self, task_id: str | None = None) -> list[str]:
        if task_id is not None:
            self.tasks.resolve(task_id)
        return self._ray.get(self.controller.stop.remote(task_id))

    def stop_dispatchers(self) -> list[str]:
        """Stop the dispatchers `start --queues` added (the stack's own stay)."""
        ns = self.settings.ray.namespace
        names = [
            a["name"]
            for a in self._ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == ns and keys.is_worker_dispatcher(a["name"])
        ]
        for name in names:
            self._ray.kill(self._ray.get_actor(name, namespace=ns))
        return sorted(names)

    def sets(self) -> list[dict[str, Any]]:
        return self._ray.get(self.controller.status.remote())

    def _wanted(self, task_ids: list[str] | None) -> list[TaskRecord]:
        wanted = task_ids or self.settings.worker.active_tasks
        if wanted:
            return [self.tasks.resolve(t) for t in wanted]
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
        name = keys.worker_dispatcher_name(self.settings.worker.worker_id)
        return dispatcher.deploy_one(settings, name)
