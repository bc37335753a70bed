"""The pure policy functions: a step's timeout and retries, backoff, retry, scaling."""

from __future__ import annotations

import random

import pytest

from orchestrator.errors import FatalError, RetryableError, ValidationError
from orchestrator.plan import Plan, PlannedStep
from orchestrator.policy import (
    Level,
    StepPolicy,
    classify,
    compute_backoff,
    desired_replicas,
    resolve_step_policy,
    scaling_demand,
    should_retry,
)
from orchestrator.settings import StepSettings

DEFAULTS = StepSettings(timeout_s=300, max_retries=3, backoff_base_s=0.5, backoff_max_s=8)


def test_backoff_grows_exponentially_with_equal_jitter_and_a_cap():
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


def test_a_burst_runs_on_the_loaded_replicas_until_it_lasts_the_upscale_delay():
    # 5 calls of a task one replica takes one at a time, one execution needing one slot.
    assert scaling_demand(5, 1, 1, pressed_for=None, upscale_delay=30) == 1
    assert scaling_demand(5, 1, 1, pressed_for=12.0, upscale_delay=30) == 1
    assert scaling_demand(5, 1, 1, pressed_for=30.0, upscale_delay=30) == 5  # it lasted
    # A parallel group of 2 of its steps in one execution: two replicas' worth, at once.
    assert scaling_demand(5, 2, 1, pressed_for=None, upscale_delay=30) == 2
    assert scaling_demand(5, 2, 4, pressed_for=None, upscale_delay=30) == 5  # 2 x 4 slots
    assert scaling_demand(0, 1, 1, pressed_for=None, upscale_delay=30) == 0


def test_a_plan_asks_for_the_most_slots_of_each_task_one_stage_runs_at_once():
    def planned(step_id, task_id, *deps):
        return PlannedStep(
            step_id=step_id,
            task_id=task_id,
            version="1",
            package_sha256="s",
            policy=StepPolicy(timeout=1, retries=0, backoff_base=0, backoff_max=0),
            deps=deps,
        )

    steps = (
        planned("a", "t"),
        planned("b", "u", "a"),
        planned("c", "u", "a"),
        planned("d", "t", "b", "c"),
    )
    plan = Plan(kind="pipeline", target="p", version="1", steps=steps, max_parallel=10)
    assert plan.slots() == {("t", "1"): 1, ("u", "1"): 2}  # b and c run side by side
    assert plan.slots({"d"}) == {("t", "1"): 1}
    assert plan.model_copy(update={"max_parallel": 1}).slots() == {("t", "1"): 1, ("u", "1"): 1}


@pytest.mark.parametrize(
    ("levels", "expected"),
    [
        ({}, (300, 3)),  # nothing set anywhere: the system defaults
        ({"pipeline": Level(7, 0)}, (7, 0)),  # global_settings
        ({"task": Level(40, 1), "pipeline": Level(7, 0)}, (40, 1)),  # the task over them
        ({"override": Level(90, 2), "task": Level(40, 1)}, (90, 2)),  # task_configs over it
        ({"step": Level(5, 4), "override": Level(90, 2), "task": Level(40, 1)}, (5, 4)),
        ({"step": Level(5), "task": Level(40, 1)}, (5, 1)),  # each value on its own
        ({"task": Level(None, 0), "pipeline": Level(7, 2)}, (7, 0)),  # 0 is set, not unset
    ],
)
def test_each_level_of_a_step_policy_wins_over_the_ones_after_it(levels, expected):
    policy = resolve_step_policy(DEFAULTS, **levels)
    assert (policy.timeout, policy.retries) == expected
    assert (policy.backoff_base, policy.backoff_max) == (0.5, 8)


def test_by_default_a_task_gets_as_many_replicas_as_the_cluster_holds():
    from orchestrator.policy import cluster_fit

    assert cluster_fit(cpus=8, gpus=0, num_cpus=None, num_gpus=None) == 8  # one CPU's worth
    assert cluster_fit(cpus=8, gpus=0, num_cpus=0.5, num_gpus=None) == 16
    assert cluster_fit(cpus=8, gpus=2, num_cpus=1, num_gpus=1) == 2  # GPUs bound it
    assert cluster_fit(cpus=1, gpus=0, num_cpus=4, num_gpus=None) == 1  # never none
