"""MongoDB record store: the production system of record.

Each record is one document, its pydantic JSON dump plus an ``_id`` (and a
``target`` on executions), so the documents never lag behind the models.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pymongo
from pymongo.errors import BulkWriteError, ConnectionFailure, DuplicateKeyError

from orchestrator import keys
from orchestrator.errors import ConflictError, StoreUnavailable
from orchestrator.models import (
    ExecutionRecord,
    ExecutionStatus,
    PipelineRecord,
    TaskRecord,
    WorkerRecord,
)
from orchestrator.secrets import redact

F = TypeVar("F", bound=Callable[..., Any])

# (collection, index keys) created once per store, on first use.
_INDEXES: tuple[tuple[str, list[tuple[str, int]]], ...] = (
    (keys.EXECUTIONS, [("status", 1), ("submitted_at", -1)]),
    (keys.EXECUTIONS, [("target", 1), ("submitted_at", -1)]),
    (keys.EXECUTIONS, [("submitted_at", -1)]),
    (keys.TASKS, [("task_id", 1), ("registered_at", -1)]),
    (keys.PIPELINES, [("pipeline_id", 1), ("registered_at", -1)]),
    (keys.WORKERS, [("heartbeat_at", 1)]),
)


def _reachable(method: F) -> F:
    """Turn a lost or unreachable server into a one-line StoreUnavailable (retryable)."""

    @functools.wraps(method)
    def wrapper(self: MongoRecordStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except ConnectionFailure as e:
            raise StoreUnavailable(
                f"cannot reach MongoDB at {self.where}: {type(e).__name__}"
            ) from e

    return wrapper  # type: ignore[return-value]


class MongoRecordStore:
    """Record store in one MongoDB database; one collection per record kind.

    Atomicity: every write touches one document (``replace_one``, ``insert_one``,
    ``delete_one``), so readers see a record whole, before or after. The one
    exception is ``delete_task`` without a version, a ``delete_many`` that is
    atomic per version, not across them. ``insert_execution`` relies on the
    unique ``_id``: of two concurrent inserts of one id exactly one wins.
    """

    def __init__(self, client: Any, database: str, where: str = "mongodb"):
        """Use ``client[database]``; ``where`` names the server in error messages."""
        self._client = client
        self._db = client[database]
        self.where = where
        self._indexed = False
        self._lock = threading.Lock()

    @classmethod
    def from_uri(cls, uri: str, database: str = "ai_worker") -> MongoRecordStore:
        """A store for a ``mongodb://`` URI, or an in-memory ``mongomock://`` one for tests.

        Nothing connects until the first call; each ``mongomock://`` store is its own
        empty server.
        """
        if uri.startswith("mongomock://"):
            import mongomock  # a test dependency only

            client: Any = mongomock.MongoClient()
        else:
            client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000)
        return cls(client, database, where=redact(uri))

    def _coll(self, name: str) -> Any:
        if not self._indexed:
            with self._lock:
                if not self._indexed:  # another thread may have won the lock first
                    for collection, index in _INDEXES:
                        self._db[collection].create_index(index)
                    self._indexed = True
        return self._db[name]

    # tasks -----------------------------------------------------------------
    @_reachable
    def put_task(self, record: TaskRecord) -> None:
        doc = _doc(record, f"{record.task_id}@{record.version}")
        self._coll(keys.TASKS).replace_one({"_id": doc["_id"]}, doc, upsert=True)

    @_reachable
    def get_task(self, task_id: str, version: str | None = None) -> TaskRecord | None:
        tasks = self._coll(keys.TASKS)
        if version is None:
            doc = tasks.find_one({"task_id": task_id}, sort=[("registered_at", -1)])
        else:
            doc = tasks.find_one({"_id": f"{task_id}@{version}"})
        return _load(TaskRecord, doc)

    @_reachable
    def list_tasks(self) -> list[TaskRecord]:
        docs = self._coll(keys.TASKS).find().sort([("task_id", 1), ("registered_at", 1)])
        return [_load(TaskRecord, d) for d in docs]

    @_reachable
    def delete_task(self, task_id: str, version: str | None = None) -> int:
        tasks = self._coll(keys.TASKS)
        if version is None:
            return tasks.delete_many({"task_id": task_id}).deleted_count
        return tasks.delete_one({"_id": f"{task_id}@{version}"}).deleted_count

    # pipelines ---------------------------------------------------------------
    @_reachable
    def put_pipeline(self, record: PipelineRecord) -> None:
        doc = _doc(record, f"{record.pipeline_id}@{record.version}")
        self._coll(keys.PIPELINES).replace_one({"_id": doc["_id"]}, doc, upsert=True)

    @_reachable
    def get_pipeline(self, pipeline_id: str, version: str | None = None) -> PipelineRecord | None:
        pipelines = self._coll(keys.PIPELINES)
        if version is None:
            doc = pipelines.find_one({"pipeline_id": pipeline_id}, sort=[("registered_at", -1)])
        else:
            doc = pipelines.find_one({"_id": f"{pipeline_id}@{version}"})
        return _load(PipelineRecord, doc)

    @_reachable
    def list_pipelines(self) -> list[PipelineRecord]:
        docs = self._coll(keys.PIPELINES).find().sort([("pipeline_id", 1), ("registered_at", 1)])
        return [_load(PipelineRecord, d) for d in docs]

    @_reachable
    def delete_pipeline(self, pipeline_id: str, version: str | None = None) -> int:
        pipelines = self._coll(keys.PIPELINES)
        if version is None:
            return pipelines.delete_many({"pipeline_id": pipeline_id}).deleted_count
        return pipelines.delete_one({"_id": f"{pipeline_id}@{version}"}).deleted_count

    # executions --------------------------------------------------------------
    @_reachable
    def insert_execution(self, record: ExecutionRecord) -> None:
        try:
            self._coll(keys.EXECUTIONS).insert_one(_execution_doc(record))
        except DuplicateKeyError as e:
            raise ConflictError(f"execution {record.execution_id} exists") from e

    @_reachable
    def insert_executions(self, records: list[ExecutionRecord]) -> None:
        if not records:
            return
        docs = [_execution_doc(r) for r in records]
        try:
            self._coll(keys.EXECUTIONS).insert_many(docs, ordered=True)
        except (DuplicateKeyError, BulkWriteError) as e:
            # Ordered: those before the duplicate went in; take them back.
            ids = [d["_id"] for d in docs]
            mine = (
                ids[: e.details.get("nInserted", len(ids))] if isinstance(e, BulkWriteError) else []
            )
            self._coll(keys.EXECUTIONS).delete_many({"_id": {"$in": mine}})
            raise ConflictError("an execution of this batch exists") from e

    @_reachable
    def save_execution(self, record: ExecutionRecord) -> bool:
        doc = _execution_doc(record)
        match: dict[str, Any] = {"_id": doc["_id"]}
        if not record.status.terminal:  # an ended record stays ended
            match["status"] = {"$nin": [s.value for s in ExecutionStatus if s.terminal]}
        try:
            self._coll(keys.EXECUTIONS).replace_one(match, doc, upsert=True)
        except DuplicateKeyError:  # it exists, and has ended: the upsert found no match
            return False
        return True

    @_reachable
    def save_executions(self, records: list[ExecutionRecord]) -> list[bool]:
        # One replace each: what a bulk write would save in round trips, the
        # dispatcher's batching already saves in thread hand-offs.
        return [self.save_execution(r) for r in records]

    @_reachable
    def delete_execution(self, execution_id: str) -> None:
        self._coll(keys.EXECUTIONS).delete_one({"_id": execution_id})

    @_reachable
    def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        return _load(ExecutionRecord, self._coll(keys.EXECUTIONS).find_one({"_id": execution_id}))

    @_reachable
    def list_executions(
        self, status: ExecutionStatus | None = None, limit: int = 50, target: str | None = None
    ) -> list[ExecutionRecord]:
        if limit == 0:  # MongoDB reads a zero limit as "no limit"; SQLite as none
            return []
        query: dict[str, Any] = {}
        if status is not None:
            query["status"] = ExecutionStatus(status).value
        if target is not None:
            query["target"] = target
        cursor = (
            self._coll(keys.EXECUTIONS)
            .find(query)
            .sort([("submitted_at", -1), ("execution_id", -1)])
        )
        if limit > 0:  # a negative limit means all, as in SQLite
            cursor = cursor.limit(limit)
        return [_load(ExecutionRecord, d) for d in cursor]

    @_reachable
    def old_executions(self, before: float, limit: int = 500) -> list[ExecutionRecord]:
        finished = [s.value for s in ExecutionStatus if s.terminal]
        cursor = (
            self._coll(keys.EXECUTIONS)
            .find({"status": {"$in": finished}, "submitted_at": {"$lt": before}})
            .sort([("submitted_at", 1), ("_id", 1)])
            .limit(limit)
        )
        return [_load(ExecutionRecord, d) for d in cursor]

    @_reachable
    def delete_executions(self, execution_ids: list[str]) -> int:
        if not execution_ids:
            return 0
        result = self._coll(keys.EXECUTIONS).delete_many({"_id": {"$in": execution_ids}})
        return result.deleted_count

    def scan_executions(self, batch: int = 500) -> Iterator[ExecutionRecord]:
        after = ""
        while True:  # by _id, a page at a time: no cursor stays open between pages
            page = self._page(after, batch)
            if not page:
                return
            yield from page
            after = page[-1].execution_id

    @_reachable
    def _page(self, after: str, batch: int) -> list[ExecutionRecord]:
        cursor = (
            self._coll(keys.EXECUTIONS).find({"_id": {"$gt": after}}).sort("_id", 1).limit(batch)
        )
        return [_load(ExecutionRecord, d) for d in cursor]

    # workers -----------------------------------------------------------------
    @_reachable
    def put_worker(self, record: WorkerRecord) -> None:
        doc = _doc(record, record.worker_id)
        self._coll(keys.WORKERS).replace_one({"_id": doc["_id"]}, doc, upsert=True)

    @_reachable
    def list_workers(self) -> list[WorkerRecord]:
        return [_load(WorkerRecord, d) for d in self._coll(keys.WORKERS).find().sort("_id", 1)]

    @_reachable
    def delete_worker(self, worker_id: str) -> None:
        self._coll(keys.WORKERS).delete_one({"_id": worker_id})

    def close(self) -> None:
        self._client.close()


def _doc(record: Any, _id: str) -> dict[str, Any]:
    return {**record.model_dump(mode="json"), "_id": _id}


def _execution_doc(record: ExecutionRecord) -> dict[str, Any]:
    return {**_doc(record, record.execution_id), "target": record.target}


_M = TypeVar("_M", TaskRecord, PipelineRecord, ExecutionRecord, WorkerRecord)


def _load(model: type[_M], doc: dict[str, Any] | None) -> _M | None:
    if doc is None:
        return None
    doc.pop("_id", None)
    if model is ExecutionRecord:
        doc.pop("target", None)
    return model.model_validate(doc)
