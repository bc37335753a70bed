"""Priority where jobs really wait: for a replica slot, on the session's stack."""

from __future__ import annotations

from orchestrator.models import ExecutionStatus
from tests.conftest import make_task
from tests.helpers import wait_until


def test_a_high_priority_job_overtakes_low_ones_waiting_for_one_busy_replica(client, tmp_path):
    body = "import time\ntime.sleep(0.2)\nreturn {}"
    client.register_task(make_task(tmp_path, "one_slot", body, replicas={"max": 1}))
    client.run("one_slot", {}, timeout=60)  # its replica is up: the queue is all that waits
    low = [client.submit("one_slot", {"n": i}, priority=1).id for i in range(40)]
    high = client.submit("one_slot", {"n": "urgent"}, priority=9).id

    def all_done():
        records = [client.execution(i) for i in [*low, high]]
        return records if all(r.status.terminal for r in records) else None

    records = wait_until(all_done, timeout=120, what="all 41 jobs")
    assert {r.status for r in records} == {ExecutionStatus.SUCCEEDED}
    started = {r.execution_id: r.steps[0].started_at for r in records}
    overtaken = [i for i in low if started[i] > started[high]]
    assert len(overtaken) >= 30, f"the priority-9 job started after {40 - len(overtaken)} of 40"
