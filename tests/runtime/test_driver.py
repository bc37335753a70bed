"""The driver on its own: plans run in process (LocalExecutor) into a MemoryRunStore."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.errors import EndedElsewhere, FatalError, RetryableError
from orchestrator.models import ExecutionRecord, ExecutionStatus, StepPhase, StepStatus
from orchestrator.plan import Plan, PlannedStep
from orchestrator.policy import StepPolicy
from orchestrator.runtime import cache
from orchestrator.runtime import driver as driver_module
from orchestrator.runtime.calls import failure
from orchestrator.runtime.driver import Driver, LocalExecutor
from orchestrator.runtime.store import MemoryRunStore

NO_WAIT = StepPolicy(timeout=30, retries=0, backoff_base=0, backoff_max=0)


def step(step_id: str, *deps: str, retries: int = 0, **extra) -> PlannedStep:
    return PlannedStep(
        step_id=step_id,
        task_id=extra.pop("task_id", step_id),
        version="1",
        package_sha256="sha",
        policy=NO_WAIT.model_copy(update={"retries": retries}),
        deps=deps,
        reads=extra.pop("reads", deps),
        **extra,
    )


def pipeline(*steps: PlannedStep, **extra) -> Plan:
    return Plan(
        kind="pipeline",
        target="p",
        version="1",
        steps=steps,
        max_parallel=extra.pop("max_parallel", 10),
        record_steps=True,
        keep_outputs=True,
        name_failed_step=True,
        summary_timings=True,
        **extra,
    )


def record(plan: Plan, execution_id: str = "E1") -> ExecutionRecord:
    return ExecutionRecord(
        execution_id=execution_id,
        kind=plan.kind,
        pipeline_id=plan.target,
        status=ExecutionStatus.RUNNING,
        submitted_at=0.0,
        steps=plan.pending_steps(),
    )


def drive(plan: Plan, tasks: dict, document=None, rec=None, store=None):
    store = store or MemoryRunStore()
    executor = LocalExecutor(tasks)
    rec = rec or record(plan)
    verdict = asyncio.run(Driver(executor, store).run(plan, document or {}, rec))
    return verdict, rec, store, executor


def statuses(rec: ExecutionRecord) -> dict[str, str]:
    return {s.step_id: s.status.value for s in rec.steps}


def test_outputs_flow_along_dependencies_and_the_sink_is_the_result():
    plan = pipeline(step("a"), step("b", "a", input_mapping={"n": "$.a.n", "user": "$.input.user"}))
    verdict, rec, store, _ = drive(
        plan,
        {"a": lambda d: {"n": 2}, "b": lambda d: {"twice": d["n"] * 2, "by": d["user"]}},
        {"user": "ada"},
    )
    assert verdict.status == ExecutionStatus.SUCCEEDED
    assert verdict.result == {"twice": 4, "by": "ada"}
    assert statuses(rec) == {"a": "succeeded", "b": "succeeded"}
    # Each step's change was recorded and published in order, as whole snapshots.
    assert [(e.step_id, e.step_status.value) for e in store.events] == [
        ("a", "running"),
        ("a", "succeeded"),
        ("b", "running"),
        ("b", "succeeded"),
    ]
    assert store.saved[0].steps[1].status == StepStatus.PENDING  # a snapshot, not the live record


def test_a_task_plan_writes_its_record_once_when_its_step_starts():
    plan = Plan(kind="task", target="t", version="1", steps=(step("t"),))
    rec = record(plan).model_copy(update={"status": ExecutionStatus.QUEUED})
    verdict, rec, store, _ = drive(plan, {"t": lambda d: {"ok": True}}, rec=rec)
    assert verdict.result == {"ok": True}
    # One write: the execution running, its step started; the end is the dispatcher's.
    [started] = store.saved
    assert started.status == ExecutionStatus.RUNNING and started.deliveries == 1
    assert started.steps[0].status == StepStatus.RUNNING and started.steps[0].started_at
    assert [e.status for e in store.events] == [ExecutionStatus.RUNNING]
    assert rec.steps[0].attempts == 1


def test_a_retryable_error_is_tried_again_within_the_policy():
    calls = []

    def flaky(document):
        calls.append(1)
        if len(calls) < 3:
            raise RetryableError("warming up")
        return {"calls": len(calls)}

    verdict, rec, _, _ = drive(pipeline(step("f", retries=3)), {"f": flaky})
    assert verdict.result == {"calls": 3} and rec.steps[0].attempts == 3


def test_retries_run_out():
    def always(document):
        raise RetryableError("still down")

    verdict, rec, _, _ = drive(pipeline(step("f", retries=1)), {"f": always})
    assert verdict.status == ExecutionStatus.FAILED and rec.steps[0].attempts == 2


def test_a_fatal_error_is_not_retried_and_skips_the_dependents_naming_the_step():
    def broken(document):
        raise FatalError("model file corrupt")

    plan = pipeline(step("a"), step("b", "a", retries=5), step("c", "b"))
    verdict, rec, _, executor = drive(plan, {"a": lambda d: {}, "b": broken, "c": lambda d: {}})
    assert statuses(rec) == {"a": "succeeded", "b": "failed", "c": "skipped"}
    assert rec.steps[1].attempts == 1
    assert verdict.error.step == "b"
    assert verdict.error.message == "step 'b' failed: FatalError: model file corrupt"
    assert [name for name, _ in executor.calls] == ["a", "b"]


def test_a_cancelled_execution_starts_no_step_and_cancels_the_rest():
    store = MemoryRunStore()
    store.cancel_requests.add("E1")
    plan = pipeline(step("a"), step("b", "a"))
    verdict, rec, _, executor = drive(plan, {"a": lambda d: {}, "b": lambda d: {}}, store=store)
    assert verdict.status == ExecutionStatus.CANCELLED
    assert statuses(rec) == {"a": "cancelled", "b": "cancelled"}
    assert executor.calls == []


def test_a_claimed_execution_reuses_kept_outputs_and_reruns_interrupted_steps():
    plan = pipeline(step("a"), step("b", "a"), step("c", "b"))
    rec = record(plan)
    rec.steps[0].status = StepStatus.SUCCEEDED  # kept its output
    rec.steps[1].status = StepStatus.RUNNING  # interrupted mid-step
    store = MemoryRunStore()
    store.kept[("E1", "a")] = {"kept": True}
    verdict, rec, _, executor = drive(
        plan,
        {"a": lambda d: {"ran": "again"}, "b": lambda d: d["a"], "c": lambda d: d["b"]},
        rec=rec,
        store=store,
    )
    assert verdict.result == {"kept": True}
    assert [name for name, _ in executor.calls] == ["b", "c"]
    assert [s.attempts for s in rec.steps] == [0, 2, 1]  # b's lost attempt counts


def test_a_step_its_replica_finished_after_the_delivery_died_is_not_run_again():
    plan = pipeline(step("a"), step("b", "a"))
    rec = record(plan)
    rec.steps[0].status = StepStatus.RUNNING  # the delivery died; the replica kept going
    store = MemoryRunStore()
    store.kept[("E1", "a")] = {"finished": "on the replica"}
    verdict, rec, _, executor = drive(
        plan, {"a": lambda d: {"ran": "again"}, "b": lambda d: d["a"]}, rec=rec, store=store
    )
    assert verdict.result == {"finished": "on the replica"}
    assert [name for name, _ in executor.calls] == ["b"]
    assert statuses(rec) == {"a": "succeeded", "b": "succeeded"}


def test_a_redelivered_task_run_counts_the_attempt_the_lost_delivery_may_have_made():
    plan = Plan(kind="task", target="t", version="1", steps=(step("t"),))
    rec = record(plan)
    rec.deliveries = 2  # taken up again: its one step's state was never recorded
    _, rec, _, _ = drive(plan, {"t": lambda d: {"ok": True}}, rec=rec)
    assert rec.steps[0].attempts == 2


def test_a_finished_step_without_a_kept_output_runs_again():
    plan = pipeline(step("a"), step("b", "a"))
    rec = record(plan)
    rec.steps[0].status = StepStatus.SUCCEEDED
    verdict, _, _, executor = drive(plan, {"a": lambda d: {"v": 1}, "b": lambda d: d["a"]}, rec=rec)
    assert verdict.result == {"v": 1}
    assert [name for name, _ in executor.calls] == ["a", "b"]


def in_flight_probe():
    """Async task bodies that record how many of them run at once."""
    state = {"now": 0, "most": 0}

    async def body(document):
        state["now"] += 1
        state["most"] = max(state["most"], state["now"])
        await asyncio.sleep(0.01)  # yield, so siblings that may run can start
        state["now"] -= 1
        return {}

    return state, body


@pytest.mark.parametrize(("max_parallel", "most"), [(1, 1), (10, 3)])
def test_a_parallel_group_is_in_flight_together_within_max_parallel(max_parallel, most):
    state, body = in_flight_probe()
    plan = pipeline(*(step(n) for n in ("x", "y", "z")), max_parallel=max_parallel)
    verdict, _, _, _ = drive(plan, {"x": body, "y": body, "z": body})
    assert verdict.status == ExecutionStatus.SUCCEEDED
    assert state["most"] == most


def test_two_sinks_make_a_result_per_sink():
    plan = pipeline(step("a"), step("b", "a"), step("c", "a"))
    verdict, _, _, _ = drive(plan, {"a": lambda d: {}, "b": lambda d: {"b": 1}, "c": lambda d: {}})
    assert verdict.result == {"b": {"b": 1}, "c": {}}


def test_a_results_summary_gets_each_steps_time_and_the_total():
    plan = pipeline(step("a"), step("merge", "a"))
    verdict, rec, _, _ = drive(plan, {"a": lambda d: {}, "merge": lambda d: {"summary": {"n": 1}}})
    summary = verdict.result["summary"]
    assert summary["n"] == 1
    assert summary["step_times"] == {s.step_id: s.duration for s in rec.steps}
    assert summary["total_time"] >= max(summary["step_times"].values())


def test_a_cancel_between_steps_lets_the_running_step_finish_and_starts_no_other():
    store = MemoryRunStore()

    def first(document):
        store.cancel_requests.add("E1")  # the user cancels while the first step runs
        return {"done": True}

    plan = pipeline(step("a"), step("b", "a"), step("c", "b"))
    verdict, rec, _, executor = drive(
        plan, {"a": first, "b": lambda d: {}, "c": lambda d: {}}, store=store
    )
    assert verdict.status == ExecutionStatus.CANCELLED
    assert statuses(rec) == {"a": "succeeded", "b": "cancelled", "c": "cancelled"}
    assert [name for name, _ in executor.calls] == ["a"]


def test_an_error_outside_the_steps_stops_every_step_of_the_run_and_is_raised():
    sibling = {"cancelled": False}

    async def waits_forever(document):
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            sibling["cancelled"] = True
            raise

    class LostStore(MemoryRunStore):
        async def save(self, record, event):
            if len(self.events) >= 2:  # both steps started; then the store goes away
                raise ConnectionError("redis went away")
            return await super().save(record, event)

    plan = pipeline(step("slow"), step("other"))  # independent: in flight together
    with pytest.raises(ConnectionError, match="redis went away"):
        drive(plan, {"slow": waits_forever, "other": lambda d: {}}, store=LostStore())
    assert sibling["cancelled"]  # nothing of this run keeps going beside a later claim


class DyingReplicas(LocalExecutor):
    """Each attempt's replica dies under it, reported as the Ray executor reports it:
    ``crashed`` when the replica took only that call."""

    def __init__(self, crashed: bool):
        super().__init__({})
        self.crashed = crashed

    async def attempt(self, step, call, args, cancelled, on_start=None, on_wait=None):
        self.calls.append((step.step_id, None))
        outcome = failure("r#0", 0.0, RuntimeError("died"), retryable=True)
        outcome.crashed = self.crashed
        return outcome, None


def test_a_step_that_crashes_its_replica_every_time_is_a_poison_job():
    plan = pipeline(step("a"), step("b", "a"))  # no retries: crashes use none
    rec, executor = record(plan), DyingReplicas(crashed=True)

    verdict = asyncio.run(Driver(executor, MemoryRunStore(), max_crashes=3).run(plan, {}, rec))

    assert verdict.status == ExecutionStatus.DEAD_LETTERED
    assert verdict.error.step == "a" and "died 3 times" in verdict.error.message
    assert [s for s, _ in executor.calls] == ["a", "a", "a"]
    assert [s.status for s in rec.steps] == [StepStatus.FAILED, StepStatus.SKIPPED]


def test_a_replica_death_that_may_not_be_the_calls_own_is_an_ordinary_failure():
    plan = pipeline(step("a", retries=1))
    rec, executor = record(plan), DyingReplicas(crashed=False)

    verdict = asyncio.run(Driver(executor, MemoryRunStore(), max_crashes=3).run(plan, {}, rec))

    assert verdict.status == ExecutionStatus.FAILED  # its retries ran out, no dead letter
    assert len(executor.calls) == 2


def test_a_step_waiting_out_a_long_retry_backoff_is_cancelled_where_it_waits(monkeypatch):
    monkeypatch.setattr(driver_module, "CANCEL_CHECK_S", 0.05)
    store = MemoryRunStore()

    def failing_then_cancelled(document):
        store.cancel_requests.add("E1")  # the user cancels while it waits to retry
        raise RetryableError("try later")

    slow = step("f", retries=3).model_copy(
        update={
            "policy": NO_WAIT.model_copy(
                update={"retries": 3, "backoff_base": 3600, "backoff_max": 3600}
            )
        }
    )
    plan = pipeline(slow)
    rec = record(plan)
    driver = Driver(LocalExecutor({"f": failing_then_cancelled}), store)

    # An hour's backoff: only a cancel seen during the wait ends this run in time.
    verdict = asyncio.run(asyncio.wait_for(driver.run(plan, {}, rec), timeout=30))

    assert verdict.status == ExecutionStatus.CANCELLED
    assert rec.steps[0].status == StepStatus.CANCELLED and rec.steps[0].attempts == 1


# Warm when it matters: the cache without replicas, plans that ask ahead, named waits ----


def test_cached_steps_are_answered_by_the_driver_without_asking_a_replica():
    plan = pipeline(step("a"), step("b", "a", input_mapping={"n": "$.a.n"}), caching=True)
    store = MemoryRunStore()
    store.cache[cache.key_of("a", "sha", {"x": 1})] = {"n": 2}
    store.cache[cache.key_of("b", "sha", {"n": 2})] = {"twice": 4}
    rec = record(plan).model_copy(update={"status": ExecutionStatus.QUEUED})

    verdict, rec, store, executor = drive(plan, {}, {"x": 1}, rec=rec, store=store)

    assert verdict.status == ExecutionStatus.SUCCEEDED and verdict.result == {"twice": 4}
    assert executor.calls == [] and executor.expected == {}  # no replica asked for
    assert all(s.cache_hit and s.worker_id is None for s in rec.steps)
    assert [m.phase for m in rec.steps[1].phases] == [
        StepPhase.QUEUED,
        StepPhase.CACHED,
        StepPhase.DONE,
    ]
    assert rec.status == ExecutionStatus.RUNNING and rec.deliveries == 1  # it began


def test_a_step_whose_input_only_a_replica_sees_is_looked_up_there():
    plan = pipeline(step("a"), step("b", "a", input_mapping={"n": "$.a.n"}), caching=True)
    store = MemoryRunStore()
    store.cache[cache.key_of("b", "sha", {"n": 2})] = {"twice": 4}  # a ran: not cached
    calls: list = []

    class Recording(LocalExecutor):
        async def attempt(self, step, call, *args, **kwargs):
            calls.append((step.step_id, call.looked_up))
            return await super().attempt(step, call, *args, **kwargs)

    executor = Recording({"a": lambda d: {"n": 2}, "b": lambda d: {"twice": d["n"] * 2}})
    asyncio.run(Driver(executor, store).run(plan, {"x": 1}, record(plan)))
    # a: the driver looked and missed (its replica only writes); b: the replica looks.
    assert calls == [("a", True), ("b", False)]


def test_a_plan_taken_up_asks_for_every_stage_at_once():
    group = (step("b", "a", task_id="pair"), step("c", "a", task_id="pair"))
    plan = pipeline(step("a"), *group, step("d", "b", "c"))
    tasks = {"a": lambda d: {}, "pair": lambda d: {}, "d": lambda d: {}}
    _, _, _, executor = drive(plan, tasks)
    assert executor.expected == {"E1": {"a@1": 1, "pair@1": 2, "d@1": 1}}


class WaitsFirst(LocalExecutor):
    """Each call waits for its replica's model to load, then for a busy slot, before it
    starts; what the record said at each moment is kept."""

    def __init__(self, tasks, store):
        super().__init__(tasks)
        self.store = store
        self.seen: list[tuple[str, str | None, float | None]] = []

    async def attempt(self, step, call, args, cancelled, on_start=None, on_wait=None):
        for phase in (StepPhase.LOADING, StepPhase.BUSY):
            await on_wait(phase)
            last = self.store.saved[-1]
            self.seen.append((last.status.value, last.steps[0].phase, last.steps[0].started_at))
        return await super().attempt(step, call, args, cancelled, on_start, on_wait)


def test_a_waiting_step_is_recorded_with_why_and_its_execution_stays_queued():
    plan = Plan(kind="task", target="t", version="1", steps=(step("t"),))
    store = MemoryRunStore()
    executor = WaitsFirst({"t": lambda d: {"ok": True}}, store)
    rec = record(plan).model_copy(update={"status": ExecutionStatus.QUEUED})
    asyncio.run(Driver(executor, store).run(plan, {}, rec))

    assert executor.seen == [("queued", "loading", None), ("queued", "busy", None)]
    started = store.saved[-1]  # the write when its body started
    assert started.status == ExecutionStatus.RUNNING and started.deliveries == 1
    assert started.steps[0].started_at is not None
    assert [m.phase.value for m in rec.steps[0].phases] == [
        "queued",
        "loading",
        "busy",
        "running",
        "done",
    ]
    assert [w[0] for w in rec.steps[0].waits()] == [StepPhase.LOADING, StepPhase.BUSY]


def test_an_execution_cancelled_while_its_step_waited_stops_without_running():
    plan = Plan(kind="task", target="t", version="1", steps=(step("t"),))
    store = MemoryRunStore()
    store.ended.add("E1")  # a cancel ended its record while it waited for a replica
    ran: list = []
    rec = record(plan).model_copy(update={"status": ExecutionStatus.QUEUED})
    executor = WaitsFirst({"t": lambda d: ran.append(d)}, store)
    with pytest.raises(EndedElsewhere):
        asyncio.run(Driver(executor, store).run(plan, {}, rec))
    assert ran == []
