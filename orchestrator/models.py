"""Records (pydantic models): executions, steps, tasks, pipelines, workers.

Field names follow brief section 3.4: the CLI's ``--json`` prints them as is.
Times are Unix seconds (floats) so that durations are plain subtraction. The
status values are enums here; which moves between them are allowed, and the
event each move publishes, is :mod:`orchestrator.lifecycle`.
"""

from __future__ import annotations

import itertools
import os
import time
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, Field, computed_field, field_validator

from orchestrator.pipelinespec import PipelineSpec
from orchestrator.secrets import redact_text
from orchestrator.taskspec import DEFAULT_PRIORITY, DEFAULT_QUEUE, TaskSpec

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_execution_id(now: float | None = None) -> str:
    """A ULID: 48 bits of milliseconds then 80 random bits, so ids sort by time."""
    ms = int((time.time() if now is None else now) * 1000)
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


class _Printable(str, Enum):
    """A string enum that prints as its value: ``f"{status}"`` is ``succeeded``."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


def _when(seconds: float | None) -> datetime | None:
    """Unix seconds as an aware UTC datetime (None stays None)."""
    return None if seconds is None else datetime.fromtimestamp(seconds, timezone.utc)


class _Times:
    """``started`` and ``finished`` as datetimes, beside the models' float fields
    ``started_at`` and ``finished_at`` (not declared here: pydantic would take
    them for fields of this class and put them first)."""

    @property
    def started(self) -> datetime | None:
        return _when(self.started_at)  # type: ignore[attr-defined]

    @property
    def finished(self) -> datetime | None:
        return _when(self.finished_at)  # type: ignore[attr-defined]


class ExecutionStatus(_Printable):
    """Lifecycle of one execution."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DEAD_LETTERED = "dead_lettered"

    @property
    def terminal(self) -> bool:
        return self not in (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING)


