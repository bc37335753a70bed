"""The router on its own: least-loaded routing within max_concurrency, refreshes, reports."""

from __future__ import annotations

import asyncio

from orchestrator.models import StepPhase
from orchestrator.plan import PlannedStep
from orchestrator.policy import StepPolicy
from orchestrator.runtime.router import ReplicaView, Router

POLICY = StepPolicy(timeout=30, retries=0, backoff_base=0, backoff_max=0)


def step(sha: str = "sha1") -> PlannedStep:
    return PlannedStep(step_id="t", task_id="t", version="1", package_sha256=sha, policy=POLICY)


class Replicas:
    """An in-memory replica source: a fixed set of named handles, and what it was told."""

    def __init__(self, names: list[str], limit: int = 1):
        self.view = ReplicaView(0, {n: f"handle-{n}" for n in names}, limit)
        self.fetches: list[str | None] = []
        self.failures: list[tuple[str, str]] = []
        self.generations: dict[str, int] = {}

    async def replicas(self, task_id, version, sha256, wait_s=None):
        self.fetches.append(sha256)
        return self.view

    async def report(self, consumer, demand):
        self.demand = demand
        return self.generations

    def replica_failed(self, key, name, reason):
        self.failures.append((name, reason))


def router(source: Replicas) -> Router:
    return Router(source, "test-consumer", report_s=3600, wait_s=3600)


def test_calls_go_to_the_least_loaded_replica_and_wait_when_all_are_full():
    async def scenario():
        source = Replicas(["r0", "r1"], limit=1)
        r = router(source)
        first, second = await r.acquire(step()), await r.acquire(step())
        assert {first[0], second[0]} == {"r0", "r1"}
        third = asyncio.create_task(r.acquire(step()))
        for _ in range(5):  # the loop runs the waiting call: it finds no free slot
            await asyncio.sleep(0)
        assert not third.done()
        assert r.routes["t@1"].demand == 3  # waiting calls count as demand
        r.release(step(), second[0])
        name, _ = await asyncio.wait_for(third, 5)  # woken by the release, not a timer
        assert name == second[0]
        assert source.fetches == ["sha1"]  # handles were cached after the first fetch

    asyncio.run(scenario())


def test_concurrency_limit_comes_from_the_set():
    async def scenario():
        r = router(Replicas(["r0"], limit=3))
        names = [(await r.acquire(step()))[0] for _ in range(3)]
        assert names == ["r0"] * 3
        assert r.routes["t@1"].outstanding == {"r0": 3}

    asyncio.run(scenario())


def test_new_code_or_a_failed_replica_makes_the_router_fetch_again():
    async def scenario():
        source = Replicas(["r0", "r1"])
        r = router(source)
        name, _ = await r.acquire(step())
        r.failed(step(), name, "timeout")
        r.release(step(), name)
        assert source.failures == [(name, "timeout")]
        assert name not in r.routes["t@1"].handles
        await r.acquire(step())  # stale after the failure: fetched again
        await r.acquire(step("sha2"))  # re-registered with --force: new replicas
        assert source.fetches == ["sha1", "sha1", "sha2"]

    asyncio.run(scenario())


def test_a_report_marks_the_sets_that_changed_since_they_were_fetched():
    async def scenario():
        source = Replicas(["r0"])
        r = router(source)
        name, _ = await r.acquire(step())
        await r.report()
        assert source.demand == {"t@1": [1, 1]} and not r.routes["t@1"].stale  # [calls, width]
        source.generations = {"t@1": 7}
        await r.report()
        assert r.routes["t@1"].stale
        r.release(step(), name)
        await r.report()
        assert source.demand == {"t@1": [0, 1]}

    asyncio.run(scenario())


def in_line(r: Router, order: list[str]):
    """A call that waits for a slot at a priority, notes its turn in ``order``, then leaves."""

    async def wait(label: str, priority: int):
        name, _ = await r.acquire(step(), priority)
        order.append(label)
        r.release(step(), name)

    return wait


