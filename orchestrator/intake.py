"""The durable intake: the job message and how it enters its queue's stream.

A job is one entry in ``wtm:q:<queue>:<lane>``; it carries the compiled plan,
so a dispatcher runs it without reading the registry.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Literal

import redis
from pydantic import BaseModel, ConfigDict

from orchestrator import keys
from orchestrator.models import ExecutionRecord
from orchestrator.plan import Plan


class Job(BaseModel):
    """The immutable message on a stream: enough to run without a records read."""

    model_config = ConfigDict(frozen=True)

    execution_id: str
    kind: Literal["task", "pipeline"]
    target: str
    version: str | None = None
    queue: str
    priority: int
    submitted_at: float
    input: Any = None
    input_ref: str | None = None  # an input too large to travel inline, in the object store
    plan: Plan

    @classmethod
    def of(cls, execution: ExecutionRecord, plan: Plan) -> Job:
        """The message for a recorded execution."""
        return cls(
            execution_id=execution.execution_id,
            kind=execution.kind,
            target=execution.target,
            version=execution.version,
            queue=execution.queue,
            priority=execution.priority,
            submitted_at=execution.submitted_at,
            input=execution.input,
            input_ref=execution.input_ref,
            plan=plan,
        )

    def queued(self) -> ExecutionRecord:
        """The record as its client wrote it, before enqueueing: a dispatcher taking
        the job up for the first time starts from this rather than reading it back."""
        return ExecutionRecord(
            execution_id=self.execution_id,
            kind=self.kind,
            task_id=self.target if self.kind == "task" else None,
            pipeline_id=self.target if self.kind == "pipeline" else None,
            version=self.version,
            priority=self.priority,
            queue=self.queue,
            input=self.input,
            input_ref=self.input_ref,
            submitted_at=self.submitted_at,
            steps=self.plan.pending_steps(),
        )

    @property
    def stream(self) -> str:
        return keys.stream(self.queue, keys.lane_for(self.priority))

    def encode(self) -> dict[str, str]:
        """Fields for XADD: the job, and its plan apart (jobs of one target share it)."""
        return {
            "job": self.model_dump_json(exclude={"plan"}),
            "plan": self.plan.model_dump_json(),
        }

    @classmethod
    def decode(cls, fields: dict[bytes | str, bytes | str]) -> Job:
        """The job of a stream entry. Plans are read once per distinct text: a burst
        of one pipeline's jobs parses its plan once, not once a job."""
        raw = json.loads(fields.get(b"job", fields.get("job")))
        plan = fields.get(b"plan", fields.get("plan"))
        if plan is not None:  # an entry of an older version carries it inside the job
            raw["plan"] = _plan(plan if isinstance(plan, bytes) else plan.encode())
        return cls.model_validate(raw)


@functools.lru_cache(maxsize=256)
def _plan(text: bytes) -> Plan:
    return Plan.model_validate_json(text)


def enqueue(r: redis.Redis, job: Job) -> str:
    """Add the job to its stream, and its queue to the set dispatchers read, in one step;
    returns the stream entry's id."""
    pipe = r.pipeline(transaction=True)
    pipe.sadd(keys.QUEUES_SET, job.queue)
    pipe.xadd(job.stream, job.encode())
    _, entry_id = pipe.execute()
    return entry_id.decode() if isinstance(entry_id, bytes) else entry_id


def enqueue_many(r: redis.Redis, jobs: list[Job]) -> None:
    """Add many jobs to their streams in one round trip (one transaction)."""
    pipe = r.pipeline(transaction=True)
    for queue in {job.queue for job in jobs}:
        pipe.sadd(keys.QUEUES_SET, queue)
    for job in jobs:
        pipe.xadd(job.stream, job.encode())
    pipe.execute()
