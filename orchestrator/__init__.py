"""Worker Task Manager on Ray: the public API.

Task authors import the SDK from here; notebooks use :class:`Client`.
"""

from orchestrator.client import Client
from orchestrator.errors import (
    FatalError,
    OrchestratorError,
    RetryableError,
    TaskError,
    ValidationError,
)
from orchestrator.images import load_image
from orchestrator.sdk import MLTask, SimpleTask, TaskBase
from orchestrator.settings import Settings, load_settings

__all__ = [
    "Client",
    "FatalError",
    "MLTask",
    "OrchestratorError",
    "RetryableError",
    "Settings",
    "SimpleTask",
    "TaskBase",
    "TaskError",
    "ValidationError",
    "load_image",
    "load_settings",
]
