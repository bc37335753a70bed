"""Grouped work: concurrent jobs' record writes share transactions; each caller
still learns its own outcome."""

from __future__ import annotations

import asyncio
import sqlite3
import time

from orchestrator.models import ExecutionRecord, ExecutionStatus, new_execution_id
from orchestrator.objects.local import LocalObjectStore
from orchestrator.records.sqlite import SqliteRecordStore
from orchestrator.resilience import async_redis
from orchestrator.runtime.grouped import Grouped
from orchestrator.runtime.store import RecordsRunStore


class CountingStore(SqliteRecordStore):
    """A real SQLite store that counts its transactions."""

    transactions = 0

    def save_executions(self, records):
        self.transactions += 1
        return super().save_executions(records)


def run_store(records, tmp_path) -> RecordsRunStore:
    # The Redis client connects on first use: these tests never use it.
    redis = async_redis("redis://127.0.0.1:1")
    return RecordsRunStore(records, LocalObjectStore(tmp_path / "objects"), redis, 0)


def record(status: ExecutionStatus = ExecutionStatus.RUNNING) -> ExecutionRecord:
    return ExecutionRecord(
        execution_id=new_execution_id(),
        kind="task",
        task_id="t",
        status=status,
        submitted_at=time.time(),
    )


def test_items_arriving_while_a_batch_is_under_way_go_together():
    batches: list[list[int]] = []
    release = asyncio.Event()

    async def flush(items):
        batches.append(items)
        await release.wait()  # under way: the others arrive meanwhile
        return [i * 10 if i != 3 else ValueError("three") for i in items]

    async def scenario():
        grouped = Grouped(flush)
        first = asyncio.ensure_future(grouped(0))
        while not batches:  # the first batch is out, alone
            await asyncio.sleep(0)
        rest = [asyncio.ensure_future(grouped(i)) for i in range(1, 6)]
        await asyncio.sleep(0)
        release.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    outcomes = asyncio.run(scenario())
    assert outcomes[:3] + outcomes[4:] == [0, 10, 20, 40, 50]
    assert isinstance(outcomes[3], ValueError)  # only its own caller sees it
    assert batches == [[0], [1, 2, 3, 4, 5]]  # the first went alone, the rest together


def test_concurrent_record_writes_share_transactions_and_all_land(tmp_path):
    records = CountingStore(tmp_path / "records.db")
    batch = [record() for _ in range(200)]

    async def scenario():
        store = run_store(records, tmp_path)
        return await asyncio.gather(*(store.writes((r, None)) for r in batch))

    assert asyncio.run(scenario()) == [True] * 200
    assert [records.get_execution(r.execution_id) for r in batch] == batch
    assert records.transactions < 20  # 200 writes, a handful of transactions


def test_an_unwritable_record_fails_only_its_own_write(tmp_path):
    records = SqliteRecordStore(tmp_path / "records.db")
    good = [record() for _ in range(5)]
    bad = record().model_copy(update={"result": {"x": object()}})  # not serializable

    async def scenario():
        store = run_store(records, tmp_path)
        writes = [store.writes((r, None)) for r in [*good[:2], bad, *good[2:]]]
        return await asyncio.gather(*writes, return_exceptions=True)

    outcomes = asyncio.run(scenario())
    assert outcomes[:2] + outcomes[3:] == [True] * 5
    assert isinstance(outcomes[2], Exception) and "object" in str(outcomes[2])
    assert [records.get_execution(r.execution_id) for r in good] == good
    assert records.get_execution(bad.execution_id) is None


def test_a_write_refused_because_the_execution_ended_says_so(tmp_path):
    records = SqliteRecordStore(tmp_path / "records.db")
    ended = record(ExecutionStatus.CANCELLED)
    records.insert_execution(ended)
    starting = ended.model_copy(update={"status": ExecutionStatus.RUNNING})

    async def scenario():
        return await run_store(records, tmp_path).writes((starting, None))

    assert asyncio.run(scenario()) is False
    assert records.get_execution(ended.execution_id).status == ExecutionStatus.CANCELLED


def test_a_locked_store_holds_the_batch_until_it_is_free(tmp_path, caplog):
    caplog.set_level("ERROR", logger="wtm.store")  # the retry warnings are expected
    path = tmp_path / "records.db"
    records = CountingStore(path, timeout_s=0.05)
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # another process holding the write lock
    batch = [record() for _ in range(10)]

    async def scenario():
        store = run_store(records, tmp_path)
        pending = asyncio.gather(*(store.writes((r, None)) for r in batch))
        while records.transactions < 3:  # tried, and failed on the lock, three times
            await asyncio.sleep(0.01)
        assert not pending.done()
        locker.execute("ROLLBACK")
        return await asyncio.wait_for(pending, 30)

    try:
        assert asyncio.run(scenario()) == [True] * 10
    finally:
        locker.close()
    assert [records.get_execution(r.execution_id) for r in batch] == batch
