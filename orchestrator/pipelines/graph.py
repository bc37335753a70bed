"""Validating a pipeline and compiling it into a plan the driver runs.

Everything is checked before anything runs: unique step ids, known
dependencies, no cycles (the error prints the cycle), registered tasks and
pinned versions, mappings that read only the input or upstream steps (and,
where the upstream task declares an ``output_schema``, only fields it
declares), mapped fields that their task takes, and parallel groups whose
members do not depend on each other.

At submit, what each step will receive from the pipeline input is checked
against its task's input_schema, unknown fields refused (orchestrator.strict).
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
from orchestrator.runner import validate_fields, validate_input
from orchestrator.settings import Settings
from orchestrator.strict import declared_fields
from orchestrator.suggest import did_you_mean

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
    for s in spec.steps:
        _check_fields(s, records[s.id], where)
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
        input_fields=_input_fields(spec, steps, records),
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
    """Check what each step receives from the pipeline input against its task's
    input_schema, before anything is queued: a first step's whole input, and a later
    step's fields that come from the pipeline input (the rest are upstream outputs,
    checked on its replica). Unknown fields are refused, and so are top-level fields
    nothing takes when the pipeline declares its ``input_validation``."""
    _check_known_fields(plan, document)
    step_ids = {s.step_id for s in plan.steps}
    for step in plan.steps:
        record = tasks(step.task_id, step.version)
        if record is None:  # compile_plan found it a moment ago; it was deleted since
            raise NotFoundError(f"{plan.target}: step {step.step_id!r}: task {step.task_id!r} gone")
        where = f"{plan.target} step {step.step_id!r} ({step.task_id}) input"
        schema = record.spec.input_schema
        # An unmapped step shares the whole input with the other steps: its top
        # level is its own only when it is the pipeline's one step.
        top = bool(step.input_mapping) or len(plan.steps) == 1
        if not step.deps:
            validate_input(schema, step_input(step.input_mapping, document, {}), where, top)
        else:
            validate_fields(schema, _from_input(step, document, step_ids), where, top)


def _from_input(step: PlannedStep, document: Any, step_ids: set[str]) -> dict[str, Any]:
    """The fields of a later step's input that hold only pipeline input."""
    if not step.input_mapping:
        whole = step_input(None, document, {})
        return {k: v for k, v in whole.items() if k not in step.reads}  # upstream wins
    own = {
        field: text
        for field, text in step.input_mapping.items()
        if _reads_only_input(jsonpath.parse(text), step_ids)
    }
    return step_input(own, document, {}) if own else {}


def _reads_only_input(path: jsonpath.Path, step_ids: set[str]) -> bool:
    return path.head == INPUT or (path.head is not None and path.head not in step_ids)


def _check_known_fields(plan: Plan, document: Any) -> None:
    if plan.input_fields is None or not isinstance(document, dict):
        return
    for name in document:
        if name not in plan.input_fields:
            hint = did_you_mean(name, plan.input_fields)
            raise SpecError(f"{plan.target} input: unknown field {name!r}{hint}")


def _input_fields(
    spec: PipelineSpec, steps: dict[str, StepSpec], records: dict[str, TaskRecord]
) -> frozenset[str] | None:
    """The pipeline input's top-level fields something takes: those its input_validation
    declares, those a mapping reads, and those an unmapped step's task takes. None
    (any field) without input_validation, or where a step may read any field."""
    if spec.input_validation is None:
        return None
    known = {*spec.input_validation.required_fields, *spec.input_validation.optional_fields}
    for s in spec.steps:
        if not s.input_mapping:
            taken = declared_fields(records[s.id].spec.input_schema)
            if taken is None:
                return None
            known |= taken
        for text in (s.input_mapping or {}).values():
            path = jsonpath.parse(text)
            field = path.field(1) if path.head == INPUT else path.head
            if field is None:  # $..x, $.*, $.input: it may read any field
                return None
            if path.head == INPUT or field not in steps:
                known.add(field)
    return frozenset(known)


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


def _check_fields(s: StepSpec, record: TaskRecord, where: str) -> None:
    """A step's input holds only fields its task takes, or it would fail on every run
    (or, under a misspelled mapping, run without the field)."""
    schema = record.spec.input_schema or {}
    if s.input_mapping:
        taken = declared_fields(schema)
        wrong = [f for f in s.input_mapping if taken is not None and f not in taken]
        if wrong:
            raise SpecError(
                f"{where}: step {s.id!r} maps {wrong[0]!r}, a field task {record.task_id!r} "
                f"does not take{did_you_mean(wrong[0], taken or ())}"
            )
        return
    # Unmapped, its input holds each dependency's output under the step's id.
    closed = schema.get("additionalProperties") is False and "patternProperties" not in schema
    wrong = [d for d in s.deps if closed and d not in schema.get("properties", {})]
    if wrong:
        raise SpecError(
            f"{where}: step {s.id!r} has no input_mapping, so its input holds the output "
            f"of {wrong[0]!r}, a field task {record.task_id!r} does not take; "
            "give it an input_mapping"
        )


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
