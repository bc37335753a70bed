"""What passes between the driver and a replica: one step's call and its outcome.

Plain data with no Ray in it, so the driver and its in-process twin share it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from orchestrator.models import StepPhase

#: Asked right before a step's call: True means its execution was cancelled.
CancelCheck = Callable[[], Awaitable[bool]]

#: Told which replica a step's call goes to, right before it is sent.
OnStart = Callable[[str], Awaitable[None]]

#: Told why a step's call waits for a replica slot, each time the reason changes.
OnWait = Callable[[StepPhase], Awaitable[None]]


@dataclass(frozen=True)
class StepCall:
    """How a replica builds one step's input, and whether it may cache or keep the output."""

    step_id: str
    reads: tuple[str, ...] = ()
    input_mapping: dict[str, str] | None = None
    cache: bool = False
    keep_as: str | None = None  # object key to keep the output under, for resuming
    timeout: float | None = None  # seconds from the call's start on its replica
    call_key: str | None = None  # one execution's step: a redelivered call joins a running one
    priority: int = 5  # the execution's: orders the wait for a replica slot
    prefer: str | None = None  # the replica a lost delivery left running it: join it there
    execution_id: str | None = None  # named on the lines the task logs during the call
    looked_up: bool = False  # the driver found no cached output: the replica need not look


@dataclass
class Outcome:
    """What one attempt produced: success or an error, and where it ran.

    A replica never raises into Ray: the dispatcher sees the task's own error
    type and whether it is retryable, without unpickling user exception classes.
    """

    ok: bool
    worker_id: str
    node: str
    started_at: float
    finished_at: float
    result: Any = None
    error_type: str | None = None
    error_message: str | None = None
    retryable: bool = False
    broken: bool = False  # the replica could not load its task
    hung: bool = False  # the call outlived its timeout: its replica must be replaced
    over_memory: bool = False  # the replica passed its memory limit: it must be replaced
    crashed: bool = False  # the replica's process died during the call
    memory: int | None = None  # the replica's peak resident memory during the call
    cache_hit: bool = False


def failure(
    worker: str,
    started: float,
    error: BaseException,
    *,
    retryable: bool = False,
    message: str | None = None,
    node: str = "",
) -> Outcome:
    """An outcome for an attempt that failed, from the exception that ended it."""
    return Outcome(
        False,
        worker,
        node,
        started,
        time.time(),
        error_type=type(error).__name__,
        error_message=message or str(error),
        retryable=retryable,
    )
