"""Status transitions of executions and steps, and the event each one publishes.

Every change of status goes through a function here. The moves allowed are
written once (``_EXECUTION_MOVES``, ``_STEP_MOVES``); any other raises
:class:`~orchestrator.errors.IllegalTransition`. An execution's move returns
the :class:`Event` its writer publishes on ``wtm:events:<id>`` once the record
is saved; :func:`judge` is the one place that turns step states into an
execution's terminal status.

    queued ──► running ──► succeeded | failed | cancelled | dead_lettered
       └──────────────────► cancelled | failed | dead_lettered

    step: pending ──► running ──► succeeded | failed | cancelled
             └──────► skipped (a dependency failed) | cancelled | failed (no replica)

An execution stays ``queued`` until a step of it can run (a replica slot is
free, or the cache answers): waiting for a replica is a step's phase
(:class:`~orchestrator.models.StepPhase`), not running.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from orchestrator.errors import Cancelled, DeadLettered, IllegalTransition, OrchestratorError
from orchestrator.models import ErrorInfo, ExecutionRecord, ExecutionStatus, StepRecord, StepStatus

E, S = ExecutionStatus, StepStatus

_EXECUTION_MOVES: dict[ExecutionStatus, frozenset[ExecutionStatus]] = {
    E.QUEUED: frozenset({E.RUNNING, E.CANCELLED, E.FAILED, E.DEAD_LETTERED}),
    # running -> running: a job claimed after its dispatcher died starts again
    E.RUNNING: frozenset({E.RUNNING, E.SUCCEEDED, E.FAILED, E.CANCELLED, E.DEAD_LETTERED}),
}
_STEP_MOVES: dict[StepStatus, frozenset[StepStatus]] = {
    # pending -> failed: no replica could be had for it (it never ran)
    S.PENDING: frozenset({S.RUNNING, S.SKIPPED, S.CANCELLED, S.FAILED}),
    # running -> pending: a claimed job's interrupted step runs again
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED, S.PENDING}),
    # A claimed execution runs again any step whose output it cannot reuse.
    **{done: frozenset({S.PENDING}) for done in (S.SUCCEEDED, S.FAILED, S.SKIPPED, S.CANCELLED)},
}

CANCELLED_BY_USER = "cancelled by a user"


class Event(BaseModel):
    """A change of an execution (or of one of its steps), as published to waiters.

    A terminal event may carry the record as written (:meth:`carrying`), so a
    client waiting for it need not read the record back; one too large to
    publish (over ``EVENT_RECORD_BYTES``) goes without, and the client reads.
    """

    model_config = ConfigDict(frozen=True)
    execution_id: str
    status: ExecutionStatus
    step_id: str | None = None
    step_status: StepStatus | None = None
    at: float
    record: ExecutionRecord | None = None

    def carrying(self, record: ExecutionRecord) -> Event:
        """This event with the record it announces, as saved."""
        return self.model_copy(update={"record": record})

    def encode(self) -> str:
        """The message published on the execution's channel (defaults left out:
        they decode back as they were)."""
        data = self.model_dump_json(exclude_defaults=True)
        if self.record is not None and len(data) > EVENT_RECORD_BYTES:
            data = self.model_copy(update={"record": None}).model_dump_json(exclude_defaults=True)
        return data

    @classmethod
    def decode(cls, data: bytes | str) -> Event | None:
        """An event from a published message; None for anything else."""
        try:
            return cls.model_validate_json(data)
        except ValidationError:
            return None


EVENT_RECORD_BYTES = 64 * 1024  # a terminal record larger than this is read, not published


@dataclass(frozen=True)
class Verdict:
    """How an execution ended, judged from its steps."""

    status: ExecutionStatus
    error: ErrorInfo | None = None
    result: Any = None


# executions ------------------------------------------------------------------
def start(record: ExecutionRecord, now: float) -> Event:
    """A step of the execution can run, in this delivery, for the first time: one more
    delivery (a job that only waited in a dispatcher is not counted)."""
    _move(record, E.RUNNING)
    record.deliveries += 1
    if record.started_at is None:  # a claimed job keeps its first start
        record.started_at = now
        record.queue_wait = now - record.submitted_at
    return _event(record, now)


def finish(record: ExecutionRecord, verdict: Verdict, now: float) -> Event:
    """The driver ran every step it could: record the verdict and the step totals."""
    _move(record, verdict.status)
    record.finished_at = now
    record.duration = now - (record.started_at or now)
    record.error, record.result = verdict.error, verdict.result
    if record.steps:
        record.attempts = max(s.attempts for s in record.steps)  # the most any step took
        record.worker_id = record.steps[-1].worker_id
        record.memory_usage = max((s.memory_usage or 0) for s in record.steps) or None
    return _event(record, now)


def cancel(record: ExecutionRecord, now: float, reason: str = CANCELLED_BY_USER) -> Event:
    """Stop an execution that has not finished; its unfinished steps are cancelled."""
    for step in record.steps:
        if not step.status.terminal:
            step_ended(step, S.CANCELLED, now)
    return _end(record, E.CANCELLED, ErrorInfo(type=Cancelled.__name__, message=reason), now)


def fail(record: ExecutionRecord, error: ErrorInfo, now: float) -> Event:
    """The execution could not run at all (its task is gone, say)."""
    return _end(record, E.FAILED, error, now)


def dead_letter(record: ExecutionRecord, reason: str, now: float) -> Event:
    """The job kept failing delivery and was moved to the dead-letter stream."""
    error = ErrorInfo(type=DeadLettered.__name__, message=reason)
    return _end(record, E.DEAD_LETTERED, error, now)


def judge(steps: list[StepRecord], name_failed_step: bool) -> Verdict:
    """The execution's terminal status from its steps (the result is the driver's)."""
    if any(s.status == S.CANCELLED for s in steps):
        return Verdict(E.CANCELLED, ErrorInfo(type=Cancelled.__name__, message=CANCELLED_BY_USER))
    bad = next((s for s in steps if s.status == S.FAILED), None) or next(
        (s for s in steps if s.status != S.SUCCEEDED), None
    )
    if bad is None:
        return Verdict(E.SUCCEEDED)
    error = bad.error or ErrorInfo(
        type=OrchestratorError.__name__, message=f"step ended {bad.status.value}"
    )
    message = error.message
    if name_failed_step:
        message = f"step {bad.step_id!r} failed: {error.type}: {error.message}"
    return Verdict(E.FAILED, ErrorInfo(type=error.type, message=message, step=bad.step_id))


# steps -------------------------------------------------------------------------
def step_started(step: StepRecord, now: float) -> None:
    """The step's call goes to a replica that has a free slot: its body starts."""
    if step.status != S.RUNNING:  # a retry runs on
        _step_move(step, S.RUNNING)
    step.started_at = step.started_at or now  # from its first call


