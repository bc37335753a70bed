"""Validating a pipeline and compiling it into a plan the driver runs.

Everything is checked before anything runs: unique step ids, known
dependencies, no cycles (the error prints the cycle), registered tasks and
pinned versions, mappings that read only the input or upstream steps (and,
where the upstream task declares an ``output_schema``, only fields it
declares), and parallel groups whose members do not depend on each other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from orchestrator.errors import NotFoundError, SpecError
from orchestrator.inputs import is_path_field
from orchestrator.models import TaskRecord
from orchestrator.pipelines import jsonpath
from orchestrator.pipelines.mapping import INPUT, step_input
from orchestrator.pipelinespec import InputValidation, PipelineSpec, StepSpec
from orchestrator.plan import Plan, PlannedStep, step_policy
from orchestrator.policy import Level
from orchestrator.runner import validate_input
from orchestrator.settings import Settings

TaskLookup = Callable[[str, str | None], TaskRecord | None]


def compile_plan(spec: PipelineSpec, tasks: TaskLookup, settings: Settings) -> Plan:
    """Validate a pipeline against the task registry, pin its tasks, resolve each policy."""
    where = spec.pipeline_id
    if not spec.enabled:
        raise SpecError(f"pipeline {where} is disabled (enabled: false)")
    steps = {s.id: s for s in spec.steps}
    _check_ids(spec.steps, where)
    for s in spec.steps:
        for d in s.deps:
            if d not in steps:
                raise SpecError(f"{where}: step {s.id!r} depends on unknown step {d!r}")
    order = _topological(steps, where)
    ancestors = _ancestors(steps, order)
    _check_groups(spec.steps, ancestors, where)
    records = {step_id: _task(steps[step_id], tasks, where) for step_id in order}
    g = spec.global_settings
    planned = []
    for step_id in order:
        s, record = steps[step_id], records[step_id]
        policy = step_policy(
            record,
            settings,
            step=Level(s.timeout, s.retry_count),
            pipeline=Level(g.default_timeout, g.default_retry_count),
        )
        planned.append(
            PlannedStep(
                step_id=step_id,
                task_id=s.task_id,
                version=record.version,
                package_sha256=record.sha256,
                policy=policy,
                deps=tuple(s.deps),
                reads=_reads(s, steps, ancestors[step_id], records, where),
                input_mapping=s.input_mapping,
            )
        )
    return Plan(
        kind="pipeline",
        target=spec.pipeline_id,
        version=spec.version,
        steps=tuple(planned),
        max_parallel=g.max_parallel_tasks,
        caching=g.enable_caching,
        record_steps=True,
        keep_outputs=True,
        name_failed_step=True,
        summary_timings=True,
    )


def _task(s: StepSpec, tasks: TaskLookup, where: str) -> TaskRecord:
    record = tasks(s.task_id, s.version)
    if record is None:
        pinned = f" version {s.version}" if s.version else ""
        raise NotFoundError(f"{where}: step {s.id!r} uses unknown task {s.task_id!r}{pinned}")
    return record


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
        if formats and is_path_field(name) and isinstance(value, str):
            ext = value.rsplit(".", 1)[-1].lower() if "." in value else ""
            if ext not in formats:
                allowed = ", ".join(spec.supported_formats)
                raise SpecError(
                    f"{where} input field {name!r}: format {ext or '(none)'!r} "
                    f"is not supported ({allowed})"
                )


def check_step_inputs(plan: Plan, document: Any, tasks: TaskLookup) -> None:
    """Check the input of every step that reads only the pipeline input (a first step)
    against its task's input_schema, before anything is queued; the other steps'
    inputs hold upstream outputs, checked on their replicas."""
    for step in plan.steps:
        if step.deps:
            continue
        record = tasks(step.task_id, step.version)
        if record is None:  # compile_plan found it a moment ago; it was deleted since
            raise NotFoundError(f"{plan.target}: step {step.step_id!r}: task {step.task_id!r} gone")
        where = f"{plan.target} step {step.step_id!r} ({step.task_id}) input"
        validate_input(
            record.spec.input_schema, step_input(step.input_mapping, document, {}), where
        )


# checks ----------------------------------------------------------------------
def _check_ids(steps: list[StepSpec], where: str) -> None:
    seen: set[str] = set()
    for s in steps:
        if s.id == INPUT:
            raise SpecError(f"{where}: step id {INPUT!r} is reserved for the pipeline input")
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
    s: StepSpec,
    steps: dict[str, StepSpec],
    upstream: set[str],
    records: dict[str, TaskRecord],
    where: str,
) -> tuple[str, ...]:
    """The upstream steps a step's mapping reads; each path checked as far as it can be."""
    if not s.input_mapping:
        return tuple(s.deps)
    reads: list[str] = []
    for field, text in s.input_mapping.items():
        try:
            path = jsonpath.parse(text)
        except SpecError as e:
            raise SpecError(f"{where}: step {s.id!r} field {field!r}: {e}") from e
        head = path.head
        if head is None:  # $..x, $.*: any step upstream may hold a match
            reads += [d for d in sorted(upstream) if d not in reads]
            continue
        if head not in steps or head == INPUT:
            continue
        if head not in upstream:
            raise SpecError(
                f"{where}: step {s.id!r} mapping {field!r} reads step "
                f"{head!r}, which is not upstream of it"
            )
        problem = jsonpath.schema_problem(path, records[head].spec.output_schema)
        if problem:
            raise SpecError(
                f"{where}: step {s.id!r} mapping {field!r} = {text!r}: the output_schema "
                f"of task {records[head].task_id!r} has {problem}"
            )
        if head not in reads:
            reads.append(head)
    return tuple(reads)
