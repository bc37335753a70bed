"""The driver: runs a plan's steps and records each change.

A step starts once its dependencies have succeeded, with their outputs'
references as arguments (on Ray those resolve on the replica's node, so no
step result passes through the dispatcher). The steps of a parallel group are
in flight together; the plan's ``max_parallel`` bounds them. Each step is
tried under its policy (retries with backoff); one that fails for good skips
its dependents, and :func:`~orchestrator.lifecycle.judge` names it. A call
whose replica's process died under it is a crash, not a task error: it is
sent again to a fresh replica without using a retry, and a step that crashed
its replica ``max_crashes`` times is a poison job: the execution goes to the
dead letters.

Warm when it matters. When it takes an execution up, the driver first
answers from the step cache every step whose input it holds (the pipeline
input, and the outputs the cache gave it), so a cached pipeline needs no
replica at all; then it tells the executor which replica slots the rest of
the plan will ask for (:meth:`Executor.expect`), so the replicas of every
stage start together rather than one stage after the other.

Every wait has a name. Each step's record carries its phases
(:class:`~orchestrator.models.StepPhase`): ``queued`` from when it could
run, then any wait for a replica with its reason, ``running`` once its call
goes to a replica with a free slot (``started_at``), ``done``. The execution
stays ``queued`` until one of its steps can run; that write is the one that
counts the delivery, and one refused because the execution was cancelled
meanwhile stops the run (:class:`~orchestrator.errors.EndedElsewhere`).

The driver knows nothing of Redis, the records or Ray: it talks to an
:class:`Executor` (where attempts run) and a
:class:`~orchestrator.runtime.store.RunStore` (what it records). Each has an
in-process twin (:class:`LocalExecutor`, ``MemoryRunStore``), so the driver is
tested on its own.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from orchestrator import keys, lifecycle
from orchestrator.errors import Cancelled, DeadLettered, EndedElsewhere
from orchestrator.lifecycle import Event, Verdict
from orchestrator.models import (
    ErrorInfo,
    ExecutionRecord,
    ExecutionStatus,
    StepPhase,
    StepRecord,
    StepStatus,
)
from orchestrator.pipelines.mapping import step_input
from orchestrator.plan import Plan, PlannedStep
from orchestrator.policy import classify, compute_backoff, should_retry
from orchestrator.runtime.calls import (
    CancelCheck,
    OnStart,
    OnWait,
    Outcome,
    StepCall,
    failure,
)
from orchestrator.runtime.store import RunStore


class Executor(Protocol):
    """Where a step's attempts run: Ray replicas (``runtime.caller.Caller``) or in process."""

    def put(self, value: Any) -> Any:
        """A reference to a value the steps receive."""

    async def get(self, refs: list[Any]) -> list[Any]:
        """The values behind references."""

    def expect(self, execution_id: str, steps: list[PlannedStep], calls: dict[str, int]) -> None:
        """The execution will ask for ``calls`` slots of each set (by set key): have
        its replicas start now."""

    def forget(self, execution_id: str) -> None:
        """The execution ended: what it was expected to ask for no longer counts."""

    async def attempt(
        self,
        step: PlannedStep,
        call: StepCall,
        args: tuple[Any, ...],
        cancelled: CancelCheck,
        on_start: OnStart | None = None,
        on_wait: OnWait | None = None,
    ) -> tuple[Outcome, Any]:
        """One try: its outcome, and a reference to the output if it succeeded.

        ``args`` are the pipeline input's reference, then those of the steps in
        ``call.reads``. Raises :class:`~orchestrator.errors.Cancelled` if
        ``cancelled()`` holds once the step could start. ``on_wait`` is told why
        the call waits for a replica slot; ``on_start`` the replica (worker)
        right before the call goes to it (it may raise to stop the call).
        """