def step_ended(step: StepRecord, status: StepStatus, now: float) -> None:
    """The step succeeded, failed for good, or was cancelled."""
    _step_move(step, status)
    step.finished_at = now
    if step.started_at is not None:
        step.duration = now - step.started_at


def step_blocked(step: StepRecord, deps: list[StepRecord]) -> bool:
    """Skip (or cancel) a step whose dependencies did not all succeed; whether it was."""
    if all(d.status == S.SUCCEEDED for d in deps):
        return False
    cancelled = any(d.status == S.CANCELLED for d in deps)
    _step_move(step, S.CANCELLED if cancelled else S.SKIPPED)
    return True


def step_cached(step: StepRecord, now: float) -> None:
    """The step cache answered the step: it succeeded without running."""
    _step_move(step, S.RUNNING)
    step.started_at, step.cache_hit, step.worker_id = now, True, None
    step_ended(step, S.SUCCEEDED, now)


def step_reset(step: StepRecord) -> None:
    """A claimed execution's step that must run again (interrupted, or its output lost)."""
    if step.status != S.PENDING:
        _step_move(step, S.PENDING)
    step.started_at = step.finished_at = step.duration = None


def step_event(record: ExecutionRecord, step: StepRecord, now: float) -> Event:
    return Event(
        execution_id=record.execution_id,
        status=record.status,
        step_id=step.step_id,
        step_status=step.status,
        at=now,
    )


# moves -------------------------------------------------------------------------
def _end(record: ExecutionRecord, status: ExecutionStatus, error: ErrorInfo, now: float) -> Event:
    """End an execution the driver did not finish; no step is left open."""
    _move(record, status)
    for step in record.steps:
        if step.status == S.PENDING:
            _step_move(step, S.SKIPPED)
        elif step.status == S.RUNNING:
            step_ended(step, S.FAILED, now)
            step.error = step.error or error
    record.finished_at = now
    record.duration = now - record.started_at if record.started_at else None
    record.error, record.result = error, None
    return _event(record, now)


def _move(record: ExecutionRecord, status: ExecutionStatus) -> None:
    if status not in _EXECUTION_MOVES.get(record.status, ()):
        raise IllegalTransition(
            f"execution {record.execution_id} cannot go from {record.status.value} "
            f"to {status.value}"
        )
    record.status = status


def _step_move(step: StepRecord, status: StepStatus) -> None:
    if status not in _STEP_MOVES.get(step.status, ()):
        raise IllegalTransition(
            f"step {step.step_id!r} cannot go from {step.status.value} to {status.value}"
        )
    step.status = status


def _event(record: ExecutionRecord, now: float) -> Event:
    return Event(execution_id=record.execution_id, status=record.status, at=now)