def test_a_free_slot_goes_to_the_highest_priority_waiting_then_the_earliest():
    async def scenario():
        r = router(Replicas(["r0"], limit=1))
        busy, _ = await r.acquire(step())
        order: list[str] = []
        wait = in_line(r, order)

        waiters = []
        for label, priority in [("low-1", 1), ("low-2", 1), ("high", 9), ("low-3", 1)]:
            waiters.append(asyncio.create_task(wait(label, priority)))
            for _ in range(3):  # each is in line before the next arrives
                await asyncio.sleep(0)
        r.release(step(), busy)
        await asyncio.wait_for(asyncio.gather(*waiters), 5)
        assert order == ["high", "low-1", "low-2", "low-3"]
        assert r.routes["t@1"].waiting == [] and r.routes["t@1"].demand == 0

    asyncio.run(scenario())


def test_a_long_wait_outranks_a_higher_priority_that_just_arrived(monkeypatch):
    from orchestrator.runtime import router as router_module

    clock = [1000.0]
    monkeypatch.setattr(router_module.time, "monotonic", lambda: clock[0])

    async def scenario():
        r = router(Replicas(["r0"], limit=1))
        busy, _ = await r.acquire(step())
        order: list[str] = []
        wait = in_line(r, order)

        old = asyncio.create_task(wait("priority 1, waiting 90 s", 1))
        await asyncio.sleep(0)
        clock[0] += 90  # nine levels of aging: 1 + 9 > 9
        new = asyncio.create_task(wait("priority 9, just in", 9))
        await asyncio.sleep(0)
        r.release(step(), busy)
        await asyncio.wait_for(asyncio.gather(old, new), 5)
        assert order == ["priority 1, waiting 90 s", "priority 9, just in"]

    asyncio.run(scenario())


def test_a_call_a_lost_delivery_left_on_a_replica_goes_back_to_that_replica():
    async def scenario():
        source = Replicas(["r0", "r1"], limit=1)
        r = router(source)
        busy, _ = await r.acquire(step(), prefer="r1")  # least loaded would do as well...
        assert busy == "r1"
        again = asyncio.create_task(r.acquire(step(), prefer="r1"))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not again.done()  # ...but now r0 is free and it still waits for r1
        r.release(step(), "r1")
        assert (await asyncio.wait_for(again, 5))[0] == "r1"
        gone, _ = await r.acquire(step(), prefer="r9")  # not in the set: any replica
        assert gone == "r0"

    asyncio.run(scenario())


class Cold(Replicas):
    """A set with no replica ready: each ask says what it waits for, in turn."""

    def __init__(self, phases: list[StepPhase]):
        super().__init__([])
        self.phases = phases
        self.reports: list[dict] = []

    async def replicas(self, task_id, version, sha256, wait_s=None):
        self.fetches.append(sha256)
        if self.phases:
            return ReplicaView(0, {}, 1, self.phases.pop(0))
        return ReplicaView(1, {"r0": "handle-r0"}, 1)

    async def report(self, consumer, demand):
        self.reports.append(demand)
        return {}


def test_a_call_that_waits_says_why_each_time_it_changes():
    async def scenario():
        source = Cold([StepPhase.STARTING, StepPhase.LOADING, StepPhase.LOADING])
        r = Router(source, "test", report_s=3600, wait_s=0.01)
        told: list[StepPhase] = []

        async def on_wait(phase):
            told.append(phase)

        name, _ = await r.acquire(step(), on_wait=on_wait)
        busy = asyncio.create_task(r.acquire(step(), on_wait=on_wait))
        for _ in range(5):
            await asyncio.sleep(0)
        r.release(step(), name)
        await asyncio.wait_for(busy, 5)
        assert told == [StepPhase.STARTING, StepPhase.LOADING, StepPhase.BUSY]

    asyncio.run(scenario())


def test_a_plan_taken_up_is_demand_at_once_until_its_calls_come():
    async def scenario():
        source = Cold([])
        r = Router(source, "test", report_s=3600, wait_s=3600)
        plan_steps = [step()]
        r.expect("E1", plan_steps, {"t@1": 2})
        await asyncio.sleep(0.01)  # the report that was due at once
        assert source.reports == [{"t@1": [2, 2]}]  # two slots, both for one execution
        name, _ = await r.acquire(step(), execution_id="E1")
        assert r.routes["t@1"].wanted == 2  # one call here, one still to come
        r.release(step(), name)
        r.forget("E1")
        assert r.routes["t@1"].wanted == 0

    asyncio.run(scenario())