class StepStatus(_Printable):
    """Lifecycle of one step of an execution."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self not in (StepStatus.PENDING, StepStatus.RUNNING)


class StepPhase(_Printable):
    """Where a step's time goes: each change is marked on its record with a timestamp.

    A step is ``queued`` from the moment it could run (its execution submitted,
    its dependencies done) until a dispatcher asks for a replica slot; then it
    may wait, for one of four named reasons, before it ``running``; it ends
    ``done``, or ``cached`` when the step cache answered it without a replica.
    """

    QUEUED = "queued"
    PLACING = "placing"  # its replica waits for the cluster to have room for it
    STARTING = "starting"  # its replica's process is starting
    LOADING = "loading"  # its replica imports the task and loads the model
    BUSY = "busy"  # every replica's slots are taken: it waits for one to free
    RUNNING = "running"
    CACHED = "cached"
    DONE = "done"

    @property
    def waiting(self) -> bool:
        """A wait for a replica (placing, starting, loading, busy)."""
        return self in _WAITS


_WAITS = frozenset({StepPhase.PLACING, StepPhase.STARTING, StepPhase.LOADING, StepPhase.BUSY})


class PhaseMark(BaseModel):
    """A step entered ``phase`` at ``at`` (Unix seconds); it lasts until the next mark."""

    phase: StepPhase
    at: float


class WorkerState(_Printable):
    """What a replica is doing, as its heartbeat (or its silence) says."""

    LOADING = "loading"  # importing its task and loading the model
    IDLE = "idle"
    BUSY = "busy"
    BROKEN = "broken"  # could not load its task; every call fails
    DEAD = "dead"  # killed, or silent for too many heartbeats


class ErrorInfo(BaseModel):
    """What went wrong: the error class, its message, and the step it hit."""

    type: str
    message: str
    step: str | None = None

    @field_validator("message")
    @classmethod
    def _hide_credentials(cls, value: str) -> str:
        return redact_text(value)  # a URL the error quotes is recorded without its password


class StepRecord(_Times, BaseModel):
    """One step of an execution (a task run is a one-step execution)."""

    step_id: str
    task_id: str
    version: str | None = None
    status: StepStatus = StepStatus.PENDING
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    duration: float | None = None
    worker_id: str | None = None
    node: str | None = None
    error: ErrorInfo | None = None
    cache_hit: bool = False
    memory_usage: int | None = None  # the step's peak memory on its replica, in bytes
    phases: list[PhaseMark] = Field(default_factory=list)  # where its time went, in order

    @property
    def phase(self) -> StepPhase | None:
        """What the step is doing now (its last mark), None before it was marked."""
        return self.phases[-1].phase if self.phases else None

    def waits(self) -> list[tuple[StepPhase, float]]:
        """Each wait for a replica it had, and how long it lasted (ended waits only)."""
        pairs = itertools.pairwise(self.phases)
        return [(m.phase, after.at - m.at) for m, after in pairs if m.phase.waiting]

    def mark(self, phase: StepPhase, at: float) -> bool:
        """Mark a change of phase at ``at``; False (nothing marked) if it is already in it."""
        if self.phase == phase:
            return False
        self.phases.append(PhaseMark(phase=phase, at=at))
        return True

    def __repr__(self) -> str:
        took = f" in {self.duration:.3f}s" if self.duration is not None else ""
        return f"<Step {self.step_id} ({self.task_id}): {self.status}{took}>"

    def _repr_html_(self) -> str:
        from orchestrator import display

        return display.steps_html([self])


class ExecutionRecord(_Times, BaseModel):
    """The system of record for one execution."""

    execution_id: str
    kind: Literal["task", "pipeline"]
    task_id: str | None = None
    pipeline_id: str | None = None
    version: str | None = None
    status: ExecutionStatus = ExecutionStatus.QUEUED
    priority: int = DEFAULT_PRIORITY
    queue: str = DEFAULT_QUEUE
    input: Any = None
    input_ref: str | None = None  # set when the input was too large to keep inline
    submitted_at: float
    started_at: float | None = None
    finished_at: float | None = None
    duration: float | None = None
    queue_wait: float | None = None
    memory_usage: int | None = None
    attempts: int = 0
    deliveries: int = 0  # how many times a dispatcher took the job up: 2+ means it was resumed
    worker_id: str | None = None
    error: ErrorInfo | None = None
    result: Any = None
    result_ref: str | None = None
    steps: list[StepRecord] = Field(default_factory=list)

    @computed_field  # in --json output too: one field for a task's or a pipeline's id
    @property
    def target(self) -> str:
        return self.task_id if self.kind == "task" else self.pipeline_id  # type: ignore[return-value]

    @property
    def submitted(self) -> datetime:
        return _when(self.submitted_at)  # type: ignore[return-value]

    def snapshot(self) -> ExecutionRecord:
        """A copy to write while this one goes on changing: the record and each step
        copied, their phase lists too; values that are replaced, never changed in
        place (input, result, errors, marks), shared. A tenth of a deep copy's cost."""
        steps = [s.model_copy(update={"phases": list(s.phases)}) for s in self.steps]
        return self.model_copy(update={"steps": steps})

    def __repr__(self) -> str:  # pydantic's would print the whole input and result
        took = f" in {self.duration:.3f}s" if self.duration is not None else ""
        return f"<Execution {self.execution_id} {self.kind} {self.target}: {self.status}{took}>"

    def _repr_html_(self) -> str:
        from orchestrator import display

        return display.record_html(self)


class TaskRecord(BaseModel):
    """One registered version of a task package."""

    task_id: str
    version: str
    sha256: str
    size: int
    object_key: str
    registered_at: float
    spec: TaskSpec


class PipelineRecord(BaseModel):
    """One registered version of a pipeline definition."""

    pipeline_id: str
    version: str
    sha256: str
    object_key: str
    registered_at: float
    spec: PipelineSpec


class WorkerRecord(BaseModel):
    """A replica's last heartbeat."""

    worker_id: str
    task_id: str
    version: str
    node: str | None = None
    pid: int | None = None
    state: WorkerState = WorkerState.LOADING
    in_flight: int = 0
    processed: int = 0
    failed: int = 0
    loads: int = 0
    mean_latency: float | None = None
    p50_latency: float | None = None
    memory: int | None = None
    started_at: float | None = None
    heartbeat_at: float | None = None


class ReplicaEvent(BaseModel):
    """A replica started, began stopping, or stopped, and why (``wtm:replica-events``)."""

    at: float
    replica: str
    task_id: str
    version: str
    event: Literal["started", "stopping", "stopped"]
    kind: str  # one word for the metrics: demand, warm, min, pinned; idle, room, died, ...
    reason: str


class DeadLetter(BaseModel):
    """One job in the dead-letter stream, with why it is there."""

    dlq_id: str  # its entry id in the dead-letter stream
    execution_id: str | None  # None: the message could not be read at all
    target: str | None = None
    kind: str | None = None
    queue: str | None = None
    reason: str
    error: str | None = None  # the execution's last error, if its record has one
    deliveries: int | None = None
    dead_at: float  # when it was moved there (from the entry id)
