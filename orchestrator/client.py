"""The client: what the CLI and notebooks call. Needs Redis and the records, not Ray.

from orchestrator import Client
client = Client()                       # nothing is started yet
job = client.submit("face_detection", {"image_path": "astronaut.jpg"})  # starts the stack if needed
job.result()["face_count"]
jobs = client.map("face_processing_pipeline", [{"image_path": p} for p in photos])
results = client.gather(jobs)           # in input order, with a progress bar in a notebook
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from orchestrator import artifacts, keys, lifecycle, packages
from orchestrator.errors import (
    ConflictError,
    Detached,
    EnqueueError,
    ExecutionFailed,
    InputError,
    NotFoundError,
    StackError,
    StoreUnavailable,
    WaitTimeout,
)
from orchestrator.inputs import (
    load_document,
    offload_document,
    resolve_paths,
    shape_input,
    upload_files,
)
from orchestrator.lifecycle import Event
from orchestrator.models import (
    DeadLetter,
    ExecutionRecord,
    ExecutionStatus,
    PipelineRecord,
    ReplicaEvent,
    TaskRecord,
    WorkerRecord,
    new_execution_id,
)
from orchestrator.objects import ObjectStore, open_objects
from orchestrator.plan import Plan, task_plan, task_queue
from orchestrator.records import RecordStore, open_records
from orchestrator.settings import Settings, load_settings
from orchestrator.suggest import did_you_mean

# Redis, Ray and what waits on them are imported where first used: a command
# that only reads the registry (`wtm task list`) loads none of them.
if TYPE_CHECKING:
    import redis

    from orchestrator import stack
    from orchestrator.intake import Job as QueuedJob
    from orchestrator.jobs import Executions, Job
    from orchestrator.retention import Pruned

Kind = Literal["task", "pipeline"]

MAX_KEY = 200  # characters in an idempotency key
_ENTRY_ID = re.compile(r"\d+-\d+")  # a Redis stream entry id
KEY_ATTEMPTS = 5  # tries to take a key whose holder keeps taking its submit back

# Delete a key only if it still names this execution (another may hold it now).
_DELETE_IF_MINE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _check_key(key: str) -> None:
    if not key or len(key) > MAX_KEY or not key.isprintable() or " " in key:
        raise InputError(
            f"idempotency key {key[:40]!r}: use 1 to {MAX_KEY} printable characters, no spaces"
        )


class Client:
    """Registers tasks, submits executions, waits for them, reads history.

    Registering and reading need only the records and the object store.
    Submitting, waiting and cancelling need the stack's Redis: the first of
    them calls :meth:`connect`, which starts the embedded stack if it is down
    (``start=False`` makes that an error instead).
    """

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
        self._tasks = artifacts.tasks(self.records, self.objects)
        self._pipelines = artifacts.pipelines(self.records, self.objects)
        self._start = start
        self._notify = notify
        self._redis: redis.Redis | None = None
        self._pubsubs = _PubSubs()

    # connection --------------------------------------------------------------
    def connect(self) -> Client:
        """Reach the stack's Redis (starting the embedded stack if allowed); idempotent."""
        from orchestrator import stack
        from orchestrator.resilience import redis_client

        if self._redis is None:
            if self._start:
                self.settings = stack.ensure(self.settings, self._notify)
            else:
                self.settings = stack.resolve(self.settings)
            self._redis = redis_client(self.settings.redis.url)
        return self

    def close(self) -> None:
        self._pubsubs.close()
        if self._redis is not None:
            self._redis.close()
        self.records.close()

    def _queue(self) -> redis.Redis:
        self.connect()
        assert self._redis is not None
        return self._redis

    # tasks -------------------------------------------------------------------
    def register_task(self, folder: str | Path, force: bool = False) -> tuple[TaskRecord, bool]:
        """Store a task package; returns (record, whether anything changed)."""
        return packages.register(Path(folder), self._tasks, force=force)

    def register_tasks(
        self, folders: list[str | Path], force: bool = False
    ) -> list[tuple[TaskRecord, bool]]:
        """Register several task folders, all or none: each is checked before any is stored."""
        candidates = [packages.candidate(Path(f)) for f in folders]
        return self._tasks.register_all(candidates, force)

    def register_tasks_in(
        self, root: str | Path, force: bool = False
    ) -> list[tuple[TaskRecord, bool]]:
        """Register every task package folder directly under ``root``."""
        return self.register_tasks(packages.discover(Path(root)), force)

    def tasks(self) -> list[TaskRecord]:
        return self.records.list_tasks()

    def task(self, task_id: str, version: str | None = None) -> TaskRecord:
        return self._tasks.resolve(task_id, version)

    def task_versions(self, task_id: str) -> list[TaskRecord]:
        return self._tasks.versions(task_id)

    def delete_task(
        self, task_id: str, version: str | None = None, force: bool = False
    ) -> list[TaskRecord]:
        """Delete a task (or one version): its records first, then its archives.

        Refused while a registered pipeline uses what would go, unless ``force``: a
        step pinned to the version, or an unpinned step when the latest version goes.
        """
        latest = self._tasks.resolve(task_id).version

        def uses(step) -> bool:
            if step.task_id != task_id:
                return False
            return (
                version is None
                or step.version == version
                or (step.version is None and version == latest)
            )

        users = sorted(
            {p.pipeline_id for p in self.records.list_pipelines() for s in p.spec.steps if uses(s)}
        )
        if users and not force:
            raise ConflictError(
                f"task {task_id!r} is used by pipeline {', '.join(users)}; use --force to delete"
            )
        return self._tasks.delete(task_id, version)

    def test_task(
        self, task_id: str, input_data: Any, version: str | None = None, cwd: Path | None = None
    ) -> dict[str, Any]:
        """Run a registered task in this process, without the cluster."""
        from orchestrator.runner import TaskRunner

        record = self.task(task_id, version)
        document = self._task_input(record, input_data, cwd, upload=False)
        runner = TaskRunner.load(record, self.objects, self.settings.package_cache)
        try:
            return runner(document)
        finally:
            runner.task.shutdown()

    # pipelines -----------------------------------------------------------------
    def register_pipelines(
        self, path: str | Path, force: bool = False
    ) -> list[tuple[PipelineRecord, bool]]:
        """Register every pipeline in a file (either seed format), all or none."""
        return self.register_pipeline_files([path], force)

    def register_pipeline_files(
        self, paths: list[str | Path], force: bool = False
    ) -> list[tuple[PipelineRecord, bool]]:
        """Register every pipeline in these files, all or none: each is validated first."""
        from orchestrator.pipelines import registry as pipeline_registry
        from orchestrator.pipelinespec import load_file

        candidates = [
            pipeline_registry.candidate(spec, self.records.get_task, self.settings)
            for path in paths
            for spec in load_file(Path(path))
        ]
        return self._pipelines.register_all(candidates, force)

    def register_pipelines_in(
        self, root: str | Path, force: bool = False
    ) -> list[tuple[PipelineRecord, bool]]:
        """Register every pipeline file directly under ``root``."""
        from orchestrator.pipelines import registry as pipeline_registry

        return self.register_pipeline_files(pipeline_registry.discover(Path(root)), force)

    def pipelines(self) -> list[PipelineRecord]:
        return self.records.list_pipelines()

    def pipeline(self, pipeline_id: str, version: str | None = None) -> PipelineRecord:
        return self._pipelines.resolve(pipeline_id, version)

    def delete_pipeline(self, pipeline_id: str, version: str | None = None) -> list[PipelineRecord]:
        return self._pipelines.delete(pipeline_id, version)

    def validate_pipelines(self, path: str | Path) -> list[Plan]:
        """Check a pipeline file against the registry without registering it."""
        from orchestrator.pipelines import registry as pipeline_registry

        return pipeline_registry.validate_file(Path(path), self.records.get_task, self.settings)

    def plan(self, target: str, version: str | None = None, kind: Kind | None = None) -> Plan:
        """The plan a task or pipeline would run now: tasks pinned, policies resolved."""
        from orchestrator.pipelines.graph import compile_plan

        found = self._target(target, version, kind)
        if isinstance(found, TaskRecord):
            return task_plan(found, self.settings)
        return compile_plan(found.spec, self.records.get_task, self.settings)

    def warm(
        self,
        target: str,
        *,
        version: str | None = None,
        kind: Kind | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Start the replicas a task or pipeline needs, ahead of a burst; returns when
        their models are loaded (`wtm warm`).

        A pipeline gets one replica per task, and as many as a parallel group
        runs of one task at once (within each task's ``max`` and what the
        cluster holds). They stay, like any replica, until idle for
        ``controller.idle_timeout_s``. Returns each set's ready replicas and,
        where it has fewer than wanted, why. This process becomes a Ray
        driver of the stack's cluster for the call.
        """
        from orchestrator.workers import Workers

        slots = self.plan(target, version, kind).slots()
        self.connect()
        return Workers(self.settings).warm(slots, timeout)

    # executions --------------------------------------------------------------
    def submit(
        self,
        target: str,
        input_data: Any,
        *,
        priority: int | None = None,
        version: str | None = None,
        cwd: Path | None = None,
        kind: Kind | None = None,
        idempotency_key: str | None = None,
        cache: bool = True,
    ) -> Job:
        """Validate, record as queued, enqueue; returns the execution's :class:`Job`.

        ``target`` is a task id or, failing that, a pipeline id (``kind`` says which
        to look for when a task and a pipeline share a name). With an
        ``idempotency_key`` seen within ``client.idempotency_s``, nothing new is
        submitted: the job submitted under it is returned. ``cache=False`` runs
        every step even where a pipeline caches its outputs.
        """
        found = self._target(target, version, kind)
        execution, plan = self._new(found, input_data, priority, cwd, cache)
        return self.job(self._enqueue(execution, plan, idempotency_key), target)

    def map(
        self,
        target: str,
        inputs: Iterable[Any],
        *,
        priority: int | None = None,
        version: str | None = None,
        cwd: Path | None = None,
        kind: Kind | None = None,
        cache: bool = True,
    ) -> list[Job]:
        """Submit one execution per input; returns their jobs in input order.

        Every input is validated before anything is submitted (one bad input
        submits none), and the jobs reach their stream in one Redis round trip.
        """
        from orchestrator.intake import Job as QueuedJob
        from orchestrator.intake import enqueue_many
        from orchestrator.jobs import Job

        found = self._target(target, version, kind)
        # Every input validated before any file is uploaded: a bad one leaves nothing.
        built = [self._new(found, doc, priority, cwd, cache, upload=False) for doc in inputs]
        if not built:
            return []
        r = self._queue()
        executions = [execution for execution, _ in built]
        for execution in executions:
            execution.input = upload_files(execution.input, self.objects)
            self._offload(execution)
            execution.submitted_at = time.time()
        self.records.insert_executions(executions)  # one transaction on SQLite
        try:
            enqueue_many(r, [QueuedJob.of(execution, plan) for execution, plan in built])
        except BaseException as e:
            self._take_back([execution.execution_id for execution in executions], e)
            raise
        return [Job(self, execution.execution_id, target) for execution, _ in built]

    def job(self, execution_id: str, target: str | None = None) -> Job:
        """A handle on an execution by id (after a notebook restart, say)."""
        from orchestrator.jobs import Job

        if target is None:  # reattaching: the execution must exist
            target = self.execution(execution_id).target
        return Job(self, execution_id, target)

    def as_completed(
        self,
        jobs: Iterable[Job],
        timeout: float | None = None,
        progress: bool | None = None,
    ) -> Iterator[Job]:
        """Yield each job once, as it ends (whatever its status).

        ``progress`` shows a bar (default: in a notebook only); ``timeout``
        bounds the whole wait (then :class:`~orchestrator.errors.WaitTimeout`).
        """
        from orchestrator.jobs import finished
        from orchestrator.progress import bar as progress_bar

        jobs = list(dict.fromkeys(jobs))  # each job once, however often it is given
        with progress_bar(len(jobs), "executions", progress) as bar:
            for job in finished(self, jobs, timeout):
                bar.advance(job.status)
                yield job

    def gather(
        self,
        jobs: Iterable[Job],
        timeout: float | None = None,
        return_exceptions: bool = False,
        progress: bool | None = None,
    ) -> list[Any]:
        """The jobs' results, in the order given.

        The first job found failed raises its
        :class:`~orchestrator.errors.ExecutionFailed`, unless
        ``return_exceptions``: then it stands in that job's place.
        """
        jobs = list(jobs)
        for job in self.as_completed(jobs, timeout, progress):
            if job.status != ExecutionStatus.SUCCEEDED and not return_exceptions:
                raise ExecutionFailed(job.record)
        out: list[Any] = []
        for job in jobs:
            try:
                out.append(job.result())
            except ExecutionFailed as e:
                out.append(e)
        return out

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
        kind: Kind | None = None,
        idempotency_key: str | None = None,
        cache: bool = True,
    ) -> ExecutionRecord:
        """Submit and wait for the terminal record.

        After ``timeout`` seconds it raises :class:`~orchestrator.errors.WaitTimeout`
        (a ``TimeoutError`` carrying the record as it was). Interrupted (Ctrl-C),
        it raises :class:`~orchestrator.errors.Detached` with the execution id:
        the execution goes on either way.
        """
        found = self._target(target, version, kind)
        execution, plan = self._new(found, input_data, priority, cwd, cache)
        new = execution.execution_id
        with self._subscribe(new) as events:  # before the job can end: no event is missed
            execution_id = self._enqueue(execution, plan, idempotency_key)
            try:
                if execution_id == new:
                    result = self._wait(new, events, timeout, read_first=False)
            except KeyboardInterrupt as e:
                raise Detached(new) from e
        if execution_id != new:  # the key named an earlier submission: wait for that one
            result = self.wait(execution_id, timeout)
        if raise_on_failure and result.status != ExecutionStatus.SUCCEEDED:
            raise ExecutionFailed(result)
        return result

    def wait(self, execution: Job | str, timeout: float | None = None) -> ExecutionRecord:
        """Block until the execution is terminal; returns its record.

        After ``timeout`` seconds it raises :class:`~orchestrator.errors.WaitTimeout`
        (a ``TimeoutError`` carrying the record as it was). Interrupted (Ctrl-C),
        it raises :class:`~orchestrator.errors.Detached`.
        """
        execution_id = _id(execution)
        # Subscribed only if the first read finds it still going: waiting on many
        # finished executions costs a read each, not a connection each.
        with self._subscribe(execution_id, lazy=True) as events:
            try:
                return self._wait(execution_id, events, timeout)
            except KeyboardInterrupt as e:
                raise Detached(execution_id) from e

    def execution(self, execution: Job | str) -> ExecutionRecord:
        execution_id = _id(execution)
        record = self.records.get_execution(execution_id)
        if record is None:
            raise NotFoundError(f"unknown execution {execution_id!r}")
        return record

    def result(self, execution: Job | str) -> Any:
        """An execution's result as its steps returned it: read back from the object
        store if it was stored there, with its numpy arrays and bytes in place."""
        return self.result_of(self.execution(execution))

    def result_of(self, record: ExecutionRecord) -> Any:
        """:meth:`result` from a record already read."""
        from orchestrator.outputs import restore

        document = record.result
        if record.result_ref is not None:
            key = keys.result_key_of(record.result_ref)
            document = json.loads(self.objects.get(keys.DATA_BUCKET, key))
        return restore(document, self.objects)

    def cancel(self, execution: Job | str) -> ExecutionRecord:
        """Cancel a queued or running execution.

        A running step is stopped within about a second by killing its replica
        (a fresh one replaces it; other calls it was serving are retried), and
        it and the steps after it are recorded ``cancelled``.
        """
        record = self.execution(execution)
        execution_id = record.execution_id
        if record.status.terminal:
            raise ConflictError(
                f"execution {execution_id} has already ended ({record.status.value})"
            )
        r = self._queue()
        r.set(keys.cancel_flag(execution_id), 1, ex=int(self.settings.client.cancel_ttl_s))
        if record.status == ExecutionStatus.QUEUED:  # no dispatcher has it: end it here
            event = lifecycle.cancel(record, time.time())
            self.records.save_execution(record)
            r.publish(keys.events(execution_id), event.carrying(record).encode())
        return record

    def retry(self, execution: Job | str) -> Job:
        """Submit a finished execution again with the same input, version and priority."""
        old = self.execution(execution)
        if not old.status.terminal:
            raise ConflictError(f"execution {old.execution_id} is still {old.status.value}")
        document = load_document(old.input, old.input_ref, self.objects)
        options = {"priority": old.priority, "version": old.version, "kind": old.kind}
        return self.submit(old.target, document, **options)

    def executions(
        self, status: str | None = None, limit: int = 50, target: str | None = None
    ) -> Executions:
        """Newest first; a list that shows as a table in a notebook and has
        ``to_dict()`` and ``to_pandas()`` for analysis."""
        from orchestrator.jobs import Executions

        try:
            wanted = ExecutionStatus(status) if status else None
        except ValueError as e:
            choices = ", ".join(s.value for s in ExecutionStatus)
            raise InputError(f"unknown status {status!r}; one of {choices}") from e
        return Executions(self.records.list_executions(wanted, limit, target))

    def step_dependencies(self, record: ExecutionRecord) -> dict[str, tuple[str, ...]]:
        """Which steps each step of an execution waited for (empty if unknown now)."""
        if record.kind != "pipeline" or record.pipeline_id is None:
            return {}
        try:
            plan = self.plan(record.pipeline_id, record.version, kind="pipeline")
        except (NotFoundError, InputError):  # the pipeline or a task was deleted since
            return {}
        return {step.step_id: step.deps for step in plan.steps}

    # retention -------------------------------------------------------------------
    def prune(
        self,
        older_than: float | str | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> Pruned:
        """Forget finished executions submitted longer ago than ``older_than`` (seconds,
        or a duration such as ``"30d"``; default: the retention setting), with their
        results, kept step outputs, unused uploaded inputs and dead letters.

        Queued and running executions stay, whatever their age.
        """
        from orchestrator.retention import parse_duration, prune

        if older_than is None:
            days = self.settings.retention.older_than_days
            if not days:
                raise InputError("give older_than: retention.older_than_days is 0 (off)")
            older_than = days * 86400
        if isinstance(older_than, str):
            try:
                older_than = parse_duration(older_than)
            except ValueError as e:
                raise InputError(str(e)) from None
        if older_than < 0:
            raise InputError(f"older_than {older_than:g}s: must not be negative")
        before = time.time() - older_than
        return prune(self.records, self.objects, self._queue(), before, progress=progress)

    # dead letters ----------------------------------------------------------------
    def dead_letters(self) -> list[DeadLetter]:
        """Jobs moved to the dead-letter stream, oldest first, each with why."""
        out = []
        for entry_id, fields in self._queue().xrange(keys.DEAD_LETTERS):
            dlq_id = entry_id.decode()
            job = _job_or_none(fields)
            record = self.records.get_execution(job.execution_id) if job else None
            deliveries = fields.get(b"deliveries")
            out.append(
                DeadLetter(
                    dlq_id=dlq_id,
                    execution_id=job.execution_id if job else None,
                    target=job.target if job else None,
                    kind=job.kind if job else None,
                    queue=job.queue if job else None,
                    reason=fields.get(b"reason", b"").decode(),
                    error=record.error.message if record and record.error else None,
                    deliveries=int(deliveries) if deliveries else None,
                    dead_at=int(dlq_id.split("-")[0]) / 1000,
                )
            )
        return out

    def replay_dead_letters(self, dlq_ids: list[str] | None = None) -> list[str]:
        """Run dead-lettered jobs again, as new executions of the same plan and input.

        ``None`` replays every one that can be read. Each is taken out of the
        dead-letter stream before its new execution is enqueued (so two replays
        at once replay it once) and put back if that fails; returns the new ids.
        """
        r = self._queue()
        wanted = set(dlq_ids) if dlq_ids is not None else None
        entries = {e.decode(): f for e, f in r.xrange(keys.DEAD_LETTERS)}
        missing = sorted((wanted or set()) - set(entries))
        if missing:
            raise NotFoundError(f"no dead letter {missing[0]!r}; see `wtm dlq list`")
        jobs = {i: _job_or_none(f) for i, f in entries.items() if wanted is None or i in wanted}
        unreadable = sorted(i for i, job in jobs.items() if job is None)
        if unreadable and wanted is not None:  # asked for by id: say so before replaying any
            raise InputError(f"dead letter {unreadable[0]} cannot be read as a job; purge it")
        new_ids = []
        for dlq_id, job in jobs.items():
            if job is None:  # --all: an unreadable one stays, for `wtm dlq purge`
                continue
            if not r.xdel(keys.DEAD_LETTERS, dlq_id):  # another replay took it first
                continue
            # The same plan and input as a new execution (a new id, submitted now).
            fresh = {"execution_id": new_execution_id(), "submitted_at": time.time()}
            execution = job.queued().model_copy(update=fresh)
            try:
                new_ids.append(self._enqueue(execution, job.plan))
            except BaseException:
                r.xadd(keys.DEAD_LETTERS, entries[dlq_id])  # not replayed: back where it was
                raise
        return new_ids

    def purge_dead_letters(self, dlq_ids: list[str] | None = None) -> int:
        """Delete dead letters (all of them by default); returns how many went.

        Their execution records stay (``dead_lettered``) as history.
        """
        r = self._queue()
        bad = next((i for i in dlq_ids or [] if not _ENTRY_ID.fullmatch(i)), None)
        if bad is not None:
            raise InputError(f"{bad!r} is not a dead letter id (they read like 1764380000000-0)")
        ids = dlq_ids if dlq_ids is not None else [e for e, _ in r.xrange(keys.DEAD_LETTERS)]
        return r.xdel(keys.DEAD_LETTERS, *ids) if ids else 0

    def workers(self) -> list[WorkerRecord]:
        """Every replica's last heartbeat; silent ones are reported dead."""
        from orchestrator.workers import worker_status

        return worker_status(self.records, self.settings)

    def replica_events(self, limit: int = 20, task_id: str | None = None) -> list[ReplicaEvent]:
        """The newest replica starts and stops, each with why (``wtm worker events``)."""
        from orchestrator.workers import replica_events

        return replica_events(self._queue(), limit, task_id)

    # steps -------------------------------------------------------------------
    def _task_input(
        self, record: TaskRecord, input_data: Any, cwd: Path | None, upload: bool = True
    ) -> Any:
        """Shape, resolve and validate an input; files go to the object store."""
        from orchestrator.runner import validate_input

        schema = record.spec.input_schema
        document = resolve_paths(shape_input(input_data, schema), cwd or Path.cwd())
        validate_input(schema, document, f"{record.task_id} input")
        return upload_files(document, self.objects) if upload else document

    def _new(
        self,
        found: TaskRecord | PipelineRecord,
        input_data: Any,
        priority: int | None,
        cwd: Path | None,
        cache: bool = True,
        upload: bool = True,
    ) -> tuple[ExecutionRecord, Plan]:
        """A queued record and its plan, the input validated (its files uploaded,
        unless ``upload=False``: then the caller uploads them)."""
        if priority is not None and not 1 <= priority <= 10:
            raise InputError(f"priority {priority}: must be from 1 (low) to 10 (high)")
        if isinstance(found, TaskRecord):
            execution, plan = self._new_task_execution(found, input_data, priority, cwd, upload)
        else:
            execution, plan = self._new_pipeline_execution(found, input_data, priority, cwd, upload)
        if not cache and plan.caching:
            plan = plan.model_copy(update={"caching": False})
        return execution, plan

    def _target(
        self, target: str, version: str | None, kind: Kind | None
    ) -> TaskRecord | PipelineRecord:
        """What ``target`` names: a task, else a pipeline (or only the ``kind`` asked for)."""
        if kind == "pipeline":
            return self.pipeline(target, version)
        if kind == "task":
            return self.task(target, version)
        found = self.records.get_task(target, version) or self.records.get_pipeline(target, version)
        if found is None:
            pinned = f" version {version}" if version else ""
            names = [t.task_id for t in self.records.list_tasks()]
            names += [p.pipeline_id for p in self.records.list_pipelines()]
            hint = "" if version else did_you_mean(target, names)
            raise NotFoundError(
                f"unknown task or pipeline {target!r}{pinned}{hint}; "
                "see `wtm task list` and `wtm pipeline list`"
            )
        return found

    def _new_task_execution(
        self,
        record: TaskRecord,
        input_data: Any,
        priority: int | None,
        cwd: Path | None,
        upload: bool = True,
    ) -> tuple[ExecutionRecord, Plan]:
        plan = task_plan(record, self.settings)
        queue, priority = task_queue(record, self.settings, priority)
        execution = ExecutionRecord(
            execution_id=new_execution_id(),
            kind="task",
            task_id=record.task_id,
            version=record.version,
            priority=priority,
            queue=queue,
            input=self._task_input(record, input_data, cwd, upload),
            submitted_at=time.time(),
            steps=plan.pending_steps(),
        )
        return execution, plan

    def _new_pipeline_execution(
        self,
        record: PipelineRecord,
        input_data: Any,
        priority: int | None,
        cwd: Path | None,
        upload: bool = True,
    ) -> tuple[ExecutionRecord, Plan]:
        from orchestrator.pipelines.graph import check_input, check_step_inputs, compile_plan

        spec = record.spec
        plan = compile_plan(spec, self.records.get_task, self.settings)  # tasks may have changed
        checks = spec.input_validation
        required = {"type": "object", "required": checks.required_fields} if checks else None
        document = shape_input(input_data, required)
        check_input(checks, document, spec.pipeline_id)
        document = resolve_paths(document, cwd or Path.cwd())
        check_step_inputs(plan, document, self.records.get_task)
        execution = ExecutionRecord(
            execution_id=new_execution_id(),
            kind="pipeline",
            pipeline_id=spec.pipeline_id,
            version=record.version,
            priority=priority or spec.priority,
            queue=spec.queue,
            input=upload_files(document, self.objects) if upload else document,
            submitted_at=time.time(),
            steps=plan.pending_steps(),
        )
        return execution, plan

    def _enqueue(self, execution: ExecutionRecord, plan: Plan, key: str | None = None) -> str:
        """Record first, then the key, then the stream: a dispatcher always finds
        the record, and a key always names a recorded execution.

        If the key was taken, or the stream cannot be reached (or the submit is
        interrupted), the record is taken back: a job that was never enqueued
        leaves nothing behind (no record stuck ``queued``, no key held by one).
        Returns the execution id that stands for this submission: an earlier
        one's, if ``key`` was already used.
        """
        from orchestrator.intake import Job as QueuedJob
        from orchestrator.intake import enqueue

        if key is not None:
            _check_key(key)
        r = self._queue()  # may start the embedded stack: that is not queue time
        self._offload(execution)
        execution.submitted_at = time.time()
        self.records.insert_execution(execution)
        try:
            earlier = self._claim_key(r, key, execution.execution_id) if key else None
            if earlier is None:
                enqueue(r, QueuedJob.of(execution, plan))
        except BaseException as e:
            self._release_key(r, key, execution.execution_id)
            self._take_back([execution.execution_id], e)
            raise
        if earlier is not None:  # submitted before under this key: this one never was
            self.records.delete_execution(execution.execution_id)
            return earlier
        return execution.execution_id

    def _offload(self, execution: ExecutionRecord) -> None:
        """Move a large input to the object store, leaving a reference in the record."""
        if execution.input_ref is None:
            limits = self.settings.client
            execution.input, execution.input_ref = offload_document(
                execution.input, self.objects, limits.inline_input_bytes, limits.max_input_bytes
            )

    def _take_back(self, execution_ids: list[str], cause: BaseException) -> None:
        """Delete the records of jobs that never reached their stream; say what is left."""
        import redis

        for execution_id in execution_ids:
            try:
                self.records.delete_execution(execution_id)
            except StackError as gone:  # the records went away too
                raise EnqueueError(
                    f"could not enqueue ({type(cause).__name__}: {cause}), nor take back "
                    f"execution {execution_id} ({gone}); cancel it"
                ) from cause
        if isinstance(cause, redis.RedisError):
            raise EnqueueError(
                f"could not enqueue on Redis ({type(cause).__name__}: {cause}); "
                "nothing was submitted"
            ) from cause

    def _claim_key(self, r: redis.Redis, key: str, execution_id: str) -> str | None:
        """Take an idempotency key for a recorded execution; None if taken, else the
        execution id that holds it.

        Of two submitters at once exactly one takes it (SET NX). The holder
        recorded its execution before taking the key, so the other finds that
        record at once; unless the holder's submit failed and it took both
        back meanwhile, and then the key is free to take again.
        """
        name, ttl = keys.idempotency(key), int(self.settings.client.idempotency_s)
        for _ in range(KEY_ATTEMPTS):
            if r.set(name, execution_id, nx=True, ex=ttl):
                return None
            earlier = (r.get(name) or b"").decode()
            if earlier and self.records.get_execution(earlier) is not None:
                return earlier
        raise ConflictError(f"idempotency key {key!r} is busy; try again")

    def _release_key(self, r: redis.Redis, key: str | None, execution_id: str) -> None:
        import redis

        if key is None:
            return
        with contextlib.suppress(redis.RedisError):
            r.eval(_DELETE_IF_MINE, 1, keys.idempotency(key), execution_id)

    def _subscribe(self, execution_id: str, lazy: bool = False) -> _Events:
        self._pubsubs.redis = self._queue()
        return _Events(self._pubsubs, keys.events(execution_id), lazy=lazy)

    def _wait(
        self, execution_id: str, events: _Events, timeout: float | None, read_first: bool = True
    ) -> ExecutionRecord:
        """Wait for the terminal event (it carries the record, unless that is large:
        then the record is read), reading the record every ``poll_s`` anyway.

        ``read_first=False`` when subscribed before the job was enqueued: no event
        can have been missed, so there is nothing to read until one comes.
        Redis going away only slows the wait down to polling the records; the
        records going away is waited out for ``client.outage_s``, then reported.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        record = self._read_through_outage(execution_id) if read_first else None
        while record is None or not record.status.terminal:
            if events.lazy:  # subscribe, then read again: no event slips in between
                events.start()
            else:
                wait = self.settings.client.poll_s
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        break
                event = events.wait_for_terminal(wait)
                if event is not None and event.record is not None:
                    return event.record
            record = self._read_through_outage(execution_id)
        if record is None:
            record = self._read_through_outage(execution_id)
        if not record.status.terminal:
            raise WaitTimeout(
                f"execution {execution_id} still {record.status.value} after {timeout:g}s", record
            )
        return record

    def _read_through_outage(self, execution_id: str) -> ExecutionRecord:
        give_up = time.monotonic() + self.settings.client.outage_s
        while True:
            try:
                return self.execution(execution_id)
            except StoreUnavailable:
                if time.monotonic() > give_up:
                    raise
                time.sleep(self.settings.client.poll_s)


class _PubSubs:
    """The client's pub/sub connections: one per thread (a connection is not
    thread-safe), kept between waits, so a wait costs a SUBSCRIBE, not a connect."""

    def __init__(self) -> None:
        self.redis: redis.Redis | None = None
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()

    def get(self) -> Any:
        pubsub = getattr(self._local, "pubsub", None)
        if pubsub is None:
            assert self.redis is not None
            pubsub = self._local.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            with self._lock:
                self._all.append(pubsub)
        return pubsub

    def drop(self) -> None:
        """Forget this thread's connection (Redis went away): the next wait makes a new one."""
        pubsub = getattr(self._local, "pubsub", None)
        self._local.pubsub = None
        if pubsub is not None:
            with self._lock:
                self._all.remove(pubsub)
            with contextlib.suppress(Exception):
                pubsub.close()

    def close(self) -> None:
        with self._lock:
            pubsubs, self._all = self._all, []
        for pubsub in pubsubs:
            with contextlib.suppress(Exception):
                pubsub.close()
        self._local = threading.local()