class Driver:
    """Runs plans; one driver per dispatcher, one :meth:`run` per execution."""

    def __init__(self, executor: Executor, store: RunStore, max_crashes: int = 5):
        self.executor = executor
        self.store = store
        self.max_crashes = max_crashes

    async def run(self, plan: Plan, pipeline_input: Any, record: ExecutionRecord) -> Verdict:
        """Run every step it can, filling ``record.steps``; the verdict carries the result.

        Raises :class:`~orchestrator.errors.EndedElsewhere` if the execution was
        ended by someone else (cancelled while queued) before a step could run.
        """
        if [s.step_id for s in record.steps] != [s.step_id for s in plan.steps]:
            record.steps = plan.pending_steps()
        # Several steps read the input: stored once. One step: it travels with its call.
        shared = len(plan.steps) > 1
        input_ref = self.executor.put(pipeline_input) if shared else pipeline_input
        run = _Run(plan, record, pipeline_input, input_ref)
        await self._resume(run)
        try:
            if plan.caching:
                await self._answer_from_cache(run)
            self._expect(run)
            if len(plan.steps) == 1:  # a task: nothing beside it to stop, no task to make
                await self._step(run, plan.steps[0])
            else:
                await _all_or_none([self._step(run, s) for s in plan.steps])
        finally:
            self.executor.forget(record.execution_id)
        verdict = lifecycle.judge(record.steps, plan.name_failed_step)
        if run.poison is not None:
            verdict = Verdict(
                ExecutionStatus.DEAD_LETTERED,
                ErrorInfo(type=DeadLettered.__name__, message=run.poison[1], step=run.poison[0]),
            )
        if verdict.status == ExecutionStatus.SUCCEEDED:
            verdict = replace(verdict, result=await self._result(run))
        return verdict

    async def _resume(self, run: _Run) -> None:
        """A redelivered execution reuses the outputs its finished steps kept; the rest run again.

        A step the last delivery left running counts that attempt (so does every
        step of a plan that does not record steps, if that delivery began: it
        may have run it). If its replica finished it after that delivery stopped
        watching, its kept output is used and it does not run again.
        """
        began_before = run.record.deliveries > 0
        for sr in run.record.steps:
            if sr.status == StepStatus.PENDING:
                if began_before and not run.plan.record_steps:
                    # Its state was not recorded: the lost delivery may have run it.
                    sr.attempts += 1
                continue
            interrupted = sr.status == StepStatus.RUNNING
            if interrupted:
                sr.attempts += 1
                if sr.worker_id:  # still running there, maybe: a new call joins it
                    run.prefer[sr.step_id] = sr.worker_id
            if sr.status in (StepStatus.SUCCEEDED, StepStatus.RUNNING) and run.plan.keep_outputs:
                output = await self.store.kept_output(run.record.execution_id, sr.step_id)
                if output is not None:
                    if interrupted:
                        lifecycle.step_ended(sr, StepStatus.SUCCEEDED, time.time())
                    run.outputs[sr.step_id] = self.executor.put(output)
                    run.done[sr.step_id].set()
                    continue
            lifecycle.step_reset(sr)

    async def _answer_from_cache(self, run: _Run) -> None:
        """Answer from the step cache each step whose input the driver holds: the
        pipeline input, and outputs the cache gave it (in dependency order). A
        miss is remembered: the step's replica then only writes its output."""
        known: dict[str, Any] = {}
        hits: list[StepRecord] = []
        for step in run.plan.steps:
            if run.done[step.step_id].is_set() or any(d not in known for d in step.deps):
                continue
            try:
                reads = {r: known[r] for r in step.reads}
                document = step_input(step.input_mapping, run.input, reads)
            except Exception:  # noqa: BLE001 - a mapping that reads nothing: its replica says so
                continue
            output = await self.store.cached(step.task_id, step.package_sha256, document)
            run.looked_up.add(step.step_id)
            if output is None:
                continue
            known[step.step_id] = output
            sr = run.steps[step.step_id]
            now = time.time()
            _mark(sr, StepPhase.QUEUED, _ready_at(run, step, now))
            lifecycle.step_cached(sr, now)
            _mark(sr, StepPhase.CACHED, now)
            _mark(sr, StepPhase.DONE, now)
            hits.append(sr)
            run.outputs[step.step_id] = self.executor.put(output)
            run.done[step.step_id].set()
        if hits:
            self._begin(run, time.time())
            await self._save(run, hits[-1], always=True)

    def _expect(self, run: _Run) -> None:
        """Tell the executor every replica slot the plan's remaining steps will ask
        for (per task version, the most of its steps one stage runs at once)."""
        todo = {s.step_id for s in run.plan.steps if not run.done[s.step_id].is_set()}
        slots = run.plan.slots(todo)
        if slots:
            steps = [s for s in run.plan.steps if s.step_id in todo]
            calls = {keys.set_key(task_id, version): n for (task_id, version), n in slots.items()}
            self.executor.expect(run.record.execution_id, steps, calls)

    async def _step(self, run: _Run, step: PlannedStep) -> None:
        sr = run.steps[step.step_id]
        if run.done[step.step_id].is_set():  # resumed, or answered from the cache
            return
        try:
            for dep in step.deps:
                await run.done[dep].wait()
            if lifecycle.step_blocked(sr, [run.steps[d] for d in step.deps]):
                await self._save(run, sr)
                return
            _mark(sr, StepPhase.QUEUED, _ready_at(run, step, time.time()))
            async with run.slots:
                await self._attempts(run, step, sr)
        finally:
            run.done[step.step_id].set()

    async def _attempts(self, run: _Run, step: PlannedStep, sr: StepRecord) -> None:
        """Try a step until it succeeds, its policy says stop, or it is cancelled."""
        keep_as = keys.step_output_key(run.record.execution_id, step.step_id)
        call = StepCall(
            step.step_id,
            step.reads,
            step.input_mapping,
            run.plan.caching,
            keep_as if run.plan.keep_outputs else None,
            step.policy.timeout,
            keep_as,
            run.record.priority,
            run.prefer.get(step.step_id),
            run.record.execution_id,
            looked_up=step.step_id in run.looked_up,
        )
        args = (run.input_ref, *(run.outputs[r] for r in step.reads))
        cancelled = functools.partial(self.store.cancelled, run.record.execution_id)
        on_start = functools.partial(self._started, run, sr)
        on_wait = functools.partial(self._waiting, run, sr)
        policy = step.policy
        crashes = 0
        while True:
            try:
                outcome, ref = await self.executor.attempt(
                    step, call, args, cancelled, on_start, on_wait
                )
            except Cancelled:
                self._end_step(sr, StepStatus.CANCELLED)
                break
            _note_attempt(sr, outcome)
            call = replace(call, prefer=None)  # only the first attempt joins a lost one's run
            if outcome.ok:
                run.outputs[step.step_id] = ref
                self._end_step(sr, StepStatus.SUCCEEDED)
                break
            crashes += outcome.crashed
            if crashes >= self.max_crashes:
                self._end_step(sr, StepStatus.FAILED)
                run.poison = (
                    step.step_id,
                    f"its replica's process died {crashes} times running it",
                )
                break
            tries = sr.attempts - crashes  # a crash uses no retry: it is a lost delivery
            if not outcome.crashed and not should_retry(tries, policy.retries, outcome.retryable):
                self._end_step(sr, StepStatus.FAILED)
                break
            backoff = compute_backoff(sr.attempts, base=policy.backoff_base, cap=policy.backoff_max)
            if await _cancelled_during(backoff, cancelled):
                self._end_step(sr, StepStatus.CANCELLED)
                break
        run.done[step.step_id].set()  # its dependents go on while its end is written
        await self._save(run, sr)

    async def _waiting(self, run: _Run, sr: StepRecord, phase: StepPhase) -> None:
        """The step's call waits for a replica slot, for ``phase``: marked and written
        (a task's one step too), so the wait shows while it lasts."""
        if _mark(sr, phase, time.time()):
            await self._save(run, sr, always=True)

    async def _started(self, run: _Run, sr: StepRecord, worker: str) -> None:
        """The step's call goes to ``worker``, which has a free slot: its body starts.

        Recorded before the call: a delivery that takes over knows where it runs.
        The first step to start begins the execution (its delivery is counted);
        that write is refused if a cancel ended the execution while queued. A
        later step asks whether the execution was cancelled since it began.
        """
        if run.begun and await self.store.cancelled(run.record.execution_id):
            raise Cancelled(lifecycle.CANCELLED_BY_USER)
        now = time.time()
        first = not run.begun
        lifecycle.step_started(sr, now)
        sr.worker_id = worker
        _mark(sr, StepPhase.RUNNING, now)
        if first:
            self._begin(run, now)
        await self._save(run, sr, always=first)

    def _end_step(self, sr: StepRecord, status: StepStatus) -> None:
        now = time.time()
        lifecycle.step_ended(sr, status, now)
        _mark(sr, StepPhase.DONE, now)

    def _begin(self, run: _Run, now: float) -> None:
        """A step of the execution can run: the execution starts (in this delivery)."""
        if not run.begun:
            run.begun = True
            run.begin_event = lifecycle.start(run.record, now)

    async def _save(self, run: _Run, sr: StepRecord, always: bool = False) -> None:
        """Write the record as it stands and publish the step's change (``always``, or
        if the plan records steps as they go). A write refused because the execution
        was ended meanwhile (a cancel while it was queued) stops the run."""
        if not (always or run.plan.record_steps):
            return
        async with run.saving:  # snapshots land in order, each one whole
            snapshot = run.record.snapshot()
            step = next(s for s in snapshot.steps if s.step_id == sr.step_id)
            event: Event = lifecycle.step_event(snapshot, step, time.time())
            if not run.plan.record_steps and run.begin_event is not None:
                event = run.begin_event  # a task's one step: its execution's change
            if not await self.store.save(snapshot, event):
                raise EndedElsewhere(f"execution {run.record.execution_id} was ended meanwhile")

    async def _result(self, run: _Run) -> Any:
        """The sink step's output (or each sink's), with timings in its summary."""
        sinks = run.plan.sinks
        outputs = await self.executor.get([run.outputs[s] for s in sinks])
        result = outputs[0] if len(sinks) == 1 else dict(zip(sinks, outputs, strict=True))
        summary = result.get("summary") if isinstance(result, dict) else None
        if run.plan.summary_timings and isinstance(summary, dict):
            steps = run.record.steps
            summary["step_times"] = {s.step_id: s.duration for s in steps}
            started = min((s.started_at for s in steps if s.started_at), default=0.0)
            summary["total_time"] = max(s.finished_at or 0 for s in steps) - started
        return result


