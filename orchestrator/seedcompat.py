"""The seed's SDK import paths, so task packages written for it load unchanged.

Seed packages import ``from tasks.base.task_base import TaskBase`` (or
``SimpleTask``, ``MLTask``, the error classes) and call helpers the seed's
base class had: ``_load_image``, ``validate_input``, ``log_info``/``log_warning``/
``log_error``. :func:`install` puts alias modules ``tasks``, ``tasks.base``,
``tasks.base.task_base`` and ``tasks.base.pipeline_base`` into ``sys.modules``
whose classes derive from :mod:`orchestrator.sdk`, so the loader accepts them.
A real ``tasks`` package (a user's own) is never replaced.

Code-defined pipelines (``BasePipeline``) are JSON pipeline files here; the
alias only lets their imports resolve and says so when one is used.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import threading
import types
from typing import Any

from orchestrator import sdk
from orchestrator.errors import FatalError, PackageError, RetryableError, ValidationError

GUIDE = "docs/migrating.md"
_LOCK = threading.Lock()
_MARK = "__wtm_seed_alias__"  # set on every alias module, to tell them from a real package


class TaskBase(sdk.TaskBase):
    """The seed's ``TaskBase``: this SDK's base class plus the seed's helpers."""

    def _load_image(self, input_data: Any):
        """A BGR image from an input document (``image_path`` or base64 ``image_data``)
        or a source itself (path, ``s3://`` URI, bytes, array), as the seed's helper took."""
        from orchestrator.images import image_from_input, load_image

        if isinstance(input_data, dict):
            return image_from_input(input_data, self.objects)
        return load_image(input_data, self.objects)

    def validate_input(self, input_data: Any) -> bool:
        """Whether the input meets the task.json ``input_schema`` as written (what a
        replica enforces: a pipeline step's input may carry upstream outputs); logs
        why when not."""
        from orchestrator.runner import check, compiled

        schema = compiled(self.metadata.get("input_schema"))
        try:
            check(schema, input_data, f"{self.task_id} input")
        except ValidationError as e:
            self.log_warning(str(e))
            return False
        return True

    def log_info(self, message: str) -> None:
        self.logger.info(message)

    def log_warning(self, message: str) -> None:
        self.logger.warning(message)

    def log_error(self, message: str) -> None:
        self.logger.error(message)

    def log_debug(self, message: str) -> None:
        self.logger.debug(message)


class SimpleTask(TaskBase, sdk.SimpleTask):
    """The seed's ``SimpleTask``: setup on first use, other exceptions retried."""


class MLTask(SimpleTask, sdk.MLTask):
    """The seed's ``MLTask``: ``load_model`` once, then preprocess, predict, postprocess."""


def _unsupported(what: str) -> PackageError:
    return PackageError(
        f"tasks.base.pipeline_base.{what}: code-defined pipelines are not supported; "
        f"write the pipeline as a JSON file and `wtm pipeline register` it (see {GUIDE})"
    )


class BasePipeline:
    """Placeholder for the seed's code-defined pipeline base: using it raises."""

    def __init__(self, *args: Any, **kwargs: Any):
        raise _unsupported(type(self).__name__)


class TaskStep:
    """Placeholder for the seed's pipeline step: using it raises."""

    def __init__(self, *args: Any, **kwargs: Any):
        raise _unsupported("TaskStep")


_TASK_BASE = {
    "TaskBase": TaskBase,
    "SimpleTask": SimpleTask,
    "MLTask": MLTask,
    "RetryableError": RetryableError,
    "FatalError": FatalError,
    "ValidationError": ValidationError,
}
_PIPELINE_BASE = {"BasePipeline": BasePipeline, "TaskStep": TaskStep}


def install() -> bool:
    """Make the seed's ``tasks.base`` imports resolve to this SDK; idempotent.

    Returns False, and changes nothing, when a ``tasks`` package other than the
    alias is loaded or importable.
    """
    with _LOCK:
        loaded = sys.modules.get("tasks")
        if loaded is not None:
            return bool(getattr(loaded, _MARK, False))
        if importlib.util.find_spec("tasks") is not None:
            return False
        tasks = _module("tasks", {})
        base = _module("tasks.base", _TASK_BASE)
        task_base = _module("tasks.base.task_base", _TASK_BASE, package=False)
        pipeline_base = _module("tasks.base.pipeline_base", _PIPELINE_BASE, package=False)
        tasks.base = base
        base.task_base = task_base
        base.pipeline_base = pipeline_base
        for module in (tasks, base, task_base, pipeline_base):
            sys.modules[module.__name__] = module
        return True


def shadowing() -> str | None:
    """Where a real ``tasks`` package that hides the alias lives, if one is loaded."""
    loaded = sys.modules.get("tasks")
    if loaded is None or getattr(loaded, _MARK, False):
        return None
    return str(getattr(loaded, "__file__", None) or list(getattr(loaded, "__path__", [])))


def _module(name: str, names: dict[str, Any], package: bool = True) -> types.ModuleType:
    module = types.ModuleType(name, "Alias of orchestrator.seedcompat for seed task packages.")
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=package)
    if package:
        module.__path__ = []  # a package, but nothing beyond the alias imports from it
    module.__dict__.update(names)
    module.__all__ = list(names)
    setattr(module, _MARK, True)
    return module
