"""Retention: prune forgets old finished executions and all kept for them, on both
backends (SQLite with a local folder, MongoDB with an S3 server), against a real
redis-server; and on the running stack, through the client and the CLI."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from cli.main import app
from orchestrator import keys, retention
from orchestrator.errors import NotFoundError
from orchestrator.intake import Job
from orchestrator.models import ExecutionRecord, ExecutionStatus, WorkerRecord, new_execution_id
from orchestrator.objects.local import LocalObjectStore
from orchestrator.objects.minio import MinioObjectStore
from orchestrator.plan import Plan
from orchestrator.records.mongo import MongoRecordStore
from orchestrator.records.sqlite import SqliteRecordStore
from orchestrator.runtime.controller import Controller
from orchestrator.settings import Settings
from orchestrator.testing import write_task
from tests.helpers import private_redis, wait_until

DAY = 86400.0
DATA = keys.DATA_BUCKET


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """A redis-server of this module's own: its dead letters are this test's alone."""
    with private_redis(tmp_path_factory.mktemp("retention-redis")) as url:
        yield url


@pytest.fixture(params=["sqlite+local", "mongo+s3"])
def stores(request, tmp_path):
    if request.param == "sqlite+local":
        records = SqliteRecordStore(tmp_path / "records.db")
        objects = LocalObjectStore(tmp_path / "objects")
    else:
        records = MongoRecordStore.from_uri("mongomock://retention")
        endpoint = request.getfixturevalue("s3_endpoint")
        objects = MinioObjectStore(
            endpoint, "key", "secret", bucket_prefix=f"t{uuid.uuid4().hex[:8]}-"
        )
    yield records, objects
    records.close()


def finished(submitted_at: float, document, ref: str | None = None) -> ExecutionRecord:
    return ExecutionRecord(
        execution_id=new_execution_id(submitted_at),
        kind="task",
        task_id="probe",
        status=ExecutionStatus.SUCCEEDED,
        input=document,
        input_ref=ref,
        submitted_at=submitted_at,
        finished_at=submitted_at + 1,
    )


def upload(objects, name: str) -> str:
    key = keys.input_key(uuid.uuid4().hex, name)
    objects.put(DATA, key, b"bytes of " + name.encode())
    return keys.data_uri(key)


def dead_letter(r: redis.Redis, at: float, input_uri: str) -> str:
    job = Job(
        execution_id=new_execution_id(at),
        kind="task",
        target="probe",
        queue="default",
        priority=5,
        submitted_at=at,
        input={"image_path": input_uri},
        plan=Plan(kind="task", target="probe", version="1", steps=()),
    )
    return r.xadd(keys.DEAD_LETTERS, {**job.encode(), "reason": "test"}, id=f"{int(at * 1000)}-0")


def has(objects, uri_or_key: str) -> bool:
    return objects.exists(DATA, keys.data_key(uri_or_key))


def test_prune_forgets_old_executions_and_what_they_left_and_keeps_the_rest(
    stores, redis_url, monkeypatch
):
    monkeypatch.setattr(retention, "UPLOAD_GRACE_S", 0)  # uploads here are seconds old
    records, objects = stores
    r = redis.Redis.from_url(redis_url)
    r.delete(keys.DEAD_LETTERS)
    now = time.time()

    # Before the cutoff: an old finished execution with its result, a step output
    # left behind, an upload only it uses, one it shares with a new execution,
    # and its offloaded input document; an old one still running; a dead letter;
    # a cache entry; a worker row nobody has refreshed.
    shared, only_old, running_input, dead_input = (
        upload(objects, n) for n in ("shared.jpg", "old.jpg", "running.jpg", "dead.jpg")
    )
    offloaded = keys.data_uri(keys.input_document_key(uuid.uuid4().hex))
    objects.put(DATA, keys.data_key(offloaded), json.dumps({"a_path": only_old}).encode())
    old = finished(now - 40 * DAY, None, ref=offloaded)
    old_two = finished(now - 35 * DAY, {"a_path": shared, "b_path": only_old})
    running_doc = keys.data_uri(keys.input_document_key(uuid.uuid4().hex))  # names an upload
    objects.put(DATA, keys.data_key(running_doc), json.dumps({"a_path": running_input}).encode())
    still_running = finished(now - 40 * DAY, None, ref=running_doc).model_copy(
        update={"status": ExecutionStatus.RUNNING, "finished_at": None}
    )
    for record in (old, old_two, still_running):
        records.insert_execution(record)
    objects.put(DATA, keys.result_key(old.execution_id), b"{}")
    objects.put(DATA, keys.step_output_key(old.execution_id, "detect"), b"{}")
    objects.put(DATA, keys.cache_key("probe", "digest"), b"{}")
    old_letter = dead_letter(r, now - 40 * DAY, dead_input)
    records.put_worker(
        WorkerRecord(worker_id="gone#0", task_id="probe", version="1", heartbeat_at=now - 40 * DAY)
    )
    cutoff = time.time()
    wait_until(lambda: int(time.time()) > cutoff, timeout=3)  # S3 times are whole seconds

    # After it: a new execution sharing an upload, its result, a fresh dead letter
    # naming the old dead letter's upload, a live worker, an upload under way.
    new = finished(time.time(), {"a_path": shared})
    records.insert_execution(new)
    objects.put(DATA, keys.result_key(new.execution_id), b"{}")
    new_letter = dead_letter(r, time.time(), dead_input)
    records.put_worker(
        WorkerRecord(worker_id="live#0", task_id="probe", version="1", heartbeat_at=time.time())
    )
    under_way = upload(objects, "under-way.jpg")

    pruned = retention.prune(records, objects, r, before=cutoff, batch=1)

    assert {e.execution_id for e in records.list_executions(limit=-1)} == {
        still_running.execution_id,
        new.execution_id,
    }
    assert not has(objects, keys.result_key(old.execution_id))
    assert not has(objects, keys.step_output_key(old.execution_id, "detect"))
    assert not has(objects, keys.cache_key("probe", "digest"))
    assert not has(objects, only_old) and not has(objects, offloaded)
    named = (shared, running_input, running_doc, dead_input, under_way)
    for kept in (*named, keys.result_key(new.execution_id)):
        assert has(objects, kept), kept
    letters = [e.decode() for e, _ in r.xrange(keys.DEAD_LETTERS)]
    assert old_letter.decode() not in letters and new_letter.decode() in letters
    assert [w.worker_id for w in records.list_workers()] == ["live#0"]
    assert pruned == retention.Pruned(executions=2, objects=5, dead_letters=1, workers=1)

    # Nothing more to do: a second prune removes nothing.
    assert retention.prune(records, objects, r, before=cutoff) == retention.Pruned()


def test_a_recent_upload_no_record_names_yet_is_kept_whatever_the_cutoff(stores, redis_url):
    records, objects = stores
    under_way = upload(objects, "submit-under-way.jpg")  # its record is not written yet
    cutoff = time.time()
    wait_until(lambda: int(time.time()) > cutoff, timeout=3)  # S3 times are whole seconds

    retention.prune(records, objects, redis.Redis.from_url(redis_url), before=time.time())

    assert has(objects, under_way)


def test_durations_read_as_a_user_writes_them():
    assert retention.parse_duration("30d") == 30 * DAY
    assert retention.parse_duration("1.5h") == 5400
    assert retention.parse_duration("90m") == 5400
    assert retention.parse_duration("2w") == 14 * DAY
    with pytest.raises(ValueError, match="'30 days'"):
        retention.parse_duration("30 days")


# On the running stack ------------------------------------------------------


def test_prune_on_the_stack_forgets_an_old_run_and_its_objects_and_keeps_a_new_one(
    client, tmp_path, monkeypatch
):
    monkeypatch.setattr(retention, "UPLOAD_GRACE_S", 0)  # uploads here are seconds old
    folder = write_task(
        tmp_path,
        "retention_probe",
        body="return {'echo': 'x' * 300_000}",  # over the inline limit: stored as an object
        input_schema={
            "type": "object",
            "properties": {
                "a_path": {"type": "string"},
                "b_path": {"type": "string"},
                "blob": {"type": "string"},
            },
        },
    )
    client.register_task(folder, force=True)
    files = {}
    for name in ("shared", "old", "new"):
        path = tmp_path / f"{name}.bin"
        path.write_bytes(uuid.uuid4().bytes)
        files[name] = str(path)
    big = {"a_path": files["shared"], "b_path": files["old"], "blob": "y" * 100_000}

    old = client.run("retention_probe", big)
    cutoff = time.time()
    new = client.run(
        "retention_probe", {"a_path": str(files["shared"]), "b_path": str(files["new"])}
    )
    assert old.status == new.status == ExecutionStatus.SUCCEEDED
    assert old.input_ref and old.result_ref and new.result_ref  # what prune must handle
    old_input = json.loads(client.objects.get(DATA, keys.data_key(old.input_ref)))
    shared, only_old = old_input["a_path"], old_input["b_path"]

    pruned = client.prune(older_than=time.time() - cutoff)

    assert pruned.executions >= 1
    with pytest.raises(NotFoundError):
        client.execution(old.execution_id)
    assert client.execution(new.execution_id).status == ExecutionStatus.SUCCEEDED
    for gone in (old.input_ref, keys.result_key_of(old.result_ref), only_old):
        assert not has(client.objects, gone), gone
    for kept in (shared, new.input["b_path"], keys.result_key_of(new.result_ref)):
        assert has(client.objects, kept), kept


def test_prune_from_the_cli_reports_counts_and_refuses_a_bad_age(cli_env):
    runner = CliRunner()
    bad = runner.invoke(app, ["executions", "prune", "--older-than", "thirty days"])
    assert bad.exit_code == 2  # bad input, as everywhere
    assert "duration 'thirty days'" in bad.output and "Traceback" not in bad.output

    ok = runner.invoke(app, ["executions", "prune", "--older-than", "3650d", "--json"])
    assert ok.exit_code == 0, ok.output
    assert set(json.loads(ok.output)) == {"executions", "objects", "dead_letters", "workers"}


def test_the_retention_setting_reads_from_the_seed_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"retention": {"older_than_days": 7}}))
    assert Settings(home=tmp_path).retention.older_than_days == 7
    assert Settings(home=Path(tmp_path / "none")).retention.older_than_days == 30


def test_the_controller_prunes_by_itself_as_the_retention_setting_says(tmp_path, redis_url):
    settings = Settings(
        home=tmp_path,
        redis={"url": redis_url},
        retention={"older_than_days": 1, "every_s": 0.1},
    )
    controller = Controller(settings)
    old = finished(time.time() - 2 * DAY, {"n": 1})
    recent = finished(time.time() - 0.5 * DAY, {"n": 2})
    for record in (old, recent):
        controller.records.insert_execution(record)

    async def until_pruned() -> None:
        loop = asyncio.create_task(controller._prune_loop())
        try:
            while controller.records.get_execution(old.execution_id) is not None:
                await asyncio.sleep(0.05)
        finally:
            loop.cancel()

    asyncio.run(asyncio.wait_for(until_pruned(), timeout=30))

    assert controller.records.get_execution(recent.execution_id) is not None
