"""The record store contract, run against every implementation.

Each backend is one entry in ``BACKENDS``; every test in this file except the
ones marked as backend-specific runs against each of them.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestrator import keys
from orchestrator.errors import ConflictError, StoreUnavailable
from orchestrator.models import (
    ExecutionRecord,
    ExecutionStatus,
    PipelineRecord,
    TaskRecord,
    WorkerRecord,
    new_execution_id,
)
from orchestrator.records import RecordStore
from orchestrator.records.mongo import MongoRecordStore
from orchestrator.records.sqlite import SqliteRecordStore


def _sqlite(tmp_path: Path) -> RecordStore:
    return SqliteRecordStore(tmp_path / "records.db")


def _mongo(tmp_path: Path) -> RecordStore:
    # Each mongomock client is its own server; the unique name guards against sharing anyway.
    return MongoRecordStore.from_uri("mongomock://localhost", f"test_{uuid.uuid4().hex}")


# One factory per backend: (tmp_path) -> a fresh, empty store.
BACKENDS: dict[str, Callable[[Path], RecordStore]] = {
    "sqlite": _sqlite,
    "mongo": _mongo,
}


@pytest.fixture(params=sorted(BACKENDS))
def store(request, tmp_path) -> Iterator[RecordStore]:
    s = BACKENDS[request.param](tmp_path)
    yield s
    s.close()


def task(task_id: str, version: str, registered_at: float) -> TaskRecord:
    return TaskRecord(
        task_id=task_id,
        version=version,
        sha256=f"{task_id}-{version}-sha",
        size=123,
        object_key=f"tasks/{task_id}/{version}/x.tar.gz",
        registered_at=registered_at,
        spec={"task_id": task_id, "name": task_id, "version": version, "entry_point": "t.T"},
    )


def execution(
    submitted_at: float,
    task_id: str = "face_detection",
    status: ExecutionStatus = ExecutionStatus.QUEUED,
    pipeline_id: str | None = None,
) -> ExecutionRecord:
    return ExecutionRecord(
        execution_id=new_execution_id(submitted_at),
        kind="pipeline" if pipeline_id else "task",
        task_id=None if pipeline_id else task_id,
        pipeline_id=pipeline_id,
        status=status,
        input={"image_path": "/data/test.jpg"},
        submitted_at=submitted_at,
    )


def worker(worker_id: str, processed: int = 0) -> WorkerRecord:
    return WorkerRecord(
        worker_id=worker_id,
        task_id="face_detection",
        version="1.0.0",
        state="idle",
        processed=processed,
        heartbeat_at=1000.0 + processed,
    )


def pipeline(pipeline_id: str, version: str, registered_at: float) -> PipelineRecord:
    return PipelineRecord(
        pipeline_id=pipeline_id,
        version=version,
        sha256=f"sha-{pipeline_id}-{version}",
        object_key=f"pipelines/{pipeline_id}/{version}.json",
        registered_at=registered_at,
        spec={"pipeline_id": pipeline_id, "steps": [{"task_id": "face_detection"}]},
    )


# pipelines -----------------------------------------------------------------
def test_pipelines_are_versioned_like_tasks(store):
    first = pipeline("face_processing_pipeline", "1.0.0", registered_at=100.0)
    store.put_pipeline(first)
    store.put_pipeline(pipeline("face_processing_pipeline", "2.0.0", registered_at=200.0))
    store.put_pipeline(pipeline("text_pipeline", "1.0.0", registered_at=150.0))

    assert store.get_pipeline("face_processing_pipeline").version == "2.0.0"
    assert store.get_pipeline("face_processing_pipeline", "1.0.0") == first
    assert store.get_pipeline("nope") is None
    assert [(p.pipeline_id, p.version) for p in store.list_pipelines()] == [
        ("face_processing_pipeline", "1.0.0"),
        ("face_processing_pipeline", "2.0.0"),
        ("text_pipeline", "1.0.0"),
    ]
    assert store.delete_pipeline("face_processing_pipeline", "2.0.0") == 1
    assert store.get_pipeline("face_processing_pipeline").version == "1.0.0"
    assert store.delete_pipeline("face_processing_pipeline") == 1
    assert [p.pipeline_id for p in store.list_pipelines()] == ["text_pipeline"]


# tasks ---------------------------------------------------------------------
def test_get_task_without_version_returns_the_latest_registered(store):
    # Registration time decides, not the version string or insertion order.
    store.put_task(task("face_detection", "2.0.0", registered_at=100.0))
    store.put_task(task("face_detection", "10.0.0", registered_at=300.0))
    store.put_task(task("face_detection", "3.0.0", registered_at=200.0))

    assert store.get_task("face_detection").version == "10.0.0"


def test_get_task_with_version_returns_that_version(store):
    old = task("face_detection", "1.0.0", registered_at=100.0)
    store.put_task(old)
    store.put_task(task("face_detection", "2.0.0", registered_at=200.0))

    assert store.get_task("face_detection", "1.0.0") == old


def test_get_task_unknown_is_none(store):
    store.put_task(task("face_detection", "1.0.0", registered_at=100.0))

    assert store.get_task("nope") is None
    assert store.get_task("face_detection", "9.9.9") is None


def test_put_task_replaces_the_same_version(store):
    store.put_task(task("face_detection", "1.0.0", registered_at=100.0))
    replaced = task("face_detection", "1.0.0", registered_at=150.0).model_copy(
        update={"sha256": "new-sha"}
    )
    store.put_task(replaced)

    assert store.get_task("face_detection", "1.0.0") == replaced
    assert len(store.list_tasks()) == 1


def test_list_tasks_orders_by_task_id_then_registration_time(store):
    store.put_task(task("ocr", "1.0.0", registered_at=50.0))
    store.put_task(task("face_detection", "2.0.0", registered_at=200.0))
    store.put_task(task("face_detection", "1.0.0", registered_at=100.0))
    store.put_task(task("asr", "1.0.0", registered_at=300.0))

    assert [(t.task_id, t.version) for t in store.list_tasks()] == [
        ("asr", "1.0.0"),
        ("face_detection", "1.0.0"),
        ("face_detection", "2.0.0"),
        ("ocr", "1.0.0"),
    ]


def test_delete_task_one_version_keeps_the_others(store):
    store.put_task(task("face_detection", "1.0.0", registered_at=100.0))
    store.put_task(task("face_detection", "2.0.0", registered_at=200.0))

    assert store.delete_task("face_detection", "2.0.0") == 1

    assert store.get_task("face_detection", "2.0.0") is None
    assert store.get_task("face_detection").version == "1.0.0"


def test_delete_task_without_version_deletes_every_version_of_that_task_only(store):
    store.put_task(task("face_detection", "1.0.0", registered_at=100.0))
    store.put_task(task("face_detection", "2.0.0", registered_at=200.0))
    store.put_task(task("ocr", "1.0.0", registered_at=300.0))

    assert store.delete_task("face_detection") == 2

    assert store.get_task("face_detection") is None
    assert [t.task_id for t in store.list_tasks()] == ["ocr"]
    assert store.delete_task("face_detection") == 0


# executions ------------------------------------------------------------------
def test_inserted_execution_reads_back_whole(store):
    record = execution(1000.0)
    store.insert_execution(record)

    assert store.get_execution(record.execution_id) == record


def test_insert_execution_with_an_existing_id_raises_and_keeps_the_first(store):
    first = execution(1000.0)
    store.insert_execution(first)
    again = first.model_copy(update={"status": ExecutionStatus.FAILED})

    with pytest.raises(ConflictError):
        store.insert_execution(again)

    assert store.get_execution(first.execution_id) == first


def test_save_execution_replaces_the_record_as_a_whole(store):
    record = execution(1000.0)
    store.insert_execution(record)
    finished = record.model_copy(
        update={
            "status": ExecutionStatus.SUCCEEDED,
            "finished_at": 1005.0,
            "result": {"face_count": 2},
            "input": None,
        }
    )
    store.save_execution(finished)

    assert store.get_execution(record.execution_id) == finished
    assert store.list_executions(status=ExecutionStatus.QUEUED) == []
    assert store.list_executions(status=ExecutionStatus.SUCCEEDED) == [finished]


def test_an_ended_execution_is_not_replaced_by_one_that_has_not_ended(store):
    # A dispatcher starting a job writes "running" without reading first: if a
    # cancel got there first, the cancel stands and the dispatcher is told.
    record = execution(1000.0)
    store.insert_execution(record)
    cancelled = record.model_copy(update={"status": ExecutionStatus.CANCELLED})
    assert store.save_execution(cancelled) is True
    running = record.model_copy(update={"status": ExecutionStatus.RUNNING, "deliveries": 1})

    assert store.save_execution(running) is False
    assert store.get_execution(record.execution_id) == cancelled
    # An ended record may replace an ended one (the dispatcher's own terminal write).
    failed = cancelled.model_copy(update={"status": ExecutionStatus.FAILED})
    assert store.save_execution(failed) is True
    assert store.get_execution(record.execution_id) == failed


def test_save_executions_writes_a_batch_and_says_which_were_written(store):
    queued, ended, new = execution(1000.0), execution(1001.0), execution(1002.0)
    store.insert_execution(queued)
    store.insert_execution(ended.model_copy(update={"status": ExecutionStatus.SUCCEEDED}))
    batch = [r.model_copy(update={"status": ExecutionStatus.RUNNING}) for r in (queued, ended, new)]

    assert store.save_executions(batch) == [True, False, True]
    assert store.get_execution(queued.execution_id) == batch[0]
    assert store.get_execution(ended.execution_id).status == ExecutionStatus.SUCCEEDED
    assert store.get_execution(new.execution_id) == batch[2]  # saved: inserted
    assert store.save_executions([]) == []


def test_insert_executions_inserts_a_batch_or_none_of_it(store):
    batch = [execution(2000.0 + i) for i in range(5)]
    store.insert_executions(batch)
    assert [store.get_execution(r.execution_id) for r in batch] == batch

    fresh = [execution(3000.0 + i) for i in range(3)]
    with pytest.raises(ConflictError):
        store.insert_executions([*fresh, batch[0]])  # the last one exists
    assert [store.get_execution(r.execution_id) for r in fresh] == [None] * 3
    store.insert_executions([])


def test_delete_execution_forgets_only_that_one(store):
    kept, gone = execution(1000.0), execution(1001.0)
    store.insert_execution(kept)
    store.insert_execution(gone)
    store.delete_execution(gone.execution_id)
    store.delete_execution(new_execution_id())  # unknown: nothing to do

    assert store.get_execution(gone.execution_id) is None
    assert store.list_executions() == [kept]


def test_get_execution_missing_is_none(store):
    assert store.get_execution(new_execution_id()) is None


def test_list_executions_newest_first(store):
    records = [execution(t) for t in (1002.0, 1000.0, 1003.0, 1001.0)]
    for r in records:
        store.insert_execution(r)

    listed = store.list_executions()

    assert [r.submitted_at for r in listed] == [1003.0, 1002.0, 1001.0, 1000.0]


def test_list_executions_filters_by_status(store):
    queued = execution(1000.0)
    failed = execution(1001.0, status=ExecutionStatus.FAILED)
    running = execution(1002.0, status=ExecutionStatus.RUNNING)
    failed_later = execution(1003.0, status=ExecutionStatus.FAILED)
    for r in (queued, failed, running, failed_later):
        store.insert_execution(r)

    assert store.list_executions(status=ExecutionStatus.FAILED) == [failed_later, failed]
    assert store.list_executions(status=ExecutionStatus.CANCELLED) == []


def test_list_executions_filters_by_task_or_pipeline_id(store):
    faces = execution(1000.0, task_id="face_detection")
    ocr = execution(1001.0, task_id="ocr")
    pipeline = execution(1002.0, pipeline_id="face_processing_pipeline")
    faces_later = execution(1003.0, task_id="face_detection", status=ExecutionStatus.FAILED)
    for r in (faces, ocr, pipeline, faces_later):
        store.insert_execution(r)

    assert store.list_executions(target="face_detection") == [faces_later, faces]
    assert store.list_executions(target="face_processing_pipeline") == [pipeline]
    assert store.list_executions(status=ExecutionStatus.QUEUED, target="face_detection") == [faces]


def test_list_executions_limit_keeps_the_newest(store):
    for t in range(10):
        store.insert_execution(execution(1000.0 + t))

    listed = store.list_executions(limit=3)

    assert [r.submitted_at for r in listed] == [1009.0, 1008.0, 1007.0]


def test_list_executions_limit_zero_lists_nothing(store):
    store.insert_execution(execution(1000.0))

    assert store.list_executions(limit=0) == []


# workers -----------------------------------------------------------------------
def test_old_executions_are_finished_ones_submitted_before_the_cutoff_oldest_first(store):
    S = ExecutionStatus
    old = [
        execution(100.0 + n, status=s) for n, s in enumerate([S.FAILED, S.SUCCEEDED, S.CANCELLED])
    ]
    still_running = execution(50.0, status=S.RUNNING)
    still_queued = execution(60.0, status=S.QUEUED)
    new = execution(500.0, status=S.SUCCEEDED)
    for record in [*reversed(old), still_running, still_queued, new]:
        store.insert_execution(record)

    found = store.old_executions(before=400.0)

    assert [r.execution_id for r in found] == [r.execution_id for r in old]
    assert [r.execution_id for r in store.old_executions(before=400.0, limit=2)] == [
        r.execution_id for r in old[:2]
    ]
    assert store.old_executions(before=100.0) == []


def test_delete_executions_forgets_exactly_those(store):
    records = [execution(100.0 + n, status=ExecutionStatus.SUCCEEDED) for n in range(4)]
    for record in records:
        store.insert_execution(record)

    gone = store.delete_executions([records[0].execution_id, records[2].execution_id, "nope"])

    assert gone == 2
    left = {r.execution_id for r in store.list_executions(limit=-1)}
    assert left == {records[1].execution_id, records[3].execution_id}
    assert store.delete_executions([]) == 0


def test_scan_executions_reads_every_record_once_across_pages(store):
    records = [execution(100.0 + n) for n in range(7)]
    for record in records:
        store.insert_execution(record)

    scanned = [r.execution_id for r in store.scan_executions(batch=3)]

    assert sorted(scanned) == sorted(r.execution_id for r in records)
    assert len(scanned) == len(set(scanned))


def test_put_worker_replaces_and_list_orders_by_id(store):
    store.put_worker(worker("w-b"))
    store.put_worker(worker("w-a"))
    store.put_worker(worker("w-b", processed=7))

    workers = store.list_workers()

    assert [w.worker_id for w in workers] == ["w-a", "w-b"]
    assert workers[1] == worker("w-b", processed=7)


def test_delete_worker_forgets_only_that_worker(store):
    store.put_worker(worker("w-a"))
    store.put_worker(worker("w-b"))

    store.delete_worker("w-a")
    store.delete_worker("never-reported")

    assert [w.worker_id for w in store.list_workers()] == ["w-b"]


# sqlite only -----------------------------------------------------------------
def test_sqlite_data_survives_reopening_the_file(tmp_path):
    path = tmp_path / "nested" / "records.db"
    first = SqliteRecordStore(path)
    t = task("face_detection", "1.0.0", registered_at=100.0)
    e = execution(1000.0)
    w = worker("w-a", processed=3)
    first.put_task(t)
    first.insert_execution(e)
    first.put_worker(w)
    first.close()

    reopened = SqliteRecordStore(path)
    try:
        assert reopened.get_task("face_detection") == t
        assert reopened.get_execution(e.execution_id) == e
        assert reopened.list_workers() == [w]
    finally:
        reopened.close()


def test_sqlite_locked_past_its_timeout_is_unavailable_and_nothing_is_written(tmp_path):
    path = tmp_path / "records.db"
    store = SqliteRecordStore(path, timeout_s=0.2)
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # another process holding the write lock
    record = execution(1000.0)
    try:
        with pytest.raises(StoreUnavailable, match="database is locked"):
            store.insert_execution(record)
        with pytest.raises(StoreUnavailable, match="database is locked"):
            store.save_executions([record, execution(1001.0)])
    finally:
        locker.execute("ROLLBACK")
        locker.close()

    assert store.get_execution(record.execution_id) is None
    store.insert_execution(record)  # the lock is gone: the same call succeeds
    assert store.get_execution(record.execution_id) == record
    store.close()


# MongoDB only ------------------------------------------------------------------
def test_mongo_creates_its_indexes_on_first_use():
    store = MongoRecordStore.from_uri("mongomock://localhost", f"test_{uuid.uuid4().hex}")
    try:
        store.list_workers()
        executions = store._db[keys.EXECUTIONS].index_information()
        tasks = store._db[keys.TASKS].index_information()
    finally:
        store.close()

    assert {tuple(i["key"]) for i in executions.values()} >= {
        (("status", 1), ("submitted_at", -1)),
        (("target", 1), ("submitted_at", -1)),
        (("submitted_at", -1),),
    }
    assert (("task_id", 1), ("registered_at", -1)) in {tuple(i["key"]) for i in tasks.values()}
