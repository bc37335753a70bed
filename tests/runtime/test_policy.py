"""The pure policy functions and the Ray options a task's resources become."""

from __future__ import annotations

import random

import pytest

from orchestrator.errors import FatalError, RetryableError, ValidationError
from orchestrator.policy import classify, compute_backoff, desired_replicas, should_retry
from orchestrator.runtime.controller import actor_options
from orchestrator.taskspec import TaskSpec


def test_backoff_grows_exponentially_with_full_jitter_and_a_cap():
    rand = random.Random(7)
    draws = [compute_backoff(n, base=0.5, cap=4.0, rand=rand) for n in range(1, 8)]
    ceilings = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert all(c / 2 <= d <= c for d, c in zip(draws, ceilings, strict=True))
    assert len({round(d, 6) for d in draws}) == len(draws)  # jittered, not lockstep


@pytest.mark.parametrize(
    ("exc", "retryable"),
    [
        (RetryableError("x"), True),
        (FatalError("x"), False),
        (ValidationError("x"), False),
        (KeyError("x"), True),
    ],
)
def test_classify(exc, retryable):
    assert classify(exc) is retryable


def test_should_retry_counts_attempts_against_max_retries():
    assert should_retry(1, 3, True) and should_retry(3, 3, True)
    assert not should_retry(4, 3, True)
    assert not should_retry(1, 3, False)


def test_desired_replicas_scales_up_at_once_and_down_only_when_idle():
    kw = {"low": 0, "high": 2, "per_replica": 1, "idle_timeout": 10}
    assert desired_replicas(current=0, demand=200, idle_for=0, **kw) == 2
    assert desired_replicas(current=2, demand=0, idle_for=5, **kw) == 2  # not idle long enough
    assert desired_replicas(current=2, demand=0, idle_for=11, **kw) == 0
    assert desired_replicas(current=0, demand=0, idle_for=0, **{**kw, "low": 1}) == 1
    assert desired_replicas(current=1, demand=0, idle_for=0, pinned=3, **kw) == 3


def test_resources_become_ray_actor_options():
    spec = TaskSpec.model_validate(
        {
            "task_id": "t",
            "name": "t",
            "version": "1",
            "entry_point": "task.Task",
            "resources": {
                "num_cpus": 2,
                "num_gpus": 0.25,
                "memory": 2**30,
                "custom": {"special_hw": 1},
            },
            "replicas": {"max_concurrency": 4},
            "batch": {"max_size": 16},
            "runtime_env": {"env_vars": {"A": "1"}},
        }
    )
    options = actor_options(spec)
    assert options == {
        "max_concurrency": 16,
        "num_cpus": 2,
        "num_gpus": 0.25,
        "memory": 2**30,
        "resources": {"special_hw": 1},
        "runtime_env": {"env_vars": {"A": "1"}},
    }


def test_a_replica_that_stops_heartbeating_is_shown_dead(tmp_path):
    from orchestrator.models import WorkerRecord
    from orchestrator.records.sqlite import SqliteRecordStore
    from orchestrator.settings import Settings
    from orchestrator.workers import worker_status

    records = SqliteRecordStore(tmp_path / "r.db")
    for name, beat in (("wtm:t@1#0", 100.0), ("wtm:t@1#1", 94.0)):
        records.put_worker(
            WorkerRecord(worker_id=name, task_id="t", version="1", state="idle", heartbeat_at=beat)
        )
    settings = Settings(home=tmp_path, controller={"heartbeat_s": 2})
    states = {w.worker_id: w.state for w in worker_status(records, settings, now=101.0)}
    assert states == {"wtm:t@1#0": "idle", "wtm:t@1#1": "dead"}
