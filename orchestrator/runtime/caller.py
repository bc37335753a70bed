"""The Ray executor: one attempt of a step on the least-loaded replica of its task.

The replica keeps the step's timeout (from the call's start there) and its
memory limit, and flags a call that outlived the one or passed the other; the
caller then has the replica killed and replaced (Ray cannot interrupt a
running method). A replica that died is replaced too. Either way the
attempt's outcome says so, and the driver's policy decides whether to try
again.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import ray

from orchestrator import lifecycle
from orchestrator.errors import Cancelled, OrchestratorError
from orchestrator.plan import PlannedStep
from orchestrator.runtime.calls import CancelCheck, OnStart, OnWait, Outcome, StepCall, failure
from orchestrator.runtime.router import Router

CANCEL_POLL_S = 1.0  # a running call checks this often whether it was cancelled


async def _unless_cancelled(outcome_ref: Any, cancelled: CancelCheck) -> Any:
    """The call's outcome, or Cancelled as soon as a check finds the execution cancelled."""
    outcome = asyncio.ensure_future(outcome_ref)
    try:
        while True:
            done, _ = await asyncio.wait({outcome}, timeout=CANCEL_POLL_S)
            if done:
                return outcome.result()
            if await cancelled():
                raise Cancelled(lifecycle.CANCELLED_BY_USER)
    finally:
        if not outcome.done():
            outcome.cancel()


class Caller:
    """Runs step attempts on replicas through a router (an :class:`~.driver.Executor`)."""

    def __init__(self, router: Router):
        self.router = router

    def put(self, value: Any) -> Any:
        return ray.put(value)

    def expect(self, execution_id: str, steps: list[PlannedStep], calls: dict[str, int]) -> None:
        self.router.expect(execution_id, steps, calls)

    def forget(self, execution_id: str) -> None:
        self.router.forget(execution_id)

    async def get(self, refs: list[Any]) -> list[Any]:
        return list(await asyncio.gather(*refs))

    async def attempt(
        self,
        step: PlannedStep,
        call: StepCall,
        args: tuple[Any, ...],
        cancelled: CancelCheck,
        on_start: OnStart | None = None,
        on_wait: OnWait | None = None,
    ) -> tuple[Outcome, Any]:
        """One attempt; a hung replica is killed, a dead one replaced.

        ``cancelled`` is asked every ``CANCEL_POLL_S`` while the call waits for
        a replica slot (its replica placed, loaded, or busy), and ``on_start``
        raises :class:`~orchestrator.errors.Cancelled` if it was cancelled since,
        so a job cancelled while it waited never starts; and every
        ``CANCEL_POLL_S`` while the call runs: a cancelled
        call has its replica killed (a running method cannot be interrupted otherwise) and
        replaced, and raises :class:`~orchestrator.errors.Cancelled`.
        """
        try:
            name, replica = await self._acquire(step, call, cancelled, on_wait)
        except Cancelled:
            raise
        except (OrchestratorError, ray.exceptions.RayError) as e:  # placement, loading
            return failure(step.task_id, time.time(), getattr(e, "cause", None) or e), None
        started = time.time()
        try:
            if on_start is not None:  # it checks for a cancel since the last check
                await on_start(name)
        except BaseException:  # cancelled, or this run stopped (its lease lost): slot back
            self.router.release(step, name)
            raise
        try:
            outcome_ref, result_ref = replica.run_step.remote(call, *args)
            outcome = await _unless_cancelled(outcome_ref, cancelled)
        except Cancelled:
            self.router.failed(step, name, "its call was cancelled")
            raise
        except ray.exceptions.RayActorError as e:
            self.router.failed(step, name, "died")
            outcome = failure(name, started, e, retryable=True, message=f"replica {name} died")
            # A replica taking one call at a time died of this call: a crash (a
            # poison job if it keeps happening). One serving others may have died of theirs.
            outcome.crashed = self.router.limit(step) == 1
            return outcome, None
        except ray.exceptions.RayError as e:  # an upstream output lost, say: it stays lost
            return failure(name, started, e, message=f"{type(e).__name__}: {e}"), None
        finally:
            self.router.release(step, name)
        if outcome.hung:
            self.router.failed(
                step, name, f"a call outlived its timeout of {step.policy.timeout:g}s"
            )
        if outcome.over_memory:
            self.router.failed(step, name, "it passed its memory limit")
        if outcome.broken:
            self.router.failed(step, name, "could not load its task")
        return outcome, result_ref

    async def _acquire(
        self, step: PlannedStep, call: StepCall, cancelled: CancelCheck, on_wait: OnWait | None
    ) -> tuple[str, Any]:
        """A replica slot; Cancelled, right where it waits, if the execution is cancelled
        while its replica is placed, loads, or is busy."""
        if call.prefer is None:
            free = self.router.try_acquire(step, call.execution_id)
            if free is not None:
                return free
        waiting = asyncio.ensure_future(
            self.router.acquire(step, call.priority, call.prefer, on_wait, call.execution_id)
        )
        try:
            return await _unless_cancelled(waiting, cancelled)
        except BaseException:  # cancelled, or this run stopped: a slot it just got goes back
            if waiting.done() and not waiting.cancelled() and waiting.exception() is None:
                self.router.release(step, waiting.result()[0])
            raise
