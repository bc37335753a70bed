"""Worker Task Manager on Ray: the public API.

Task authors import the SDK from here; notebooks use :class:`Client` and the
:class:`Job` handles it returns.

Names are imported when first used (PEP 562), so a process that needs one
part (a replica loading a task's SDK, the CLI printing its help) does not pay
for the rest: ``from orchestrator import SimpleTask`` does not import the
client, Redis or Ray.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Each public name and the module that defines it.
_HOMES = {
    "Client": "orchestrator.client",
    "ConflictError": "orchestrator.errors",
    "EnqueueError": "orchestrator.errors",
    "ExecutionFailed": "orchestrator.errors",
    "FatalError": "orchestrator.errors",
    "InputError": "orchestrator.errors",
    "NotFoundError": "orchestrator.errors",
    "OrchestratorError": "orchestrator.errors",
    "RetryableError": "orchestrator.errors",
    "TaskError": "orchestrator.errors",
    "ValidationError": "orchestrator.errors",
    "WaitTimeout": "orchestrator.errors",
    "load_image": "orchestrator.images",
    "Executions": "orchestrator.jobs",
    "Job": "orchestrator.jobs",
    "Steps": "orchestrator.jobs",
    "ExecutionRecord": "orchestrator.models",
    "ExecutionStatus": "orchestrator.models",
    "StepPhase": "orchestrator.models",
    "StepRecord": "orchestrator.models",
    "StepStatus": "orchestrator.models",
    "MLTask": "orchestrator.sdk",
    "SimpleTask": "orchestrator.sdk",
    "TaskBase": "orchestrator.sdk",
    "Settings": "orchestrator.settings",
    "load_settings": "orchestrator.settings",
}

__all__ = [
    "Client",
    "ConflictError",
    "EnqueueError",
    "ExecutionFailed",
    "ExecutionRecord",
    "ExecutionStatus",
    "Executions",
    "FatalError",
    "InputError",
    "Job",
    "MLTask",
    "NotFoundError",
    "OrchestratorError",
    "RetryableError",
    "Settings",
    "SimpleTask",
    "StepPhase",
    "StepRecord",
    "StepStatus",
    "Steps",
    "TaskBase",
    "TaskError",
    "ValidationError",
    "WaitTimeout",
    "load_image",
    "load_settings",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # found once: later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})


if TYPE_CHECKING:  # for type checkers and editors: the names as if imported here
    from orchestrator.client import Client
    from orchestrator.errors import (
        ConflictError,
        EnqueueError,
        ExecutionFailed,
        FatalError,
        InputError,
        NotFoundError,
        OrchestratorError,
        RetryableError,
        TaskError,
        ValidationError,
        WaitTimeout,
    )
    from orchestrator.images import load_image
    from orchestrator.jobs import Executions, Job, Steps
    from orchestrator.models import (
        ExecutionRecord,
        ExecutionStatus,
        StepPhase,
        StepRecord,
        StepStatus,
    )
    from orchestrator.sdk import MLTask, SimpleTask, TaskBase
    from orchestrator.settings import Settings, load_settings
