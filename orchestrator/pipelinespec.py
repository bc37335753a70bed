"""Pipeline files: a single pipeline object, or the seed's ``config_pipeline.json``.

A step's timeout and retries are resolved from the step, the operator's
``worker.task_configs``, the task, then ``global_settings``, then the system
defaults, by :func:`orchestrator.policy.resolve_step_policy`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.errors import NotFoundError, SpecError
from orchestrator.taskspec import DEFAULT_PRIORITY, ID_PATTERN, MAX_ID, describe

_STRICT = ConfigDict(extra="forbid")
PIPELINE_QUEUE = "pipelines"  # pipelines wait apart from tasks unless metadata says


class StepSpec(BaseModel):
    """One step: a task call, its dependencies, group and input mapping."""

    model_config = _STRICT
    task_id: str = Field(pattern=ID_PATTERN, max_length=MAX_ID)
    step_id: str | None = Field(default=None, pattern=ID_PATTERN, max_length=MAX_ID)
    version: str | None = None
    timeout: float | None = Field(default=None, gt=0)
    retry_count: int | None = Field(default=None, ge=0)
    depends_on: list[str] | None = None
    parallel_group: str | None = None
    input_mapping: dict[str, str] | None = None

    @property
    def id(self) -> str:
        return self.step_id or self.task_id

    @property
    def deps(self) -> list[str]:
        return list(self.depends_on or [])


class InputValidation(BaseModel):
    """Checked on the pipeline input before anything is queued."""

    model_config = _STRICT
    required_fields: list[str] = Field(default_factory=list)
    optional_fields: list[str] = Field(default_factory=list)
    supported_formats: list[str] = Field(default_factory=list)


class GlobalSettings(BaseModel):
    """The seed's ``global_settings``: defaults and switches for every pipeline."""

    model_config = _STRICT
    # Unset stays None: the system defaults (settings.steps) apply after these.
    default_timeout: float | None = Field(default=None, gt=0)
    default_retry_count: int | None = Field(default=None, ge=0)
    max_parallel_tasks: int = Field(default=10, ge=1)
    enable_caching: bool = False
    log_level: str = "INFO"


class PipelineSpec(BaseModel):
    """A pipeline as its JSON describes it."""

    model_config = _STRICT
    pipeline_id: str = Field(pattern=ID_PATTERN, max_length=MAX_ID)
    name: str | None = None
    description: str = ""
    enabled: bool = True
    steps: list[StepSpec] = Field(min_length=1)
    input_validation: InputValidation | None = None
    output_format: dict[str, Any] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    global_settings: GlobalSettings = Field(default_factory=GlobalSettings)

    @property
    def version(self) -> str:
        return str(self.metadata.get("version", "1.0.0"))

    @property
    def queue(self) -> str:
        """The queue its executions wait in (``metadata.queue``)."""
        return str(self.metadata.get("queue", PIPELINE_QUEUE))

    @property
    def priority(self) -> int:
        """Its executions' default priority (``metadata.priority``)."""
        return int(self.metadata.get("priority", DEFAULT_PRIORITY))


def parse_document(data: Any, source: str) -> list[PipelineSpec]:
    """Pipelines in a document of either format; errors name the file and field."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a JSON object")
    if "pipelines" in data:
        unknown = sorted(set(data) - {"pipelines", "global_settings"})
        if unknown:
            raise SpecError(f"{source}: unknown field {unknown[0]!r}")
        shared = data.get("global_settings") or {}
        items = data["pipelines"]
        if not isinstance(items, dict) or not items:
            raise SpecError(f"{source}: 'pipelines' must be a non-empty object")
        return [_parse_entry(key, body, shared, f"{source} [{key}]") for key, body in items.items()]
    return [_parse(data, source)]


def _parse_entry(key: str, body: Any, shared: dict[str, Any], where: str) -> PipelineSpec:
    """One pipeline of a config file: its key is its id (a pipeline_id may only repeat it)."""
    if not isinstance(body, dict):
        raise SpecError(f"{where}: expected a JSON object")
    named = body.get("pipeline_id", key)
    if named != key:
        raise SpecError(f"{where}: pipeline_id {named!r} differs from its key {key!r}")
    return _parse({**body, "pipeline_id": key, "global_settings": shared}, where)


def _parse(data: Any, source: str) -> PipelineSpec:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a JSON object")
    try:
        return PipelineSpec.model_validate(data)
    except pydantic.ValidationError as e:
        raise SpecError(f"{source}: {describe(e)}") from e


def load_file(path: Path) -> list[PipelineSpec]:
    """Read and parse a pipeline file."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise NotFoundError(f"{path}: no such pipeline file") from e
    except json.JSONDecodeError as e:
        raise SpecError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}") from e
    return parse_document(data, str(path))
