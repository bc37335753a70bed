"""The Ray executor on its own: one attempt on a real replica actor, through a router
whose replica source is a fixed set (no controller)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from orchestrator.errors import Cancelled, ReplicaUnavailable
from orchestrator.plan import PlannedStep
from orchestrator.policy import StepPolicy
from orchestrator.runtime.caller import Caller
from orchestrator.runtime.calls import StepCall
from orchestrator.runtime.controller import ReplicaActor
from orchestrator.runtime.router import ReplicaView, Router
from tests.conftest import make_task
from tests.helpers import wait_until

BODY = """
import os, pathlib, time
if input_data.get("marker"):
    pathlib.Path(input_data["marker"]).write_text(str(os.getpid()))
if input_data.get("hang"):
    time.sleep(60)
return {"echo": input_data.get("x")}
"""


class OneReplica:
    """A replica source holding one replica, and what it was told."""

    def __init__(self, name: str, handle):
        self.view = ReplicaView(0, {name: handle}, 1)
        self.failures: list[tuple[str, str]] = []

    async def replicas(self, task_id, version, sha256, wait_s=None):
        return self.view

    async def report(self, consumer, demand):
        return {}

    def replica_failed(self, key, name, reason):
        self.failures.append((name, reason))


@pytest.fixture
def replica(client, ray_connected, tmp_path, request):
    """A fresh replica actor of a small task, killed after the test."""
    record, _ = client.register_task(make_task(tmp_path, "caller_probe", BODY))
    name = f"caller-test-{request.node.name}"[:60]
    handle = ReplicaActor.options(name=name, namespace="wtm", max_concurrency=2, num_cpus=0).remote(
        client.settings, record, name
    )
    ray_connected.get(handle.ping.remote())
    yield record, name, handle
    ray_connected.kill(handle)


def step(record, timeout: float = 30) -> PlannedStep:
    policy = StepPolicy(timeout=timeout, retries=0, backoff_base=0, backoff_max=0)
    return PlannedStep(
        step_id="probe",
        task_id=record.task_id,
        version=record.version,
        package_sha256=record.sha256,
        policy=policy,
    )


def attempt(source, planned, document, cancelled=False):
    import ray

    async def go():
        router = Router(source, "test", report_s=3600, wait_s=3600)
        caller = Caller(router)

        async def is_cancelled():
            return cancelled

        async def on_start(worker):  # as the driver's: refuses a call cancelled meanwhile
            if cancelled:
                raise Cancelled("cancelled by a user")

        call = StepCall("probe", timeout=planned.policy.timeout)
        args = (ray.put(document),)
        outcome, ref = await caller.attempt(planned, call, args, is_cancelled, on_start)
        value = await ref if ref is not None else None
        return outcome, value, router.routes

    return asyncio.run(go())


def test_an_attempt_returns_the_outcome_and_a_reference_to_the_output(replica):
    record, name, handle = replica
    outcome, value, routes = attempt(OneReplica(name, handle), step(record), {"x": 7})
    assert outcome.ok and outcome.worker_id == name
    assert value == {"echo": 7}
    assert routes["caller_probe@1.0.0"].demand == 0  # the slot was given back


def test_a_call_past_its_timeout_fails_retryably_and_has_the_replica_replaced(replica):
    record, name, handle = replica
    source = OneReplica(name, handle)
    outcome, value, _ = attempt(source, step(record, timeout=1), {"hang": True})
    assert not outcome.ok and outcome.retryable and value is None
    assert outcome.error_type == "TaskTimeoutError"
    assert "caller_probe" in outcome.error_message and "1s" in outcome.error_message
    assert source.failures == [(name, "a call outlived its timeout of 1s")]


def test_a_replica_killed_mid_call_fails_the_attempt_retryably(replica, tmp_path):
    record, name, handle = replica
    source = OneReplica(name, handle)
    marker = tmp_path / "pid"

    async def kill_when_running():
        pid = int(
            await asyncio.to_thread(wait_until, lambda: marker.exists() and marker.read_text())
        )
        os.kill(pid, signal.SIGKILL)

    import ray

    async def go():
        caller = Caller(Router(source, "test", report_s=3600, wait_s=3600))

        async def no():
            return False

        document = ray.put({"marker": str(marker), "hang": True})
        killer = asyncio.create_task(kill_when_running())
        outcome, _ = await caller.attempt(step(record), StepCall("probe"), (document,), no)
        await killer
        return outcome

    outcome = asyncio.run(go())
    assert not outcome.ok and outcome.retryable
    assert outcome.error_message == f"replica {name} died"
    assert outcome.crashed  # one call at a time: it died of this call
    assert source.failures == [(name, "died")]


def test_an_attempt_stopped_while_it_checks_for_a_cancel_gives_its_slot_back(replica):
    # Its dispatcher lost the lease during a Redis outage: the run is stopped
    # while the check before the call waits for Redis.
    record, name, handle = replica
    planned = step(record)

    async def go():
        router = Router(OneReplica(name, handle), "test", report_s=3600, wait_s=3600)
        caller = Caller(router)
        checking = asyncio.Event()

        async def not_cancelled():
            return False

        async def redis_away(worker):  # the check in on_start, as the driver's
            checking.set()
            await asyncio.Event().wait()  # never answers

        stopped = asyncio.create_task(
            caller.attempt(planned, StepCall("probe"), (None,), not_cancelled, redis_away)
        )
        await checking.wait()
        stopped.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stopped
        # The only slot is free again: the next call takes it at once.
        got, _ = await asyncio.wait_for(router.acquire(planned), timeout=5)
        return got

    assert asyncio.run(go()) == name


def test_a_cancelled_execution_never_reaches_the_replica(replica, tmp_path):
    record, name, handle = replica
    marker = tmp_path / "ran"
    with pytest.raises(Cancelled):
        attempt(OneReplica(name, handle), step(record), {"marker": str(marker)}, cancelled=True)
    assert not marker.exists()


def test_no_replica_able_to_start_is_a_failed_attempt_naming_why(ray_connected):
    class NoReplicas:
        async def replicas(self, task_id, version, sha256, wait_s=None):
            raise ReplicaUnavailable("no replica of t@1 could start: needs 1 GPU")

        async def report(self, consumer, demand):
            return {}

        def replica_failed(self, key, name, reason):
            raise AssertionError("nothing to replace")

    planned = PlannedStep(
        step_id="t",
        task_id="t",
        version="1",
        package_sha256="x",
        policy=StepPolicy(timeout=1, retries=0, backoff_base=0, backoff_max=0),
    )
    outcome, value, _ = attempt(NoReplicas(), planned, {})
    assert not outcome.ok and not outcome.retryable and value is None
    assert outcome.error_type == "ReplicaUnavailable" and "needs 1 GPU" in outcome.error_message
