"""The record store contract and how settings choose an implementation.

Each method is atomic on its own: a reader never sees half a record. A store
that cannot be reached, or stays locked past its timeout, raises
:class:`~orchestrator.errors.StoreUnavailable`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from orchestrator.models import (
    ExecutionRecord,
    ExecutionStatus,
    PipelineRecord,
    TaskRecord,
    WorkerRecord,
)
from orchestrator.settings import Settings


class RecordStore(Protocol):
    """Tasks, pipelines, executions and workers."""

    def put_task(self, record: TaskRecord) -> None:
        """Insert or replace one (task_id, version)."""

    def get_task(self, task_id: str, version: str | None = None) -> TaskRecord | None:
        """One version, or the latest registered one when version is None."""

    def list_tasks(self) -> list[TaskRecord]:
        """Every registered version, ordered by task id then registration time."""

    def delete_task(self, task_id: str, version: str | None = None) -> int:
        """Delete one version, or all of them; returns how many were deleted."""

    def put_pipeline(self, record: PipelineRecord) -> None:
        """Insert or replace one (pipeline_id, version)."""

    def get_pipeline(self, pipeline_id: str, version: str | None = None) -> PipelineRecord | None:
        """One version, or the latest registered one when version is None."""

    def list_pipelines(self) -> list[PipelineRecord]:
        """Every registered version, ordered by pipeline id then registration time."""

    def delete_pipeline(self, pipeline_id: str, version: str | None = None) -> int:
        """Delete one version, or all of them; returns how many were deleted."""

    def insert_execution(self, record: ExecutionRecord) -> None:
        """Insert a new execution; ConflictError if its id exists."""

    def insert_executions(self, records: list[ExecutionRecord]) -> None:
        """Insert new executions at once (``Client.map``); ConflictError if an id
        exists, and then none of them is left inserted."""

    def save_execution(self, record: ExecutionRecord) -> bool:
        """Insert or replace an execution record as a whole, unless the stored one has
        ended and this one has not (a cancel got there first: an ended execution
        stays ended). Returns whether it was written."""

    def save_executions(self, records: list[ExecutionRecord]) -> list[bool]:
        """:meth:`save_execution` for several records at once, in one transaction
        where the store has them (a dispatcher's group commit); whether each was written."""

    def delete_execution(self, execution_id: str) -> None:
        """Forget an execution (one that never reached its queue)."""

    def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        """One execution, or None."""

    def list_executions(
        self, status: ExecutionStatus | None = None, limit: int = 50, target: str | None = None
    ) -> list[ExecutionRecord]:
        """Newest first, optionally filtered by status and task or pipeline id."""

    def old_executions(self, before: float, limit: int = 500) -> list[ExecutionRecord]:
        """Up to ``limit`` finished executions submitted before ``before``, oldest first
        (queued and running ones are never old)."""

    def delete_executions(self, execution_ids: list[str]) -> int:
        """Forget these executions; returns how many there were."""

    def scan_executions(self, batch: int = 500) -> Iterator[ExecutionRecord]:
        """Every execution, read ``batch`` at a time (for sweeps over the whole store)."""

    def put_worker(self, record: WorkerRecord) -> None:
        """Insert or replace a worker's heartbeat."""

    def list_workers(self) -> list[WorkerRecord]:
        """Every worker that ever reported, ordered by id."""

    def delete_worker(self, worker_id: str) -> None:
        """Forget a worker."""

    def close(self) -> None:
        """Release connections."""


def open_records(settings: Settings) -> RecordStore:
    """The record store the settings name: MongoDB for a mongodb:// URI, else SQLite."""
    uri = settings.records.uri
    if uri and uri.startswith(("mongodb://", "mongodb+srv://", "mongomock://")):
        from orchestrator.records.mongo import MongoRecordStore

        return MongoRecordStore.from_uri(uri, settings.records.database)
    from orchestrator.records.sqlite import SqliteRecordStore

    path = uri.removeprefix("sqlite:///") if uri else settings.records_file
    return SqliteRecordStore(path, settings.records.timeout_s)
