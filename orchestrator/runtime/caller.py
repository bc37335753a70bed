"""Running one step on a replica under the retry and timeout policy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import ray

from orchestrator.errors import Cancelled, TaskTimeoutError
from orchestrator.models import ErrorInfo, StepRecord, StepStatus, TaskRecord
from orchestrator.policy import compute_backoff, should_retry
from orchestrator.runtime.replica import Outcome
from orchestrator.runtime.router import Router

#: Given a replica handle, submit the call: returns (outcome ref, result ref).
Invoke = Callable[[Any], tuple[Any, Any]]
#: Asked right before a call: False stops the step (its execution was cancelled).
Proceed = Callable[[], Awaitable[bool]]


class Caller:
    """Attempts a step until it succeeds or the policy says stop; fills its record."""

    def __init__(self, router: Router):
        self.router = router

    async def run(
        self,
        task: TaskRecord,
        step: StepRecord,
        timeout: float,
        retries: int,
        invoke: Invoke,
        proceed: Proceed | None = None,
    ) -> tuple[Outcome, Any]:
        """Returns the last outcome and, on success, the reference to its result.

        ``proceed`` is asked once a replica slot is free, right before the call:
        a cancelled execution stops there, even after waiting for the slot.
        """
        step.status = StepStatus.RUNNING
        while True:
            step.attempts += 1
            outcome, result_ref = await self._once(task, timeout, invoke, proceed)
            # The step's time runs from the first call, not from the wait for a slot.
            step.started_at = step.started_at or outcome.started_at
            step.worker_id, step.node = outcome.worker_id, outcome.node
            step.cache_hit = outcome.cache_hit
            if outcome.ok:
                step.status, step.error = StepStatus.SUCCEEDED, None
                break
            step.error = ErrorInfo(
                type=outcome.error_type or "Error",
                message=outcome.error_message or "",
                step=step.step_id,
            )
            if not should_retry(step.attempts, retries, outcome.retryable):
                step.status = StepStatus.FAILED
                break
            await asyncio.sleep(compute_backoff(step.attempts))
        step.finished_at = time.time()
        step.duration = step.finished_at - step.started_at
        return outcome, result_ref

    async def _once(
        self, task: TaskRecord, timeout: float, invoke: Invoke, proceed: Proceed | None
    ) -> tuple[Outcome, Any]:
        """One attempt on the least-loaded replica; a hung one is killed, a dead one replaced."""
        try:
            name, replica = await self.router.acquire(task)
        except Exception as e:  # noqa: BLE001 - no replica could start (placement, loading)
            return failure(task.task_id, time.time(), getattr(e, "cause", None) or e), None
        started = time.time()
        try:
            if proceed is not None and not await proceed():
                return failure(name, started, Cancelled("cancelled by a user")), None
            outcome_ref, result_ref = invoke(replica)
            outcome = await asyncio.wait_for(outcome_ref, timeout)
        except asyncio.TimeoutError:
            self.router.failed(task, name, "timeout")  # Ray cannot interrupt a running method
            err = TaskTimeoutError(f"task {task.task_id} exceeded its timeout of {timeout:g}s")
            return failure(name, started, err, retryable=True), None
        except ray.exceptions.RayActorError as e:
            self.router.failed(task, name, "died")
            return failure(name, started, e, retryable=True, message=f"replica {name} died"), None
        finally:
            self.router.release(task, name)
        if outcome.broken:
            self.router.failed(task, name, "could not load its task")
        return outcome, result_ref


def failure(
    worker: str,
    started: float,
    error: BaseException,
    *,
    retryable: bool = False,
    message: str | None = None,
) -> Outcome:
    """An outcome for an attempt that never reached the task."""
    return Outcome(
        False,
        worker,
        "",
        started,
        time.time(),
        error_type=type(error).__name__,
        error_message=message or str(error),
        retryable=retryable,
    )
