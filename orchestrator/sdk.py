"""The task SDK: the base classes a task package's entry point derives from.

A replica builds the task once, calls :meth:`TaskBase.ensure_ready` once (that
is where models load), then calls :meth:`TaskBase.run` for every job.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from typing import Any

from orchestrator.errors import OrchestratorError, RetryableError, TaskError


class TaskBase(ABC):
    """A unit of work: ``process(input_data) -> dict``.

    ``config`` holds the task's settings, ``metadata`` its task.json; both are
    filled in by the loader before ``setup`` runs.
    """

    def __init__(self, config: dict[str, Any] | None = None):
        self.config: dict[str, Any] = dict(config or {})
        self.metadata: dict[str, Any] = {}
        self.logger = logging.getLogger(f"wtm.task.{type(self).__module__}")
        self.objects: Any = None  # the object store, set by the loader
        self.load_count = 0
        self._ready = False
        self._ready_lock = threading.Lock()

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Load models and other expensive state; runs once per replica."""

    def cleanup(self) -> None:  # noqa: B027 - optional hook
        """Release what ``setup`` took; runs when the replica stops."""

    @abstractmethod
    def process(self, input_data: dict[str, Any]) -> dict[str, Any]:
        """Turn one input document into one output document."""

    def process_batch(self, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Process many inputs at once; override to batch (the runtime groups calls)."""
        return [self.process(item) for item in inputs]

    @property
    def batches(self) -> bool:
        """Whether this task overrides ``process_batch``."""
        return type(self).process_batch is not TaskBase.process_batch

    def load_image(self, source: Any):
        """An image from a path, ``s3://`` URI, bytes, base64 or array (BGR array)."""
        from orchestrator.images import load_image

        return load_image(source, self.objects)

    def ensure_ready(self) -> None:
        """Run ``setup`` exactly once, even under concurrent first calls."""
        if self._ready:
            return
        with self._ready_lock:
            if not self._ready:  # second check: another thread may have won
                self.setup()
                self.load_count += 1
                self._ready = True

    def shutdown(self) -> None:
        """Run ``cleanup`` if ``setup`` ran."""
        if self._ready:
            self.cleanup()
            self._ready = False

    def run(self, input_data: dict[str, Any]) -> dict[str, Any]:
        """What the runtime calls for each job."""
        self.ensure_ready()
        return self.process(input_data)

    @property
    def task_id(self) -> str:
        return str(self.metadata.get("task_id", type(self).__name__))


class SimpleTask(TaskBase):
    """A task whose setup happens on first use and whose errors are wrapped.

    Exceptions that are not the SDK's own become :class:`RetryableError` with
    the original as cause, so the runtime's retry policy applies to them.
    """

    def run(self, input_data: dict[str, Any]) -> dict[str, Any]:
        self.ensure_ready()
        try:
            return self.process(input_data)
        except (TaskError, OrchestratorError):
            raise
        except Exception as e:
            self.logger.exception("task %s failed", self.task_id)
            raise RetryableError(f"{type(e).__name__}: {e}") from e


class MLTask(SimpleTask):
    """A model-serving task: load once, then preprocess, predict, postprocess."""

    model: Any = None

    @abstractmethod
    def load_model(self) -> Any:
        """Return the loaded model; called once per replica."""

    @abstractmethod
    def predict(self, model_input: Any) -> Any:
        """Run the model on preprocessed input."""

    def preprocess_input(self, input_data: dict[str, Any]) -> Any:
        """Input document to model input; identity unless overridden."""
        return input_data

    def postprocess_output(self, model_output: Any) -> dict[str, Any]:
        """Model output to the output document; identity unless overridden."""
        return model_output

    def setup(self) -> None:
        self.model = self.load_model()

    def cleanup(self) -> None:
        self.model = None

    def process(self, input_data: dict[str, Any]) -> dict[str, Any]:
        return self.postprocess_output(self.predict(self.preprocess_input(input_data)))
