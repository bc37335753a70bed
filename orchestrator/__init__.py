"""Worker Task Manager on Ray: the public API.

Task authors import the SDK from here; notebooks use :class:`Client` and the
:class:`Job` handles it returns.
"""

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
from orchestrator.models import ExecutionRecord, ExecutionStatus, StepRecord, StepStatus
from orchestrator.sdk import MLTask, SimpleTask, TaskBase
from orchestrator.settings import Settings, load_settings

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