class _Events:
    """An execution's event channel, subscribed again after Redis comes back."""

    def __init__(self, pubsubs: _PubSubs, channel: str, lazy: bool = False):
        self.pubsubs = pubsubs
        self.channel = channel
        self.pubsub = None
        self.lazy = lazy  # not subscribed until start()
        if not lazy:
            self._connect()

    def start(self) -> None:
        self.lazy = False
        self._connect()

    def _connect(self) -> None:
        import redis

        try:
            pubsub = self.pubsubs.get()
            pubsub.subscribe(self.channel)
            self.pubsub = pubsub
        except redis.RedisError:
            self.pubsubs.drop()
            self.pubsub = None  # polling the records until Redis answers again

    def wait_for_terminal(self, seconds: float) -> Event | None:
        """The execution's terminal event, if it comes within ``seconds``."""
        import redis

        if self.pubsub is None:
            time.sleep(seconds)
            self._connect()
            return None
        deadline = time.monotonic() + seconds
        try:
            while (left := deadline - time.monotonic()) > 0:
                message = self.pubsub.get_message(timeout=left)
                if message is None or _text(message["channel"]) != self.channel:
                    continue  # a confirmation, or a late event of an earlier wait
                event = Event.decode(message["data"])
                if event is not None and event.status.terminal:
                    return event
        except redis.RedisError:
            self._lost()
            time.sleep(min(seconds, 1.0))
            self._connect()
        return None

    def _lost(self) -> None:
        self.pubsubs.drop()
        self.pubsub = None

    def close(self) -> None:
        import redis

        if self.pubsub is not None:
            try:
                self.pubsub.unsubscribe(self.channel)
            except redis.RedisError:
                self._lost()
            self.pubsub = None

    def __enter__(self) -> _Events:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _id(execution: Job | str) -> str:
    return execution if isinstance(execution, str) else execution.id


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _job_or_none(fields: dict) -> QueuedJob | None:
    from orchestrator.intake import Job as QueuedJob

    try:
        return QueuedJob.decode(fields)
    except (ValueError, TypeError):  # written by another version, or corrupt
        return None