def _mark(sr: StepRecord, phase: StepPhase, at: float) -> bool:
    """Mark a step's phase, never before its last mark (a redelivery adds to them)."""
    last = sr.phases[-1].at if sr.phases else at
    return sr.mark(phase, max(at, last))


def _ready_at(run: _Run, step: PlannedStep, now: float) -> float:
    """When a step could run: its execution's submission, or its last dependency's end."""
    if not step.deps:
        return run.record.submitted_at
    return max((run.steps[d].finished_at or now) for d in step.deps)


async def _cancelled_during(seconds: float, cancelled: CancelCheck) -> bool:
    """Wait ``seconds`` (a retry's backoff), checking each second whether it was cancelled."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(left, CANCEL_CHECK_S))
        if await cancelled():
            return True
    return False


CANCEL_CHECK_S = 1.0  # a step waiting to retry checks this often whether it was cancelled


async def _all_or_none(coros: list) -> None:
    """Run the steps together; if one raises (Redis lost, say), stop the others, then raise.

    The job then stays pending and is claimed again; no step of this run keeps
    going beside that claim.
    """
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _note_attempt(step: StepRecord, outcome: Outcome) -> None:
    """Record one attempt on its step: where it ran, and its error if it failed."""
    step.attempts += 1
    step.started_at = step.started_at or outcome.started_at  # no replica was had: it tried
    step.worker_id, step.node = outcome.worker_id, outcome.node
    step.cache_hit = outcome.cache_hit
    if outcome.cache_hit and step.phases and step.phases[-1].phase == StepPhase.RUNNING:
        step.phases[-1] = step.phases[-1].model_copy(update={"phase": StepPhase.CACHED})
    step.memory_usage = outcome.memory or step.memory_usage
    step.error = None
    if not outcome.ok:
        step.error = ErrorInfo(
            type=outcome.error_type or "Error",
            message=outcome.error_message or "",
            step=step.step_id,
        )


class _Run:
    """The state of one execution while the driver runs it."""

    def __init__(self, plan: Plan, record: ExecutionRecord, value: Any, input_ref: Any):
        self.plan = plan
        self.record = record
        self.input = value  # the pipeline input, for cache lookups
        self.input_ref = input_ref
        self.steps = {s.step_id: s for s in record.steps}
        self.outputs: dict[str, Any] = {}
        self.done = {s.step_id: asyncio.Event() for s in plan.steps}
        self.slots = asyncio.Semaphore(plan.max_parallel)
        self.saving = asyncio.Lock()
        self.poison: tuple[str, str] | None = None  # (step, why) when it kept killing replicas
        self.prefer: dict[str, str] = {}  # step -> the replica a lost delivery left it on
        self.looked_up: set[str] = set()  # steps the driver found not cached
        self.begun = False  # a step of it could run in this delivery
        self.begin_event: Event | None = None


class LocalExecutor:
    """The in-process twin of the Ray executor: tasks are plain functions, refs are values.

    ``tasks`` maps a task id to ``fn(input_document) -> output`` (or a coroutine
    function). Inputs are mapped as a replica maps them; an exception is
    classified as a replica classifies it (so ``RetryableError`` is retried,
    ``FatalError`` is not).
    """

    def __init__(self, tasks: dict[str, Callable[[Any], Any]]):
        self.tasks = tasks
        self.calls: list[tuple[str, Any]] = []  # (step_id, input) of every attempt
        self.expected: dict[str, dict[str, int]] = {}  # execution -> set key -> slots

    def put(self, value: Any) -> Any:
        return value

    async def get(self, refs: list[Any]) -> list[Any]:
        return list(refs)

    def expect(self, execution_id: str, steps: list[PlannedStep], calls: dict[str, int]) -> None:
        self.expected[execution_id] = dict(calls)

    def forget(self, execution_id: str) -> None:
        pass

    async def attempt(
        self,
        step: PlannedStep,
        call: StepCall,
        args: tuple[Any, ...],
        cancelled: CancelCheck,
        on_start: OnStart | None = None,
        on_wait: OnWait | None = None,
    ) -> tuple[Outcome, Any]:
        if await cancelled():
            raise Cancelled(lifecycle.CANCELLED_BY_USER)
        if on_start is not None:
            await on_start("local")
        started = time.time()
        try:
            document = step_input(
                call.input_mapping, args[0], dict(zip(call.reads, args[1:], strict=True))
            )
            self.calls.append((step.step_id, document))
            output = self.tasks[step.task_id](document)
            if inspect.isawaitable(output):
                output = await output
        except Exception as e:  # noqa: BLE001 - reported as the replica reports it
            return failure("local", started, e, retryable=classify(e), node="local"), None
        return Outcome(True, "local", "local", started, time.time()), output
