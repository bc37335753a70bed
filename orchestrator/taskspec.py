"""The ``task.json`` model: the seed's fields plus resources, replicas and batch."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator.errors import SpecError

_STRICT = ConfigDict(extra="forbid")
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
MAX_ID = 128  # ids name files, object keys and actors: long ones break those, so they are refused
DEFAULT_QUEUE = "default"
DEFAULT_PRIORITY = 5  # the seed's scale: 1 (low) to 10 (high)


class Resources(BaseModel):
    """What one replica asks Ray for; placement follows it."""

    model_config = _STRICT
    num_cpus: float | None = Field(default=None, ge=0)
    num_gpus: float | None = Field(default=None, ge=0)
    memory: int | None = Field(default=None, ge=0)  # bytes, or "300 MB", "2 GiB"
    custom: dict[str, float] = Field(default_factory=dict)

    @field_validator("memory", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        return parse_size(value) if isinstance(value, str) else value


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    """``"300 MB"``, ``"2GiB"``, ``"1500000"`` in bytes; ValueError otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size: use bytes or a unit such as 300 MB, 2 GiB")
    return int(float(match.group(1)) * _UNITS[unit])


class Replicas(BaseModel):
    """How many replicas a task may have, and how many calls each takes at once."""

    model_config = _STRICT
    min: int = Field(default=0, ge=0)
    max: int | None = Field(default=None, ge=1)  # None: as many as the cluster can hold
    max_concurrency: int = Field(default=1, ge=1)


class Batch(BaseModel):
    """Dynamic batching for tasks that define ``process_batch``."""

    model_config = _STRICT
    max_size: int = Field(default=8, ge=1)
    wait_ms: float = Field(default=10, ge=0)


class TaskSpec(BaseModel):
    """One task package's metadata, as written in its task.json."""

    model_config = _STRICT
    task_id: str = Field(pattern=ID_PATTERN, max_length=MAX_ID)
    name: str
    version: str = Field(pattern=ID_PATTERN, max_length=MAX_ID)
    entry_point: str = Field(pattern=r"^[A-Za-z_][\w.]*\.[A-Za-z_]\w*$")
    description: str = ""
    author: str = ""
    category: str = "general"
    requirements: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    queue: str = Field(default=DEFAULT_QUEUE, pattern=ID_PATTERN, max_length=MAX_ID)
    priority: int = Field(default=DEFAULT_PRIORITY, ge=1, le=10)
    # Unset stays None all the way to the plan: a pipeline's global_settings or the
    # system defaults fill it in there (orchestrator.policy.resolve_step_policy).
    timeout: float | None = Field(default=None, gt=0)
    max_retries: int | None = Field(default=None, ge=0)
    input_schema: dict[str, Any] = Field(default_factory=dict)
    output_schema: dict[str, Any] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    replicas: Replicas = Field(default_factory=Replicas)
    batch: Batch | None = None
    runtime_env: dict[str, Any] | None = None

    @property
    def calls_at_once(self) -> int:
        """How many calls one replica runs at once (a batching one takes a batch's worth)."""
        return max(self.replicas.max_concurrency, self.batch.max_size if self.batch else 1)


def parse_spec(data: Any, source: str) -> TaskSpec:
    """Validate a task.json document; errors name the file and the field."""
    import jsonschema  # here: reading a task's record needs no schema checker

    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a JSON object")
    try:
        spec = TaskSpec.model_validate(data)
    except pydantic.ValidationError as e:
        raise SpecError(f"{source}: {describe(e)}") from e
    for field in ("input_schema", "output_schema"):
        schema = getattr(spec, field)
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as e:
            where = "/".join(str(p) for p in e.absolute_path)
            raise SpecError(
                f"{source}: field {field!r} is not a valid JSON Schema "
                f"(at {where or 'top'}: {e.message})"
            ) from e
    return spec


def load_spec(folder: Path) -> TaskSpec:
    """Read and validate ``folder/task.json``."""
    path = folder / "task.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise SpecError(f"{path}: no task.json in {folder}") from e
    except json.JSONDecodeError as e:
        raise SpecError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}") from e
    return parse_spec(data, str(path))


def describe(e: pydantic.ValidationError) -> str:
    """The first error of a pydantic validation, as one line naming the field."""
    first = e.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "document"
    if first["type"] == "extra_forbidden":
        return f"unknown field {field!r}"
    if first["type"] == "missing":
        return f"missing required field {field!r}"
    return f"field {field!r}: {first['msg']}"
