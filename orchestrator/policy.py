"""Step and scaling policy, as pure functions.

Which timeout and how many retries a step gets, how long to wait between
tries, whether a failure is worth another try, and how many replicas a set
wants: the dispatcher, driver and controller ask these questions; none of
them decides inline.
"""

from __future__ import annotations

import random
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict

from orchestrator.errors import OrchestratorError, TaskError
from orchestrator.settings import StepSettings


class Level(NamedTuple):
    """What one source of configuration says of a step; None means it says nothing."""

    timeout: float | None = None
    retries: int | None = None


class StepPolicy(BaseModel):
    """How one step runs: its hard timeout, its retries, and the backoff between tries."""

    model_config = ConfigDict(frozen=True)
    timeout: float
    retries: int
    backoff_base: float
    backoff_max: float


def resolve_step_policy(
    defaults: StepSettings,
    *,
    step: Level = Level(),
    override: Level = Level(),
    task: Level = Level(),
    pipeline: Level = Level(),
) -> StepPolicy:
    """A step's policy: the first source that sets a value wins, in this order.

    1. ``step``: the pipeline step's ``timeout`` / ``retry_count``;
    2. ``override``: the operator's ``worker.task_configs`` for the task;
    3. ``task``: the task's own ``task.json`` (``timeout`` / ``max_retries``);
    4. ``pipeline``: the pipeline's ``global_settings`` defaults;
    5. ``defaults``: the system's (``settings.steps``).

    "Unset" is None at every level, never a default filled in early, so a
    pipeline's defaults reach a task that sets nothing of its own.
    """
    levels = (step, override, task, pipeline)
    return StepPolicy(
        timeout=_first([lv.timeout for lv in levels], defaults.timeout_s),
        retries=_first([lv.retries for lv in levels], defaults.max_retries),
        backoff_base=defaults.backoff_base_s,
        backoff_max=defaults.backoff_max_s,
    )


def _first(values: list, fallback):
    return next((v for v in values if v is not None), fallback)


def compute_backoff(
    attempt: int, *, base: float, cap: float, rand: random.Random | None = None
) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based), with equal jitter.

    Exponential growth ``base * 2**(attempt-1)`` capped at ``cap``, then a
    uniform draw from its upper half: never less than half the step, and a
    burst of failures does not retry in lockstep.
    """
    ceiling = min(cap, base * (2 ** max(attempt - 1, 0)))
    return (rand or random).uniform(ceiling / 2, ceiling)


def should_retry(attempt: int, max_retries: int, retryable: bool) -> bool:
    """Attempt ``attempt`` failed: is there another one?"""
    return retryable and attempt <= max_retries


def classify(exc: BaseException) -> bool:
    """Retryable flag for an exception raised by task code."""
    if isinstance(exc, TaskError):
        return exc.retryable
    # Bad input or a bad package reads the same on every try; unknown errors
    # may be transient, and max_retries bounds them.
    return not isinstance(exc, OrchestratorError)


def cluster_fit(cpus: float, gpus: float, num_cpus: float | None, num_gpus: float | None) -> int:
    """The default ``replicas.max``: how many replicas the cluster's CPUs (and GPUs, for a
    task that asks for them) hold, at least one. A replica that names no ``num_cpus``
    counts as one CPU's worth, the share Ray gives it to be placed."""
    fits = cpus / (num_cpus or 1.0)
    if num_gpus:
        fits = min(fits, gpus / num_gpus)
    return max(1, int(fits))


def replicas_for(demand: int, per_replica: int) -> int:
    """Replicas that ``demand`` calls (waiting or running) fill, ``per_replica`` at a time."""
    return -(-demand // per_replica) if demand > 0 else 0


def scaling_demand(
    demand: int, width: int, per_replica: int, pressed_for: float | None, upscale_delay: float
) -> int:
    """The demand a set is sized for now.

    ``width`` is the most slots one running execution asks for at once (a
    parallel group of k steps of the task: k): that many replicas' worth is
    wanted at once, so one execution never waits on itself. More than that
    only once demand has exceeded the set's replicas for ``upscale_delay``
    seconds (``pressed_for``; None: it has not), as Ray Serve's autoscaler
    waits before it scales up: a short burst runs on the replicas already
    loaded instead of loading more.
    """
    if pressed_for is not None and pressed_for >= upscale_delay:
        return demand
    return min(demand, max(width, 1 if demand else 0) * per_replica)


def desired_replicas(
    *,
    current: int,
    demand: int,
    low: int,
    high: int,
    per_replica: int,
    idle_for: float,
    idle_timeout: float,
    pinned: int | None = None,
) -> int:
    """How many replicas a set should have.

    ``demand`` is the number of calls waiting for or running on the set. Scale
    up at once to cover it (within ``low..high``); scale down only after the
    set has needed fewer replicas for ``idle_timeout`` seconds. ``pinned``
    (from `wtm worker scale`) overrides everything.
    """
    if pinned is not None:
        return pinned
    want = max(low, min(high, replicas_for(demand, per_replica)))
    if want < current and idle_for < idle_timeout:
        return current
    return want
