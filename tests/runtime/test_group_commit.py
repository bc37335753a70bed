"""Group commit: concurrent jobs' record writes share transactions, each caller
still learns its own outcome."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest

from orchestrator.models import ExecutionRecord, ExecutionStatus, new_execution_id
from orchestrator.records.sqlite import SqliteRecordStore
from orchestrator.runtime.store import GroupCommit


class CountingStore(SqliteRecordStore):
    """A real SQLite store that counts its transactions."""

    transactions = 0

    def save_executions(self, records):
        self.transactions += 1
        return super().save_executions(records)


def record(status: ExecutionStatus = ExecutionStatus.RUNNING) -> ExecutionRecord:
    return ExecutionRecord(
        execution_id=new_execution_id(),
        kind="task",
        task_id="t",
        status=status,
        submitted_at=time.time(),
    )


def test_concurrent_writes_share_transactions_and_all_land(tmp_path):
    store = CountingStore(tmp_path / "records.db")
    records = [record() for _ in range(200)]

    async def scenario():
        writes = GroupCommit(store)
        return await asyncio.gather(*(writes.save(r) for r in records))

    assert asyncio.run(scenario()) == [True] * 200
    assert [store.get_execution(r.execution_id) for r in records] == records
    assert store.transactions < 20  # 200 writes, a handful of batches


def test_an_unwritable_record_fails_only_its_own_write(tmp_path):
    store = CountingStore(tmp_path / "records.db")
    good = [record() for _ in range(5)]
    bad = record().model_copy(update={"result": {"x": object()}})  # not serializable

    async def scenario():
        writes = GroupCommit(store)
        return await asyncio.gather(
            *(writes.save(r) for r in [*good[:2], bad, *good[2:]]), return_exceptions=True
        )

    outcomes = asyncio.run(scenario())
    assert outcomes[:2] + outcomes[3:] == [True] * 5
    assert isinstance(outcomes[2], Exception) and "object" in str(outcomes[2])
    assert [store.get_execution(r.execution_id) for r in good] == good
    assert store.get_execution(bad.execution_id) is None


def test_a_write_refused_because_the_execution_ended_says_so(tmp_path):
    store = SqliteRecordStore(tmp_path / "records.db")
    ended = record(ExecutionStatus.CANCELLED)
    store.insert_execution(ended)
    starting = ended.model_copy(update={"status": ExecutionStatus.RUNNING})

    async def scenario():
        return await GroupCommit(store).save(starting)

    assert asyncio.run(scenario()) is False
    assert store.get_execution(ended.execution_id).status == ExecutionStatus.CANCELLED


def test_a_locked_store_holds_the_batch_until_it_is_free(tmp_path):
    path = tmp_path / "records.db"
    store = CountingStore(path, timeout_s=0.05)
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # another process holding the write lock
    records = [record() for _ in range(10)]

    async def scenario():
        writes = GroupCommit(store)
        pending = asyncio.gather(*(writes.save(r) for r in records))
        while store.transactions < 3:  # tried, and failed on the lock, three times
            await asyncio.sleep(0.01)
        assert not pending.done()
        locker.execute("ROLLBACK")
        return await asyncio.wait_for(pending, 30)

    try:
        assert asyncio.run(scenario()) == [True] * 10
    finally:
        locker.close()
    assert [store.get_execution(r.execution_id) for r in records] == records


@pytest.fixture(autouse=True)
def _quiet_retry_warnings(caplog):
    caplog.set_level("ERROR", logger="wtm.store")
