"""The client: what the CLI and notebooks call. Needs Redis and the records, not Ray.

from orchestrator import Client
client = Client()                       # embedded stack, started if needed
record = client.run("face_detection", {"image_path": "astronaut.jpg"})
record.result["face_count"]
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import redis

from orchestrator import keys, packages, stack
from orchestrator.errors import ConflictError, ExecutionFailed, InputError, NotFoundError
from orchestrator.inputs import resolve_paths, shape_input, upload_files
from orchestrator.models import (
    ErrorInfo,
    ExecutionRecord,
    ExecutionStatus,
    Job,
    PipelineRecord,
    StepStatus,
    TaskRecord,
    new_execution_id,
)
from orchestrator.objects import ObjectStore, open_objects
from orchestrator.pipelines import registry as pipeline_registry
from orchestrator.pipelines.graph import (
    Plan,
    check_input,
    compile_plan,
    pending_steps,
    task_plan,
)
from orchestrator.pipelines.spec import load_file
from orchestrator.records import RecordStore, open_records
from orchestrator.runner import TaskRunner, validate_input
from orchestrator.settings import Settings, load_settings
from orchestrator.taskspec import TaskSpec

#: Seconds between records checks while waiting, in case an event was missed.
FALLBACK_POLL_S = 2.0
#: How long a cancel request is remembered for a running execution.
CANCEL_FLAG_TTL_S = 7 * 24 * 3600


class Client:
    """Registers tasks, submits executions, waits for them, reads history."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        start: bool = True,
        notify: stack.Notify | None = None,
    ):
        self.settings = settings or load_settings()
        self.records: RecordStore = open_records(self.settings)
        self.objects: ObjectStore = open_objects(self.settings)
        self._start = start
        self._notify = notify
        self._redis: redis.Redis | None = None

    # registry ----------------------------------------------------------------
    def register_task(self, folder: str | Path, force: bool = False) -> tuple[TaskRecord, bool]:
        """Store a task package; returns (record, whether anything changed)."""
        return packages.register(Path(folder), self.records, self.objects, force=force)

    def tasks(self) -> list[TaskRecord]:
        return self.records.list_tasks()

    def task(self, task_id: str, version: str | None = None) -> TaskRecord:
        return packages.resolve(self.records, task_id, version)

    def delete_task(
        self, task_id: str, version: str | None = None, force: bool = False
    ) -> list[TaskRecord]:
        """Delete a task (or one version): its records first, then its archives.

        Refused while a registered pipeline uses the task, unless ``force``.
        """
        users = sorted(
            {
                p.pipeline_id
                for p in self.records.list_pipelines()
                for step in p.spec.get("steps", [])
                if step.get("task_id") == task_id and version in (None, step.get("version"))
            }
        )
        if users and not force:
            raise ConflictError(
                f"task {task_id!r} is used by pipeline {', '.join(users)}; use --force to delete"
            )
        return packages.delete(self.records, self.objects, task_id, version)

    def register_pipelines(
        self, path: str | Path, force: bool = False
    ) -> list[tuple[PipelineRecord, bool]]:
        """Register every pipeline in a file (either seed format)."""
        return [
            pipeline_registry.register(spec, self.records, self.objects, force)
            for spec in load_file(Path(path))
        ]

    def pipelines(self) -> list[PipelineRecord]:
        return self.records.list_pipelines()

    def pipeline(self, pipeline_id: str, version: str | None = None) -> PipelineRecord:
        return pipeline_registry.resolve(self.records, pipeline_id, version)

    def delete_pipeline(self, pipeline_id: str, version: str | None = None) -> list[PipelineRecord]:
        return pipeline_registry.delete(self.records, self.objects, pipeline_id, version)

    def validate_pipelines(self, path: str | Path) -> list[Plan]:
        """Check a pipeline file against the registry without registering it."""
        return pipeline_registry.validate_file(Path(path), self.records)

    def test_task(
        self, task_id: str, input_data: Any, version: str | None = None, cwd: Path | None = None
    ) -> dict[str, Any]:
        """Run a registered task in this process, without the cluster."""
        record = self.task(task_id, version)
        document = self._prepare_input(record, input_data, cwd, upload=False)
        runner = TaskRunner.load(record, self.objects, self.settings.home / "cache" / "packages")
        try:
            return runner(document)
        finally:
            runner.task.shutdown()

    # executions --------------------------------------------------------------
    def submit(
        self,
        target: str,
        input_data: Any,
        *,
        priority: int | None = None,
        version: str | None = None,
        cwd: Path | None = None,
    ) -> str:
        """Validate, record as queued, enqueue; returns the execution id.

        ``target`` is a task id or, failing that, a pipeline id.
        """
        execution, plan = self._new(target, input_data, priority, version, cwd)
        self._enqueue(execution, plan)
        return execution.execution_id

    def run(
        self,
        target: str,
        input_data: Any,
        *,
        priority: int | None = None,
        version: str | None = None,
        cwd: Path | None = None,
        timeout: float | None = None,
        raise_on_failure: bool = False,
    ) -> ExecutionRecord:
        """Submit and wait for the terminal record."""
        execution, plan = self._new(target, input_data, priority, version, cwd)
        with self._subscribe(execution.execution_id) as events:
            self._enqueue(execution, plan)
            result = self._wait(execution.execution_id, events, timeout)
        if raise_on_failure and result.status != ExecutionStatus.SUCCEEDED:
            raise ExecutionFailed(result)
        return result

    def wait(self, execution_id: str, timeout: float | None = None) -> ExecutionRecord:
        """Block until the execution is terminal (or timeout: the current record)."""
        with self._subscribe(execution_id) as events:
            return self._wait(execution_id, events, timeout)

    def execution(self, execution_id: str) -> ExecutionRecord:
        record = self.records.get_execution(execution_id)
        if record is None:
            raise NotFoundError(f"unknown execution {execution_id!r}")
        return record

    def cancel(self, execution_id: str) -> ExecutionRecord:
        """Cancel a queued execution, or a running one before its next step starts.

        A step already running finishes (Ray cannot interrupt it); the steps
        after it are recorded ``cancelled``.
        """
        record = self.execution(execution_id)
        if record.status.terminal:
            raise ConflictError(f"execution {execution_id} is already {record.status.value}")
        self.redis.set(keys.cancel_flag(execution_id), 1, ex=CANCEL_FLAG_TTL_S)
        if record.status == ExecutionStatus.QUEUED:
            now = time.time()
            for step in record.steps:
                step.status = StepStatus.CANCELLED
            record = record.model_copy(
                update={
                    "status": ExecutionStatus.CANCELLED,
                    "finished_at": now,
                    "error": ErrorInfo(type="Cancelled", message="cancelled by a user"),
                }
            )
            self.records.save_execution(record)
            self.redis.publish(
                keys.events(execution_id),
                json.dumps({"execution_id": execution_id, "status": "cancelled"}),
            )
        return record

    def retry(self, execution_id: str, wait: bool = False) -> str | ExecutionRecord:
        """Submit a finished execution again with the same input, version and priority."""
        old = self.execution(execution_id)
        if not old.status.terminal:
            raise ConflictError(f"execution {execution_id} is still {old.status.value}")
        if wait:
            return self.run(old.target, old.input, priority=old.priority, version=old.version)
        return self.submit(old.target, old.input, priority=old.priority, version=old.version)

    def executions(
        self, status: str | None = None, limit: int = 50, target: str | None = None
    ) -> list[ExecutionRecord]:
        try:
            wanted = ExecutionStatus(status) if status else None
        except ValueError as e:
            choices = ", ".join(s.value for s in ExecutionStatus)
            raise InputError(f"unknown status {status!r}; one of {choices}") from e
        return self.records.list_executions(wanted, limit, target)

    # steps -------------------------------------------------------------------
    def _prepare_input(
        self, record: TaskRecord, input_data: Any, cwd: Path | None, upload: bool = True
    ) -> Any:
        """Shape, resolve and validate an input; files go to the object store."""
        spec = TaskSpec.model_validate(record.spec)
        document = shape_input(input_data, spec.input_schema)
        document = resolve_paths(document, cwd or Path.cwd())
        validate_input(spec.input_schema, document, f"{spec.task_id} input")
        return upload_files(document, self.objects) if upload else document

    def _new_execution(
        self, record: TaskRecord, input_data: Any, priority: int | None, cwd: Path | None
    ) -> ExecutionRecord:
        spec = TaskSpec.model_validate(record.spec)
        document = self._prepare_input(record, input_data, cwd)
        # The seed's worker.task_configs may move a task to another queue or priority.
        override = self.settings.worker.task_configs.get(record.task_id, {})
        return ExecutionRecord(
            execution_id=new_execution_id(),
            kind="task",
            task_id=record.task_id,
            version=record.version,
            priority=priority or override.get("priority") or spec.priority,
            queue=override.get("queue") or spec.queue,
            input=document,
            submitted_at=time.time(),
        )

    def _new(
        self,
        target: str,
        input_data: Any,
        priority: int | None,
        version: str | None,
        cwd: Path | None,
    ) -> tuple[ExecutionRecord, Plan | None]:
        if priority is not None and not 1 <= priority <= 10:
            raise InputError(f"priority {priority}: must be from 1 (low) to 10 (high)")
        task = self.records.get_task(target, version)
        if task is not None:
            return self._new_execution(task, input_data, priority, cwd), task_plan(task)
        if self.records.get_pipeline(target, version) is not None:
            return self._new_pipeline_execution(target, input_data, priority, version, cwd)
        pinned = f" version {version}" if version else ""
        raise NotFoundError(f"unknown task or pipeline {target!r}{pinned}; see `wtm task list`")

    def _new_pipeline_execution(
        self,
        pipeline_id: str,
        input_data: Any,
        priority: int | None,
        version: str | None,
        cwd: Path | None,
    ) -> tuple[ExecutionRecord, Plan]:
        record = pipeline_registry.resolve(self.records, pipeline_id, version)
        spec = pipeline_registry.spec_of(record)
        plan = compile_plan(spec, self.records.get_task)  # the tasks may have changed since
        checks = spec.input_validation
        required = {"type": "object", "required": checks.required_fields} if checks else None
        document = shape_input(input_data, required)
        check_input(checks, document, f"{pipeline_id}")
        document = resolve_paths(document, cwd or Path.cwd())
        execution = ExecutionRecord(
            execution_id=new_execution_id(),
            kind="pipeline",
            pipeline_id=pipeline_id,
            version=record.version,
            priority=priority or int(spec.metadata.get("priority", 5)),
            queue=str(spec.metadata.get("queue", "pipelines")),
            input=upload_files(document, self.objects),
            submitted_at=time.time(),
            steps=pending_steps(plan),
        )
        return execution, plan

    def _enqueue(self, execution: ExecutionRecord, plan: Plan | None = None) -> None:
        """Record first, then the stream: a dispatcher always finds the record."""
        r = self.redis  # may start the embedded stack: that is not queue time
        execution.submitted_at = time.time()
        self.records.insert_execution(execution)
        job = Job(
            execution_id=execution.execution_id,
            kind=execution.kind,
            target=execution.target,
            version=execution.version,
            queue=execution.queue,
            priority=execution.priority,
            submitted_at=execution.submitted_at,
            input=execution.input,
            plan=plan.model_dump(mode="json") if plan else None,
        )
        try:
            pipe = r.pipeline(transaction=True)
            pipe.sadd(keys.QUEUES_SET, execution.queue)
            pipe.xadd(keys.stream(execution.queue, keys.lane_for(execution.priority)), job.encode())
            pipe.execute()
        except redis.RedisError as e:
            execution.status = ExecutionStatus.FAILED
            execution.error = ErrorInfo(type="EnqueueError", message=str(e))
            self.records.save_execution(execution)
            raise stack.StackError(f"could not enqueue on Redis: {e}") from e

    def _subscribe(self, execution_id: str):
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(keys.events(execution_id))
        return _Closing(pubsub)

    def _wait(self, execution_id: str, events, timeout: float | None) -> ExecutionRecord:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            record = self.execution(execution_id)
            if record.status.terminal:
                return record
            wait = FALLBACK_POLL_S
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    return record
            message = events.get_message(timeout=wait)
            while message is not None and not _terminal(message):
                message = events.get_message(timeout=0)

    # connections -------------------------------------------------------------
    @property
    def redis(self) -> redis.Redis:
        if self._redis is None:
            if self._start:
                self.settings = stack.ensure(self.settings, self._notify)
            else:
                self.settings = stack.resolve(self.settings)
            self._redis = redis.Redis.from_url(self.settings.redis.url)
        return self._redis

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
        self.records.close()


def _terminal(message: dict) -> bool:
    try:
        return ExecutionStatus(json.loads(message["data"])["status"]).terminal
    except (KeyError, ValueError, TypeError):
        return False


class _Closing:
    def __init__(self, pubsub):
        self.pubsub = pubsub

    def __enter__(self):
        return self.pubsub

    def __exit__(self, *exc):
        self.pubsub.close()
