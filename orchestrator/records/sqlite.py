"""SQLite record store: the embedded default (one file, WAL, indexed columns).

Each record is stored whole as JSON next to the columns that are filtered or
sorted on, so the schema never lags behind the pydantic models.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from orchestrator.errors import ConflictError, StackError, StoreUnavailable
from orchestrator.models import (
    ExecutionRecord,
    ExecutionStatus,
    PipelineRecord,
    TaskRecord,
    WorkerRecord,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT NOT NULL, version TEXT NOT NULL, registered_at REAL NOT NULL,
    doc TEXT NOT NULL, PRIMARY KEY (task_id, version));
CREATE TABLE IF NOT EXISTS pipelines (
    pipeline_id TEXT NOT NULL, version TEXT NOT NULL, registered_at REAL NOT NULL,
    doc TEXT NOT NULL, PRIMARY KEY (pipeline_id, version));
CREATE TABLE IF NOT EXISTS executions (
    execution_id TEXT PRIMARY KEY, status TEXT NOT NULL, target TEXT,
    submitted_at REAL NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS executions_status ON executions (status, submitted_at);
CREATE INDEX IF NOT EXISTS executions_target ON executions (target, submitted_at);
CREATE TABLE IF NOT EXISTS workers (
    worker_id TEXT PRIMARY KEY, task_id TEXT, heartbeat_at REAL, doc TEXT NOT NULL);
"""


def _reachable(cls: type) -> type:
    """Turn "database is locked" into StoreUnavailable, any other failure into StackError.

    A writer waits ``timeout_s`` for another's lock first; past that the store
    counts as unavailable for now, which callers may retry (the dispatcher
    does). A file that cannot be opened or a missing table will not clear by
    waiting: those are reported, not retried.
    """

    def wrap(method):
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            try:
                return method(self, *args, **kwargs)
            except sqlite3.OperationalError as e:
                if "locked" in str(e) or "busy" in str(e):  # another writer: try again later
                    raise StoreUnavailable(f"records store {self.path} unavailable: {e}") from e
                raise StackError(f"records store {self.path}: {e}") from e

        return wrapper

    for name, value in list(vars(cls).items()):
        if callable(value) and not name.startswith("_") and name != "close":
            setattr(cls, name, wrap(value))
    return cls


