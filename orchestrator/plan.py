"""What the driver runs: a plan of steps, each with its task pinned and its policy resolved.

A task run is a one-step plan (:func:`task_plan`); a pipeline compiles into
one (:func:`orchestrator.pipelines.graph.compile_plan`). What differs between
the two is data on the plan, so the driver never asks which one it runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.models import StepRecord
from orchestrator.policy import Level, StepPolicy, resolve_step_policy

if TYPE_CHECKING:
    from orchestrator.models import TaskRecord
    from orchestrator.settings import Settings


class PlannedStep(BaseModel):
    """A step with its task version pinned and its policy resolved."""

    model_config = ConfigDict(frozen=True)
    step_id: str
    task_id: str
    version: str
    package_sha256: str
    policy: StepPolicy
    deps: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()  # upstream steps whose outputs this step receives
    input_mapping: dict[str, str] | None = None


class Plan(BaseModel):
    """Steps in dependency order, and how the driver reports on them."""

    model_config = ConfigDict(frozen=True)
    kind: Literal["task", "pipeline"]
    target: str  # the task or pipeline id
    version: str
    steps: tuple[PlannedStep, ...]
    max_parallel: int = 1
    caching: bool = False
    # A pipeline's steps are each recorded (and published) as they change; a
    # task's one step is recorded with its execution.
    record_steps: bool = False
    # Each finished step's output is kept, so a claimed execution resumes after it.
    keep_outputs: bool = False
    # A failure names its step: "step 'x' failed: ...".
    name_failed_step: bool = False
    # A result's ``summary`` gets each step's time and the total.
    summary_timings: bool = False
    # The pipeline input's top-level fields that something takes (None: any), checked
    # when it is submitted; not sent with the job.
    input_fields: frozenset[str] | None = Field(default=None, exclude=True)

    @property
    def sinks(self) -> list[str]:
        """Steps nothing depends on: their outputs are the result."""
        used = {d for s in self.steps for d in s.deps}
        return [s.step_id for s in self.steps if s.step_id not in used]

    def stages(self) -> list[list[str]]:
        """Step ids by how deep in the graph they stand: each stage only needs earlier ones."""
        depth: dict[str, int] = {}
        for s in self.steps:  # in dependency order
            depth[s.step_id] = 1 + max((depth[d] for d in s.deps), default=-1)
        out: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
        for step_id, d in depth.items():
            out[d].append(step_id)
        return out

    def slots(self, steps: set[str] | None = None) -> dict[tuple[str, str], int]:
        """Replica slots the plan asks for at once, per task version: the most of its
        steps (of ``steps``, default all) that one stage runs together, within
        ``max_parallel``. What starting its replicas ahead of time should start."""
        by_id = {s.step_id: s for s in self.steps}
        wanted: dict[tuple[str, str], int] = {}
        for stage in self.stages():
            at_once: dict[tuple[str, str], int] = {}
            for step_id in stage:
                if steps is None or step_id in steps:
                    s = by_id[step_id]
                    at_once[s.task_id, s.version] = at_once.get((s.task_id, s.version), 0) + 1
            for key, n in at_once.items():
                wanted[key] = max(wanted.get(key, 0), min(n, self.max_parallel))
        return wanted

    def pending_steps(self) -> list[StepRecord]:
        """Step records as they stand before anything runs."""
        return [
            StepRecord(step_id=s.step_id, task_id=s.task_id, version=s.version) for s in self.steps
        ]


def task_plan(record: TaskRecord, settings: Settings) -> Plan:
    """A task run: one step, its policy from the operator's overrides, the task, the defaults."""
    step = PlannedStep(
        step_id=record.task_id,
        task_id=record.task_id,
        version=record.version,
        package_sha256=record.sha256,
        policy=step_policy(record, settings),
    )
    return Plan(kind="task", target=record.task_id, version=record.version, steps=(step,))


def step_policy(
    record: TaskRecord, settings: Settings, step: Level = Level(), pipeline: Level = Level()
) -> StepPolicy:
    """The policy of a step running this task: every level, from settings and the task."""
    override = settings.worker.overrides(record.task_id)
    return resolve_step_policy(
        settings.steps,
        step=step,
        override=Level(override.timeout, override.max_retries),
        task=Level(record.spec.timeout, record.spec.max_retries),
        pipeline=pipeline,
    )


def task_queue(record: TaskRecord, settings: Settings, priority: int | None) -> tuple[str, int]:
    """Where a task's execution waits: (queue, priority).

    The caller's priority, else the operator's ``worker.task_configs``, else ``task.json``.
    """
    override = settings.worker.overrides(record.task_id)
    return (
        override.queue or record.spec.queue,
        priority or override.priority or record.spec.priority,
    )
