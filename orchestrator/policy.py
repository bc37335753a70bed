"""Retry, backoff and timeout policy, as pure functions.

The dispatcher asks these questions; it never decides them inline.
"""

from __future__ import annotations

import random

from orchestrator.errors import OrchestratorError, TaskError

BACKOFF_BASE_S = 0.2
BACKOFF_MAX_S = 30.0


def compute_backoff(
    attempt: int,
    *,
    base: float = BACKOFF_BASE_S,
    cap: float = BACKOFF_MAX_S,
    rand: random.Random | None = None,
) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based): full jitter.

    Exponential growth ``base * 2**(attempt-1)`` capped at ``cap``, then a
    uniform draw below it, so a burst of failures does not retry in lockstep.
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
    want = -(-demand // per_replica) if demand > 0 else 0
    want = max(low, min(high, want))
    if want < current and idle_for < idle_timeout:
        return current
    return want
