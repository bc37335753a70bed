"""Least privilege for task code: a task looks for the records store's and Redis's
credentials in everything its replica gives it, and finds none; its replica's
heartbeats still reach the records, through the controller."""

from __future__ import annotations

import time

from orchestrator.models import ExecutionStatus
from tests.conftest import make_task

# Everything a task can look at without breaking into another process: its
# environment, every settings object, store or Redis client its process holds,
# and its own attributes.
SNOOP = """
import gc, os
import redis, redis.asyncio
from orchestrator.records.sqlite import SqliteRecordStore
from orchestrator.records.mongo import MongoRecordStore
from orchestrator.settings import Settings
held = gc.get_objects()
found = [o for o in held if isinstance(o, Settings)]
clients = (SqliteRecordStore, MongoRecordStore, redis.Redis, redis.asyncio.Redis,
           redis.ConnectionPool, redis.asyncio.ConnectionPool)
return {
    "env": dict(os.environ),
    "redis_urls": [s.redis.url for s in found],
    "records_uris": [s.records.uri for s in found],
    "ray_addresses": [s.ray.address for s in found],
    "clients": sorted({type(o).__name__ for o in held if isinstance(o, clients)}),
    "attributes": repr(vars(self)),
}
"""


def test_task_code_finds_no_records_or_redis_credentials_in_its_replica(client, tmp_path):
    client.register_task(make_task(tmp_path, "snoop", SNOOP))
    record = client.run("snoop", {}, timeout=120)
    assert record.status == ExecutionStatus.SUCCEEDED, record.error
    seen = record.result
    redis_url = client.settings.redis.url
    password = redis_url.split("@")[0].rsplit(":", 1)[-1]  # the stack's Redis asks for one
    assert password

    assert seen["clients"] == []  # no records store, no Redis client in its process
    assert set(seen["redis_urls"]) <= {None}
    assert set(seen["records_uris"]) <= {None}
    assert set(seen["ray_addresses"]) <= {None}
    wtm_vars = {k for k in seen["env"] if k.startswith("WTM_")}
    assert wtm_vars <= {"WTM_HOME"}  # none of the caller's settings reach Ray's workers
    for text in (*seen["env"].values(), seen["attributes"]):
        assert password not in text and redis_url not in text
    # What SECURITY.md says Ray cannot keep from code in its workers: the cluster's
    # token (every worker needs it to talk to the cluster) ...
    assert seen["env"]["RAY_AUTH_MODE"] == "token" and seen["env"]["RAY_AUTH_TOKEN_PATH"]


def test_replica_heartbeats_reach_the_records_through_the_controller(client, tmp_path):
    # min 1: kept however idle, so its worker record is there to watch.
    client.register_task(make_task(tmp_path, "beats", 'return {"ok": True}', replicas={"min": 1}))
    record = client.run("beats", {}, timeout=120)
    assert record.status == ExecutionStatus.SUCCEEDED, record.error
    name = record.steps[0].worker_id

    def heartbeat() -> float:
        found = [w for w in client.workers() if w.worker_id == name]
        return found[0].heartbeat_at if found and found[0].heartbeat_at else 0.0

    first = heartbeat()
    assert first, f"no worker record of {name}"
    deadline = time.monotonic() + 30
    while heartbeat() <= first and time.monotonic() < deadline:
        time.sleep(0.2)
    assert heartbeat() > first  # it goes on beating
