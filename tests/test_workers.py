"""Worker status from the records (no cluster needed)."""

from __future__ import annotations

from orchestrator.models import WorkerRecord
from orchestrator.records.sqlite import SqliteRecordStore
from orchestrator.settings import Settings
from orchestrator.workers import worker_status


def test_a_replica_that_stops_heartbeating_is_shown_dead(tmp_path):
    records = SqliteRecordStore(tmp_path / "r.db")
    for name, beat in (("wtm:t@1#0", 100.0), ("wtm:t@1#1", 94.0)):
        records.put_worker(
            WorkerRecord(worker_id=name, task_id="t", version="1", state="idle", heartbeat_at=beat)
        )
    settings = Settings(home=tmp_path, controller={"heartbeat_s": 2})
    states = {w.worker_id: w.state for w in worker_status(records, settings, now=101.0)}
    assert states == {"wtm:t@1#0": "idle", "wtm:t@1#1": "dead"}