@_reachable
class SqliteRecordStore:
    """Record store in one SQLite file, safe across threads and processes."""

    def __init__(self, path: str | Path, timeout_s: float = 10.0):
        self.path = Path(path)
        self.timeout_s = timeout_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as conn:
            conn.executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        # One connection per thread: sqlite3 connections must not be shared.
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    # tasks -----------------------------------------------------------------
    def put_task(self, record: TaskRecord) -> None:
        self._conn().execute(
            "INSERT OR REPLACE INTO tasks VALUES (?, ?, ?, ?)",
            (record.task_id, record.version, record.registered_at, record.model_dump_json()),
        )

    def get_task(self, task_id: str, version: str | None = None) -> TaskRecord | None:
        if version is None:
            row = (
                self._conn()
                .execute(
                    "SELECT doc FROM tasks WHERE task_id = ? ORDER BY registered_at DESC LIMIT 1",
                    (task_id,),
                )
                .fetchone()
            )
        else:
            row = (
                self._conn()
                .execute(
                    "SELECT doc FROM tasks WHERE task_id = ? AND version = ?", (task_id, version)
                )
                .fetchone()
            )
        return TaskRecord.model_validate_json(row[0]) if row else None

    def list_tasks(self) -> list[TaskRecord]:
        rows = self._conn().execute("SELECT doc FROM tasks ORDER BY task_id, registered_at")
        return [TaskRecord.model_validate_json(r[0]) for r in rows]

    def delete_task(self, task_id: str, version: str | None = None) -> int:
        if version is None:
            cur = self._conn().execute("DELETE FROM tasks WHERE task_id = ?", (task_id,))
        else:
            cur = self._conn().execute(
                "DELETE FROM tasks WHERE task_id = ? AND version = ?", (task_id, version)
            )
        return cur.rowcount

    # pipelines ---------------------------------------------------------------
    def put_pipeline(self, record: PipelineRecord) -> None:
        self._conn().execute(
            "INSERT OR REPLACE INTO pipelines VALUES (?, ?, ?, ?)",
            (record.pipeline_id, record.version, record.registered_at, record.model_dump_json()),
        )

    def get_pipeline(self, pipeline_id: str, version: str | None = None) -> PipelineRecord | None:
        if version is None:
            row = (
                self._conn()
                .execute(
                    "SELECT doc FROM pipelines WHERE pipeline_id = ? "
                    "ORDER BY registered_at DESC LIMIT 1",
                    (pipeline_id,),
                )
                .fetchone()
            )
        else:
            row = (
                self._conn()
                .execute(
                    "SELECT doc FROM pipelines WHERE pipeline_id = ? AND version = ?",
                    (pipeline_id, version),
                )
                .fetchone()
            )
        return PipelineRecord.model_validate_json(row[0]) if row else None

    def list_pipelines(self) -> list[PipelineRecord]:
        rows = self._conn().execute("SELECT doc FROM pipelines ORDER BY pipeline_id, registered_at")
        return [PipelineRecord.model_validate_json(r[0]) for r in rows]

    def delete_pipeline(self, pipeline_id: str, version: str | None = None) -> int:
        sql, args = "DELETE FROM pipelines WHERE pipeline_id = ?", [pipeline_id]
        if version is not None:
            sql, args = sql + " AND version = ?", [*args, version]
        return self._conn().execute(sql, args).rowcount

    # executions --------------------------------------------------------------
    def insert_execution(self, record: ExecutionRecord) -> None:
        try:
            self._conn().execute("INSERT INTO executions VALUES (?, ?, ?, ?, ?)", _row(record))
        except sqlite3.IntegrityError as e:
            raise ConflictError(f"execution {record.execution_id} exists") from e

    def insert_executions(self, records: list[ExecutionRecord]) -> None:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("INSERT INTO executions VALUES (?, ?, ?, ?, ?)", map(_row, records))
        except sqlite3.IntegrityError as e:
            conn.execute("ROLLBACK")
            raise ConflictError(f"an execution of this batch exists ({e})") from e
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def save_execution(self, record: ExecutionRecord) -> bool:
        return self.save_executions([record])[0]

    def save_executions(self, records: list[ExecutionRecord]) -> list[bool]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")  # the write lock now (or StoreUnavailable after timeout_s)
        try:
            written = [conn.execute(_SAVE, _row(r)).rowcount == 1 for r in records]
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")  # one commit for the batch
        return written

    def delete_execution(self, execution_id: str) -> None:
        self._conn().execute("DELETE FROM executions WHERE execution_id = ?", (execution_id,))

    def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        row = (
            self._conn()
            .execute("SELECT doc FROM executions WHERE execution_id = ?", (execution_id,))
            .fetchone()
        )
        return ExecutionRecord.model_validate_json(row[0]) if row else None

    def list_executions(
        self, status: ExecutionStatus | None = None, limit: int = 50, target: str | None = None
    ) -> list[ExecutionRecord]:
        where, args = [], []
        if status is not None:
            where.append("status = ?")
            args.append(ExecutionStatus(status).value)
        if target is not None:
            where.append("target = ?")
            args.append(target)
        sql = "SELECT doc FROM executions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY submitted_at DESC, execution_id DESC LIMIT ?"
        rows = self._conn().execute(sql, (*args, limit))
        return [ExecutionRecord.model_validate_json(r[0]) for r in rows]

    def old_executions(self, before: float, limit: int = 500) -> list[ExecutionRecord]:
        finished = [s.value for s in ExecutionStatus if s.terminal]
        rows = self._conn().execute(
            f"SELECT doc FROM executions WHERE status IN ({', '.join('?' * len(finished))}) "
            "AND submitted_at < ? ORDER BY submitted_at, execution_id LIMIT ?",
            (*finished, before, limit),
        )
        return [ExecutionRecord.model_validate_json(r[0]) for r in rows]

    def delete_executions(self, execution_ids: list[str]) -> int:
        deleted = 0
        for start in range(0, len(execution_ids), 500):  # SQLite caps bound parameters
            chunk = execution_ids[start : start + 500]
            deleted += (
                self._conn()
                .execute(
                    f"DELETE FROM executions WHERE execution_id IN ({', '.join('?' * len(chunk))})",
                    chunk,
                )
                .rowcount
            )
        return deleted

    def scan_executions(self, batch: int = 500) -> Iterator[ExecutionRecord]:
        after = ""
        while True:  # by id, a page at a time: no read stays open between pages
            rows = (
                self._conn()
                .execute(
                    "SELECT execution_id, doc FROM executions WHERE execution_id > ? "
                    "ORDER BY execution_id LIMIT ?",
                    (after, batch),
                )
                .fetchall()
            )
            if not rows:
                return
            yield from (ExecutionRecord.model_validate_json(doc) for _, doc in rows)
            after = rows[-1][0]

    # workers -----------------------------------------------------------------
    def put_worker(self, record: WorkerRecord) -> None:
        self._conn().execute(
            "INSERT OR REPLACE INTO workers VALUES (?, ?, ?, ?)",
            (record.worker_id, record.task_id, record.heartbeat_at, record.model_dump_json()),
        )

    def list_workers(self) -> list[WorkerRecord]:
        rows = self._conn().execute("SELECT doc FROM workers ORDER BY worker_id")
        return [WorkerRecord.model_validate_json(r[0]) for r in rows]

    def delete_worker(self, worker_id: str) -> None:
        self._conn().execute("DELETE FROM workers WHERE worker_id = ?", (worker_id,))

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


_ENDED = ", ".join(f"'{s.value}'" for s in ExecutionStatus if s.terminal)
# Insert or replace, except an ended record by one that has not ended.
_SAVE = f"""
INSERT INTO executions VALUES (?, ?, ?, ?, ?)
ON CONFLICT (execution_id) DO UPDATE SET
    status = excluded.status, target = excluded.target,
    submitted_at = excluded.submitted_at, doc = excluded.doc
WHERE executions.status NOT IN ({_ENDED}) OR excluded.status IN ({_ENDED})
"""


def _row(record: ExecutionRecord) -> tuple:
    return (
        record.execution_id,
        record.status.value,
        record.target,
        record.submitted_at,
        record.model_dump_json(),
    )
