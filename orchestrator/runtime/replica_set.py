"""One task version's replicas as the controller keeps them, and what each one takes.

A :class:`ReplicaSet` is the controller's bookkeeping for one set: its ready,
starting and draining replicas, and why each started or stops. The functions
say what a task's ``resources`` become in Ray: actor options, what placing a
replica takes, what a running one holds, and whether any node could ever
hold it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from orchestrator import keys
from orchestrator.models import StepPhase, TaskRecord
from orchestrator.runtime import placement
from orchestrator.taskspec import TaskSpec


def actor_options(spec: TaskSpec) -> dict[str, Any]:
    """Ray actor options from a task's resources and replica settings."""
    r = spec.resources
    options: dict[str, Any] = {"max_concurrency": spec.calls_at_once}
    if r.num_cpus is not None:
        options["num_cpus"] = r.num_cpus
    if r.num_gpus is not None:
        options["num_gpus"] = r.num_gpus
    if r.memory is not None:
        options["memory"] = r.memory
    if r.custom:
        options["resources"] = dict(r.custom)
    if spec.runtime_env:
        options["runtime_env"] = spec.runtime_env
    return options


_RESOURCE_NAMES = {"num_cpus": "CPU", "num_gpus": "GPU", "memory": "memory"}


def placement_needs(spec: TaskSpec) -> placement.Resources:
    """What a node must have free to place a replica (Ray's names). An actor that
    names no ``num_cpus`` needs one CPU to be placed, and holds none once running."""
    r = spec.resources
    needs = {"CPU": r.num_cpus if r.num_cpus is not None else 1.0, **r.custom}
    if r.num_gpus:
        needs["GPU"] = r.num_gpus
    if r.memory:
        needs["memory"] = float(r.memory)
    return {k: v for k, v in needs.items() if v}


def held_by(spec: TaskSpec) -> placement.Resources:
    """What one running replica of a task holds (freed when it is killed)."""
    r = spec.resources
    held = {"CPU": r.num_cpus or 0.0, "GPU": r.num_gpus or 0.0, **r.custom}
    if r.memory:
        held["memory"] = float(r.memory)
    return {k: v for k, v in held.items() if v}


def unplaceable(task_id: str, options: dict[str, Any], nodes: list[dict]) -> str | None:
    """Why no live node of the cluster can hold a replica with these options, or None.

    Checked against each node's total resources (what it has, busy or not), so
    a replica that only waits for others to free up is not refused. A cluster
    that adds nodes on demand is not foreseen: a resource no node has yet is refused.
    """
    wanted = {_RESOURCE_NAMES[k]: v for k, v in options.items() if k in _RESOURCE_NAMES and v}
    wanted.update(options.get("resources") or {})
    if not wanted:
        return None
    totals = [n.get("Resources", {}) for n in nodes if n.get("Alive")]
    if any(all(t.get(r, 0) >= amount for r, amount in wanted.items()) for t in totals):
        return None
    names = {v: k for k, v in _RESOURCE_NAMES.items()}

    def most(r: str) -> float:
        return max((t.get(r, 0) for t in totals), default=0)

    short = [
        f"{names.get(r, r)} {amount:g} (the most a node has: {most(r):g})"
        for r, amount in wanted.items()
        if most(r) < amount
    ] or [", ".join(f"{names.get(r, r)} {a:g}" for r, a in wanted.items()) + " on one node"]
    return f"task {task_id} needs {'; '.join(short)}: no node of the cluster can place it"


def no_room(spec: TaskSpec, task_id: str, short: placement.Resources) -> str:
    """The error of a replica that the cluster has room for only if others gave way,
    and none ever will."""
    needs = ", ".join(f"{r} {n:g}" for r, n in sorted(placement_needs(spec).items()))
    return (
        f"task {task_id} needs {needs} to start a replica; the cluster has too little "
        f"{', '.join(sorted(short))} free and no replica can give way"
    )


class Why(NamedTuple):
    """Why a replica starts or stops: a word for the metrics, a sentence for people."""

    kind: str
    text: str


@dataclass
class ReplicaSet:
    """One task version's replicas, as the controller sees them."""

    record: TaskRecord
    ready: dict[str, Any] = field(default_factory=dict)  # routable replicas
    starting: set[str] = field(default_factory=set)
    started_at: dict[str, float] = field(default_factory=dict)  # starting replica -> when (epoch)
    give_up: dict[str, asyncio.Event] = field(default_factory=dict)  # set: stop waiting for it
    handles: dict[str, Any] = field(default_factory=dict)  # starting replica -> its handle
    loading: set[str] = field(default_factory=set)  # starting replicas that said they load
    draining: dict[str, Any] = field(default_factory=dict)
    stopping_for: dict[str, Why] = field(default_factory=dict)  # draining replica -> why
    next_index: int = 0
    generation: int = 0
    pinned: int | None = None
    min_override: int | None = None
    last_error: str | None = None
    last_needed: float = field(default_factory=time.monotonic)
    asked_at: float = float("-inf")  # a dispatcher last asked for its replicas (monotonic)
    warm: int = 0  # replicas `warm` asked for, counted as demand until they are ready
    blocked: bool = False  # its first replica waits for room in the cluster
    pressed_since: float | None = None  # demand first exceeded its replicas (monotonic)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    silent: dict[str, int] = field(default_factory=dict)  # replica -> probes unanswered in a row

    @property
    def key(self) -> str:
        return keys.set_key(self.record.task_id, self.record.version)

    @property
    def spec(self) -> TaskSpec:
        return self.record.spec

    @property
    def low(self) -> int:
        return max(self.spec.replicas.min, self.min_override or 0)

    def keeps(self, name: str) -> bool:
        return name in self.ready or name in self.starting or name in self.draining

    def phase(self) -> StepPhase | None:
        """What a call waiting for this set waits for; None when a replica is ready."""
        if self.ready:
            return None
        if self.loading & self.starting:
            return StepPhase.LOADING
        if self.starting and not self.blocked:
            return StepPhase.STARTING
        return StepPhase.PLACING

    def drain(self, n: int, why: Why) -> list[str]:
        """Stop routing to the ``n`` newest ready replicas; they stop once idle."""
        names = sorted(self.ready, key=keys.replica_index, reverse=True)[: max(n, 0)]
        for name in names:
            self.draining[name] = self.ready.pop(name)
            self.stopping_for[name] = why
        if names:
            self.bump()
        return names

    def snapshot(self, want: int, demand: int, urgent: bool) -> placement.SetSnapshot:
        return placement.SetSnapshot(
            key=self.key,
            ready=len(self.ready),
            starting=len(self.starting - self.loading),
            loading=len(self.starting & self.loading),
            want=want,
            demand=demand,
            low=self.low,
            pinned=self.pinned is not None,
            needs=placement_needs(self.spec),
            holds=held_by(self.spec),
            draining=len(self.draining),
            last_needed=self.last_needed,
            urgent=urgent,
        )

    def bump(self) -> None:
        self.generation += 1
        self.changed.set()
        self.changed = asyncio.Event()
