"""Validating a pipeline and compiling it into a plan the driver runs.

Everything is checked before anything runs: unique step ids, known
dependencies, no cycles (the error prints the cycle), registered tasks and
pinned versions, mappings that read only the input or upstream steps, and
parallel groups whose members do not depend on each other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict

from orchestrator.errors import NotFoundError, SpecError
from orchestrator.models import StepRecord, TaskRecord
from orchestrator.pipelines import jsonpath
from orchestrator.pipelines.spec import InputValidation, PipelineSpec, StepSpec

TaskLookup = Callable[[str, str | None], TaskRecord | None]


class PlannedStep(BaseModel):
    """A step with every default resolved and its task version pinned."""

    model_config = ConfigDict(frozen=True)
    step_id: str
    task_id: str
    version: str
    package_sha256: str
    timeout: float
    retries: int
    deps: tuple[str, ...]
    reads: tuple[str, ...]  # upstream steps whose outputs this step receives
    parallel_group: str | None = None
    input_mapping: dict[str, str] | None = None


class Plan(BaseModel):
    """What the driver runs: steps in dependency order, plus pipeline switches."""

    model_config = ConfigDict(frozen=True)
    kind: str = "pipeline"
    pipeline_id: str
    version: str
    steps: tuple[PlannedStep, ...]
    max_parallel: int = 10
    caching: bool = False

    @property
    def sinks(self) -> list[str]:
        """Steps nothing depends on: their outputs are the result."""
        used = {d for s in self.steps for d in s.deps}
        return [s.step_id for s in self.steps if s.step_id not in used]


def pending_steps(plan: Plan) -> list[StepRecord]:
    """Step records as they stand before anything runs."""
    return [StepRecord(step_id=s.step_id, task_id=s.task_id, version=s.version) for s in plan.steps]


def compile_plan(spec: PipelineSpec, tasks: TaskLookup) -> Plan:
    """Validate a pipeline against the task registry and pin its task versions."""
    where = spec.pipeline_id
    if not spec.enabled:
        raise SpecError(f"pipeline {where} is disabled (enabled: false)")
    steps = {s.id: s for s in spec.steps}
    _check_unique(spec.steps, where)
    for s in spec.steps:
        for d in s.deps:
            if d not in steps:
                raise SpecError(f"{where}: step {s.id!r} depends on unknown step {d!r}")
    order = _topological(steps, where)
    ancestors = _ancestors(steps, order)
    _check_groups(spec.steps, ancestors, where)
    g = spec.global_settings
    planned = []
    for step_id in order:
        s = steps[step_id]
        record = tasks(s.task_id, s.version)
        if record is None:
            pinned = f" version {s.version}" if s.version else ""
            raise NotFoundError(
                f"{where}: step {step_id!r} uses unknown task {s.task_id!r}{pinned}"
            )
        reads = _reads(s, steps, ancestors[step_id], where)
        planned.append(
            PlannedStep(
                step_id=step_id,
                task_id=s.task_id,
                version=record.version,
                package_sha256=record.sha256,
                timeout=s.timeout or record.spec.get("timeout") or g.default_timeout,
                retries=_first(
                    s.retry_count, record.spec.get("max_retries"), g.default_retry_count
                ),
                deps=tuple(s.deps),
                reads=reads,
                parallel_group=s.parallel_group,
                input_mapping=s.input_mapping,
            )
        )
    return Plan(
        pipeline_id=spec.pipeline_id,
        version=spec.version,
        steps=tuple(planned),
        max_parallel=g.max_parallel_tasks,
        caching=g.enable_caching,
    )


def task_plan(record: TaskRecord) -> Plan:
    """A task run is a one-step plan: the same driver runs both."""
    step = PlannedStep(
        step_id=record.task_id,
        task_id=record.task_id,
        version=record.version,
        package_sha256=record.sha256,
        timeout=record.spec.get("timeout", 300),
        retries=record.spec.get("max_retries", 3),
        deps=(),
        reads=(),
    )
    return Plan(kind="task", pipeline_id=record.task_id, version=record.version, steps=(step,))


def check_input(spec: InputValidation | None, document: Any, where: str) -> None:
    """The pipeline's ``input_validation``: required fields and file formats."""
    if spec is None:
        return
    if not isinstance(document, dict):
        raise SpecError(f"{where} input must be a JSON object")
    for name in spec.required_fields:
        if name not in document:
            raise SpecError(f"{where} input: missing required field {name!r}")
    formats = {f.lower().lstrip(".") for f in spec.supported_formats}
    if "jpg" in formats:
        formats.add("jpeg")
    for name, value in document.items():
        if formats and name.endswith("_path") and isinstance(value, str):
            ext = value.rsplit(".", 1)[-1].lower() if "." in value else ""
            if ext not in formats:
                allowed = ", ".join(spec.supported_formats)
                raise SpecError(
                    f"{where} input field {name!r}: format {ext or '(none)'!r} "
                    f"is not supported ({allowed})"
                )


# checks ----------------------------------------------------------------------
def _check_unique(steps: list[StepSpec], where: str) -> None:
    seen: set[str] = set()
    for s in steps:
        if s.id in seen:
            raise SpecError(f"{where}: duplicate step id {s.id!r}")
        seen.add(s.id)


def _topological(steps: dict[str, StepSpec], where: str) -> list[str]:
    """Steps in dependency order (file order among equals); a cycle is an error."""
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(step_id: str, path: list[str]) -> None:
        if state.get(step_id) == "done":
            return
        if state.get(step_id) == "active":
            cycle = [*path[path.index(step_id) :], step_id]
            raise SpecError(f"{where}: dependency cycle {' -> '.join(cycle)}")
        state[step_id] = "active"
        for d in steps[step_id].deps:
            visit(d, [*path, step_id])
        state[step_id] = "done"
        order.append(step_id)

    for step_id in steps:
        visit(step_id, [])
    return order


def _ancestors(steps: dict[str, StepSpec], order: list[str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for step_id in order:
        deps = steps[step_id].deps
        out[step_id] = set(deps).union(*(out[d] for d in deps)) if deps else set()
    return out


def _check_groups(steps: list[StepSpec], ancestors: dict[str, set[str]], where: str) -> None:
    groups: dict[str, list[str]] = {}
    for s in steps:
        if s.parallel_group:
            groups.setdefault(s.parallel_group, []).append(s.id)
    for group, members in groups.items():
        for a in members:
            for b in members:
                if a != b and b in ancestors[a]:
                    raise SpecError(
                        f"{where}: parallel group {group!r} has {a!r} depending on {b!r}"
                    )


def _reads(
    s: StepSpec, steps: dict[str, StepSpec], upstream: set[str], where: str
) -> tuple[str, ...]:
    if not s.input_mapping:
        return tuple(s.deps)
    reads: list[str] = []
    for field, path in s.input_mapping.items():
        try:
            segments = jsonpath.parse(path)
        except SpecError as e:
            raise SpecError(f"{where}: step {s.id!r} field {field!r}: {e}") from e
        head = segments[0] if segments else None
        if isinstance(head, str) and head in steps and head != "input":
            if head not in upstream:
                raise SpecError(
                    f"{where}: step {s.id!r} mapping {field!r} reads step "
                    f"{head!r}, which is not upstream of it"
                )
            if head not in reads:
                reads.append(head)
    return tuple(reads)


def _first(*values: Any) -> Any:
    return next(v for v in values if v is not None)
