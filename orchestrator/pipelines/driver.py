"""The driver: turns a plan into Ray calls and records each step as it goes.

Each step is a ``run_step`` call on a replica of its task, with its upstream
steps' result references as arguments: Ray resolves them on the replica's
node, so no step result passes through the dispatcher. A step is submitted
once its dependencies have succeeded, so the steps of a parallel group are in
flight together; ``max_parallel`` bounds how many run at once. When a step
fails for good its dependents are skipped and the execution fails naming it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import ray

from orchestrator import keys
from orchestrator.errors import Cancelled
from orchestrator.models import ErrorInfo, ExecutionRecord, StepRecord, StepStatus, TaskRecord
from orchestrator.pipelines.graph import Plan, PlannedStep, pending_steps
from orchestrator.runtime.caller import Caller
from orchestrator.runtime.replica import StepCall

CANCELLED = Cancelled.__name__  # the error type of an execution a user cancelled

TaskLookup = Callable[[str, str, str], Awaitable[TaskRecord]]
Save = Callable[[ExecutionRecord], Awaitable[None]]


class Driver:
    """Runs plans; one driver per dispatcher, one ``run`` per execution."""

    def __init__(
        self,
        caller: Caller,
        tasks: TaskLookup,
        save: Save,
        timeout_override: Callable[[str], float | None] = lambda _task: None,
        cancelled: Callable[[str], Awaitable[bool]] | None = None,
        kept: Callable[[str, str], Awaitable[Any]] | None = None,
    ):
        self.caller = caller
        self.tasks = tasks
        self.save = save
        self.timeout_override = timeout_override
        self.cancelled = cancelled
        self.kept = kept  # (execution_id, step_id) -> a finished step's kept output

    async def run(
        self, plan: Plan, pipeline_input: Any, record: ExecutionRecord
    ) -> tuple[ExecutionRecord, Any, ErrorInfo | None]:
        """Run every step; returns the record, the result and the error (if failed)."""
        if len(record.steps) != len(plan.steps):
            record.steps = pending_steps(plan)
        run = _Run(plan, record, ray.put(pipeline_input))
        await self._resume(run)
        await asyncio.gather(*(self._step(run, s) for s in plan.steps))
        failed = next((s for s in record.steps if s.status == StepStatus.FAILED), None)
        record.attempts = max(s.attempts for s in record.steps)  # the most any step took
        record.worker_id = record.steps[-1].worker_id
        if any(s.status == StepStatus.CANCELLED for s in record.steps):
            return record, None, ErrorInfo(type=CANCELLED, message="cancelled by a user")
        if failed is not None:
            error = failed.error or ErrorInfo(type="Error", message="step failed")
            message = f"step {failed.step_id!r} failed: {error.type}: {error.message}"
            if plan.kind == "task":
                message = error.message
            return record, None, ErrorInfo(type=error.type, message=message, step=failed.step_id)
        return record, await self._result(run), None

    async def _resume(self, run: _Run) -> None:
        """A claimed job's finished steps keep their outputs: they are not run again."""
        if run.plan.kind != "pipeline" or self.kept is None:
            return
        for sr in run.record.steps:
            if sr.status == StepStatus.SUCCEEDED:
                output = await self.kept(run.record.execution_id, sr.step_id)
                if output is not None:
                    run.outputs[sr.step_id] = ray.put(output)
                    run.done[sr.step_id].set()
                    continue
            if sr.status != StepStatus.PENDING:  # interrupted mid-step: run it again
                sr.status, sr.started_at, sr.finished_at = StepStatus.PENDING, None, None

    async def _step(self, run: _Run, step: PlannedStep) -> None:
        sr = run.steps[step.step_id]
        if run.done[step.step_id].is_set():  # resumed: finished before the interruption
            return
        try:
            for dep in step.deps:
                await run.done[dep].wait()
            if any(run.steps[d].status != StepStatus.SUCCEEDED for d in step.deps):
                sr.status = StepStatus.SKIPPED
                await self.save(run.record)
                return
            async with run.slots:
                task = await self.tasks(step.task_id, step.version, step.package_sha256)
                await self._started(run, sr)
                keep_as = (
                    keys.step_output_key(run.record.execution_id, step.step_id)
                    if run.plan.kind == "pipeline" and self.kept is not None
                    else None
                )
                call = StepCall(
                    step.step_id, step.reads, step.input_mapping, run.plan.caching, keep_as
                )
                upstream = [run.outputs[r] for r in step.reads]

                def invoke(replica: Any) -> tuple[Any, Any]:
                    return replica.run_step.remote(call, run.input_ref, *upstream)

                timeout = self.timeout_override(step.task_id) or step.timeout
                outcome, ref = await self.caller.run(
                    task, sr, timeout, step.retries, invoke, proceed=self._proceed(run)
                )
                if outcome.error_type == CANCELLED:
                    sr.status, sr.error = StepStatus.CANCELLED, None
                if outcome.ok:
                    run.outputs[step.step_id] = ref
                    run.record.memory_usage = (
                        max(run.record.memory_usage or 0, outcome.memory or 0) or None
                    )
                await self._progress(run)
        finally:
            run.done[step.step_id].set()

    def _proceed(self, run: _Run) -> Callable[[], Awaitable[bool]] | None:
        """Checked before each step's call: a cancelled execution starts no more steps."""
        if self.cancelled is None:
            return None
        cancelled, execution_id = self.cancelled, run.record.execution_id

        async def proceed() -> bool:
            return not await cancelled(execution_id)

        return proceed

    async def _started(self, run: _Run, sr: StepRecord) -> None:
        sr.status = StepStatus.RUNNING
        await self._progress(run)

    async def _progress(self, run: _Run) -> None:
        """Record a step's change. A task's one step is recorded with its execution."""
        if run.plan.kind == "pipeline":
            await self.save(run.record)

    async def _result(self, run: _Run) -> Any:
        """The sink step's output (or each sink's), with timings in its summary."""
        sinks = run.plan.sinks
        outputs = await asyncio.gather(*(run.outputs[s] for s in sinks))
        result = outputs[0] if len(sinks) == 1 else dict(zip(sinks, outputs, strict=True))
        if (
            run.plan.kind == "pipeline"
            and isinstance(result, dict)
            and isinstance(result.get("summary"), dict)
        ):
            steps = run.record.steps
            result["summary"]["step_times"] = {s.step_id: s.duration for s in steps}
            started = min(s.started_at for s in steps if s.started_at)
            result["summary"]["total_time"] = max(s.finished_at or 0 for s in steps) - started
        return result


class _Run:
    """The state of one execution while the driver runs it."""

    def __init__(self, plan: Plan, record: ExecutionRecord, input_ref: Any):
        self.plan = plan
        self.record = record
        self.input_ref = input_ref
        self.steps = {s.step_id: s for s in record.steps}
        self.outputs: dict[str, Any] = {}
        self.done = {s.step_id: asyncio.Event() for s in plan.steps}
        self.slots = asyncio.Semaphore(plan.max_parallel)
