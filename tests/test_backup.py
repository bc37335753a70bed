"""Backup and restore: a round trip gives the same records and objects on both backends
(SQLite with a local folder, MongoDB with an S3 server), across them too, and from the
running session stack into an empty home; damaged backups and occupied targets are
refused with one line, writing nothing."""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from typer.testing import CliRunner

from cli.main import app
from orchestrator import Client, keys
from orchestrator.backup import backup_stores
from orchestrator.errors import ConflictError
from orchestrator.models import (
    ErrorInfo,
    ExecutionRecord,
    ExecutionStatus,
    PipelineRecord,
    StepRecord,
    StepStatus,
    TaskRecord,
    WorkerRecord,
    new_execution_id,
)
from orchestrator.objects import ObjectStore
from orchestrator.objects.local import LocalObjectStore
from orchestrator.objects.minio import MinioObjectStore
from orchestrator.records import RecordStore
from orchestrator.records.mongo import MongoRecordStore
from orchestrator.records.sqlite import SqliteRecordStore
from orchestrator.restore import restore_stores
from orchestrator.settings import Settings
from tests.conftest import IMAGES, make_task
from tests.helpers import private_redis, wait_until

runner = CliRunner()
DATA = keys.DATA_BUCKET


# stores ---------------------------------------------------------------------------
def sqlite_local(request: pytest.FixtureRequest, root: Path) -> tuple[RecordStore, ObjectStore]:
    return SqliteRecordStore(root / "records.db"), LocalObjectStore(root / "objects")


def mongo_s3(request: pytest.FixtureRequest, root: Path) -> tuple[RecordStore, ObjectStore]:
    # Each mongomock client is a server of its own; a fresh prefix, buckets of its own.
    records = MongoRecordStore.from_uri("mongomock://backup", f"b_{uuid.uuid4().hex}")
    endpoint = request.getfixturevalue("s3_endpoint")
    prefix = f"b{uuid.uuid4().hex[:10]}-"
    return records, MinioObjectStore(endpoint, "key", "secret", bucket_prefix=prefix)


BACKENDS = {"sqlite+local": sqlite_local, "mongo+s3": mongo_s3}


def stores(request, root: Path, backend: str):
    return BACKENDS[backend](request, root)


# a system's worth of records and objects -----------------------------------------------
def fill(records: RecordStore, objects: ObjectStore) -> dict[str, str]:
    """A task and a pipeline with their files, executions in every state with what they
    keep in the object store, a worker; returns the ids of the executions by role."""
    now = time.time() - 60
    package = keys.package_key("probe", "1.0.0", "a" * 64)
    objects.put(keys.TASKS_BUCKET, package, b"package bytes " + bytes(range(256)))
    records.put_task(
        TaskRecord(
            task_id="probe",
            version="1.0.0",
            sha256="a" * 64,
            size=270,
            object_key=package,
            registered_at=now,
            spec={"task_id": "probe", "name": "probe", "version": "1.0.0", "entry_point": "t.T"},
        )
    )
    definition = keys.pipeline_key("flow", "1.0.0", "b" * 64)
    objects.put(keys.PIPELINES_BUCKET, definition, b'{"pipeline_id": "flow"}')
    records.put_pipeline(
        PipelineRecord(
            pipeline_id="flow",
            version="1.0.0",
            sha256="b" * 64,
            object_key=definition,
            registered_at=now + 1,
            spec={"pipeline_id": "flow", "steps": [{"step_id": "s", "task_id": "probe"}]},
        )
    )
    upload = keys.input_key("c" * 64, "photo.jpg")
    objects.put(DATA, upload, b"\xff\xd8 jpeg bytes")
    array = keys.data_uri(f"arrays/{'d' * 64}.npy")
    objects.put(DATA, keys.data_key(array), b"\x93NUMPY array bytes")

    def execution(status: ExecutionStatus, **fields: Any) -> ExecutionRecord:
        record = ExecutionRecord(
            **{
                "execution_id": new_execution_id(now),
                "kind": "task",
                "task_id": "probe",
                "version": "1.0.0",
                "status": status,
                "input": {"image_path": keys.data_uri(upload)},
                "submitted_at": now,
                **fields,
            }
        )
        records.insert_execution(record)
        return record

    stored = execution(ExecutionStatus.SUCCEEDED, started_at=now, finished_at=now + 1)
    result_key = keys.result_key(stored.execution_id)
    objects.put(DATA, result_key, json.dumps({"big": "x" * 1000, "a": {"$array": array}}).encode())
    stored.result_ref = objects.uri(DATA, result_key)
    records.save_execution(stored)
    inline = execution(ExecutionStatus.SUCCEEDED, result={"label": "positive"}, duration=0.5)
    failed = execution(ExecutionStatus.FAILED, error=ErrorInfo(type="FatalError", message="no"))
    queued = execution(ExecutionStatus.QUEUED, kind="pipeline", task_id=None, pipeline_id="flow")
    running = execution(
        ExecutionStatus.RUNNING,
        started_at=now + 2,
        deliveries=1,
        steps=[
            StepRecord(step_id="a", task_id="probe", status=StepStatus.SUCCEEDED, attempts=1),
            StepRecord(step_id="b", task_id="probe", status=StepStatus.RUNNING, started_at=now),
            StepRecord(step_id="c", task_id="probe"),
        ],
    )
    objects.put(DATA, keys.step_output_key(running.execution_id, "a"), b'{"out": 1}')
    objects.put(DATA, keys.cache_key("probe", "e" * 64), b'{"cached": true}')
    records.put_worker(
        WorkerRecord(worker_id="wtm:probe@1.0.0#0", task_id="probe", version="1.0.0", processed=3)
    )
    return {
        "stored": stored.execution_id,
        "inline": inline.execution_id,
        "failed": failed.execution_id,
        "queued": queued.execution_id,
        "running": running.execution_id,
    }


def executions(records: RecordStore) -> dict[str, ExecutionRecord]:
    return {r.execution_id: r for r in records.scan_executions()}


def every_object(objects: ObjectStore) -> dict[tuple[str, str], bytes]:
    return {(b, k): objects.get(b, k) for b in keys.BUCKETS for k in objects.list(b)}


def assert_restored(source, target, interrupted: set[str]) -> None:
    """Target holds source's records and objects, byte for byte: executions alike but
    for the interrupted ones (failed now) and where a stored result is named."""
    (records, objects), (records2, objects2) = source, target
    assert [t.model_dump() for t in records2.list_tasks()] == [
        t.model_dump() for t in records.list_tasks()
    ]
    assert [p.model_dump() for p in records2.list_pipelines()] == [
        p.model_dump() for p in records.list_pipelines()
    ]
    assert records2.list_workers() == records.list_workers()
    assert every_object(objects2) == every_object(objects)
    before, after = executions(records), executions(records2)
    assert set(after) == set(before)
    for execution_id, was in before.items():
        now = after[execution_id]
        if execution_id in interrupted:
            assert was.status in (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING)
            assert now.status == ExecutionStatus.FAILED
            assert now.error.type == "Interrupted"
            assert f"wtm executions retry {execution_id}" in now.error.message
            assert all(s.status.terminal for s in now.steps)
            continue
        assert now.model_dump(exclude={"result_ref"}) == was.model_dump(exclude={"result_ref"})
        if was.result_ref:
            key = keys.result_key_of(was.result_ref)
            assert now.result_ref == objects2.uri(DATA, key)
            assert objects2.get(DATA, keys.result_key_of(now.result_ref)) == objects.get(DATA, key)


# round trips through the store APIs ------------------------------------------------------
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_backup_then_restore_into_empty_stores_gives_the_same_records_and_objects(
    request, tmp_path, backend
):
    source = stores(request, tmp_path / "source", backend)
    ids = fill(*source)

    manifest = backup_stores(*source, tmp_path / "backup")
    target = stores(request, tmp_path / "target", backend)
    restored = restore_stores(*target, tmp_path / "backup")

    assert_restored(source, target, interrupted={ids["queued"], ids["running"]})
    assert sorted(restored.interrupted) == sorted([ids["queued"], ids["running"]])
    assert manifest.counts == {
        "executions": 5,
        "pipelines": 1,
        "tasks": 1,
        "workers": 1,
        "objects": 7,
        "object_bytes": manifest.counts["object_bytes"],
    }
    assert manifest.executions_by_status == {"succeeded": 2, "failed": 1, "queued": 1, "running": 1}
    assert (manifest.records_backend, manifest.objects_backend) == {
        "sqlite+local": ("sqlite", "local"),
        "mongo+s3": ("mongo", "minio"),
    }[backend]
    assert (restored.executions, restored.objects) == (5, 7)
    running = executions(target[0])[ids["running"]]
    assert [s.status for s in running.steps] == [
        StepStatus.SUCCEEDED,
        StepStatus.FAILED,
        StepStatus.SKIPPED,
    ]


def test_a_backup_of_sqlite_and_a_folder_restores_into_mongodb_and_s3(request, tmp_path):
    source = sqlite_local(request, tmp_path / "source")
    ids = fill(*source)
    backup_stores(*source, tmp_path / "backup")

    target = mongo_s3(request, tmp_path / "target")
    restore_stores(*target, tmp_path / "backup")

    assert_restored(source, target, interrupted={ids["queued"], ids["running"]})
    stored = target[0].get_execution(ids["stored"])
    assert stored.result_ref == f"s3://{DATA}/{keys.result_key(ids['stored'])}"


def test_every_file_is_listed_with_its_sha256_and_the_manifest_is_written_last(request, tmp_path):
    source = sqlite_local(request, tmp_path / "source")
    fill(*source)

    manifest = backup_stores(*source, tmp_path / "backup")

    on_disk = {
        p.relative_to(tmp_path / "backup").as_posix()
        for p in (tmp_path / "backup").rglob("*")
        if p.is_file()
    }
    assert on_disk == {*manifest.files, "manifest.json"}
    for name, entry in manifest.files.items():
        data = (tmp_path / "backup" / name).read_bytes()
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (entry.sha256, entry.size)
    package = keys.backup_object_file(keys.TASKS_BUCKET, source[0].list_tasks()[0].object_key)
    assert (tmp_path / "backup" / package).read_bytes() == b"package bytes " + bytes(range(256))
    written = json.loads((tmp_path / "backup" / "manifest.json").read_text())
    assert (written["format"], written["format_version"]) == ("wtm-backup", 1)
    assert written["started_at"] <= written["finished_at"]


class _RegistersDuringTheBackup:
    """A record store that has a task registered (package, then record, as the registry
    does) right after the backup has read the executions."""

    def __init__(self, records: RecordStore, objects: ObjectStore):
        self._records, self._objects = records, objects

    def __getattr__(self, name: str) -> Any:
        return getattr(self._records, name)

    def scan_executions(self, batch: int = 500):
        yield from self._records.scan_executions(batch)
        key = keys.package_key("late", "1.0.0", "f" * 64)
        self._objects.put(keys.TASKS_BUCKET, key, b"late package")
        late = self._records.list_tasks()[0].model_copy(
            update={"task_id": "late", "object_key": key}
        )
        self._records.put_task(late)


def test_a_task_registered_while_the_backup_runs_is_in_it_with_its_package(request, tmp_path):
    records, objects = sqlite_local(request, tmp_path / "source")
    fill(records, objects)

    backup_stores(_RegistersDuringTheBackup(records, objects), objects, tmp_path / "backup")
    target = sqlite_local(request, tmp_path / "target")
    restore_stores(*target, tmp_path / "backup")

    late = target[0].get_task("late")
    assert late is not None
    assert target[1].get(keys.TASKS_BUCKET, late.object_key) == b"late package"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """A redis-server of this module's own: its streams are this test's alone."""
    with private_redis(tmp_path_factory.mktemp("backup-redis")) as url:
        yield url


def test_the_manifest_notes_each_streams_last_entry_and_the_dispatchers_position(
    request, tmp_path, redis_url
):
    r = redis.Redis.from_url(redis_url)
    stream = keys.stream("default", "normal")
    r.xgroup_create(stream, keys.CONSUMER_GROUP, id="0", mkstream=True)
    first, second, third = (r.xadd(stream, {"job": str(n)}).decode() for n in range(3))
    r.xreadgroup(keys.CONSUMER_GROUP, "dispatcher", {stream: ">"}, count=2)
    r.xack(stream, keys.CONSUMER_GROUP, first)  # acknowledged: the second is still pending
    r.sadd(keys.QUEUES_SET, "default")
    r.xadd(keys.DEAD_LETTERS, {"job": "x", "reason": "test"})
    source = sqlite_local(request, tmp_path / "source")

    manifest = backup_stores(*source, tmp_path / "backup", queues=r)

    by_stream = {s.stream: s for s in manifest.streams}
    assert set(by_stream) == {stream, keys.DEAD_LETTERS}  # lanes never used are not there
    noted = by_stream[stream]
    assert (noted.length, noted.last_entry_id) == (3, third)
    assert (noted.last_delivered_id, noted.pending) == (second, 1)
    assert by_stream[keys.DEAD_LETTERS].length == 1
    assert manifest.streams_note is None


# the CLI: refusals, one line each, nothing written -----------------------------------------
@pytest.fixture
def clean_env(monkeypatch) -> None:
    """No WTM_ variables, whatever the caller's shell has."""
    for name in [n for n in os.environ if n.startswith("WTM_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def home(clean_env, monkeypatch, tmp_path) -> Path:
    """WTM_HOME: a home with a system's worth of records and objects (no stack runs there)."""
    root = tmp_path / "home"
    records, objects = SqliteRecordStore(root / "records.db"), LocalObjectStore(root / "objects")
    fill(records, objects)
    records.close()
    monkeypatch.setenv("WTM_HOME", str(root))
    return root


def wtm(*args: str, home: Path | None = None):
    env = {"WTM_HOME": str(home)} if home else None
    return runner.invoke(app, list(args), env=env)


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root with its size and modification time (empty if absent)."""
    if not root.exists():
        return {}
    return {
        p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


def refused(result, code: int, words: str) -> None:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert words in lines[0], lines[0]
    assert "Traceback" not in result.output


def test_backup_and_restore_through_the_cli_with_json_summaries(home, tmp_path):
    backed = wtm("backup", str(tmp_path / "backup"), "--json")

    assert backed.exit_code == 0, backed.output
    summary = json.loads(backed.stdout)
    assert summary["counts"]["executions"] == 5 and summary["counts"]["objects"] == 7
    assert summary["streams"] is None and "no embedded stack" in summary["streams_note"]
    assert "files" not in summary

    fresh = tmp_path / "fresh"
    restored = wtm("restore", str(tmp_path / "backup"), "--json", home=fresh)

    assert restored.exit_code == 0, restored.output
    assert json.loads(restored.stdout)["executions"] == 5
    assert len(json.loads(restored.stdout)["interrupted"]) == 2
    client = Client(Settings(home=fresh), start=False)
    try:
        assert [t.task_id for t in client.tasks()] == ["probe"]
        assert [p.pipeline_id for p in client.pipelines()] == ["flow"]
        assert len(client.executions(limit=100)) == 5
        assert len(client.executions(status="queued")) == 0
    finally:
        client.close()
    plain = wtm("restore", str(tmp_path / "backup"), "--force", home=fresh)
    assert plain.exit_code == 0, plain.output
    assert "restored 1 task version(s)" in plain.stdout
    assert "2 execution(s) queued or running at the backup were restored failed" in plain.stdout


def test_backup_into_a_folder_that_is_not_empty_is_refused_unless_forced(home, tmp_path):
    folder = tmp_path / "backup"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")

    result = wtm("backup", str(folder))

    refused(result, 4, "is not empty")
    assert set(tree(folder)) == {"notes.txt"}
    again = wtm("backup", str(folder), "--force")
    assert again.exit_code == 0, again.output
    assert (folder / "manifest.json").is_file() and (folder / "notes.txt").read_text() == "mine"
    assert wtm("backup", str(folder), "--force").exit_code == 0  # over an earlier backup


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _damage_object(folder: Path) -> None:
    name = next(n for n in _manifest(folder)["files"] if n.startswith("objects/"))
    (folder / name).write_bytes(b"changed")


def _drop_a_file(folder: Path) -> None:
    (folder / "records" / "tasks.jsonl").unlink()


def _future_version(folder: Path) -> None:
    manifest = _manifest(folder)
    manifest["format_version"] = 99
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _bad_record(folder: Path) -> None:
    # A record that does not parse, listed with its true checksum: the content is at fault.
    path = folder / "records" / "workers.jsonl"
    path.write_bytes(b'{"worker_id": "w"}\n')
    manifest = _manifest(folder)
    manifest["files"]["records/workers.jsonl"] = {
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "size": path.stat().st_size,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))


DAMAGES = {
    "no manifest": (lambda f: (f / "manifest.json").unlink(), "no manifest.json"),
    "checksum mismatch": (_damage_object, "checksum mismatch"),
    "missing file": (_drop_a_file, "records/tasks.jsonl is missing"),
    "unknown format version": (_future_version, "unknown format version 99"),
    "malformed manifest": (lambda f: (f / "manifest.json").write_text("{"), "not valid JSON"),
    "record that does not parse": (_bad_record, "records/workers.jsonl line 1"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_backup_is_refused_with_one_line_and_nothing_written(home, tmp_path, damage):
    folder = tmp_path / "backup"
    assert wtm("backup", str(folder)).exit_code == 0
    spoil, words = DAMAGES[damage]
    spoil(folder)
    fresh = tmp_path / "fresh"

    result = wtm("restore", str(folder), home=fresh)

    refused(result, 2, words)
    assert not fresh.exists()


def test_restore_from_a_folder_that_does_not_exist_is_refused(home, tmp_path):
    refused(wtm("restore", str(tmp_path / "nowhere"), home=tmp_path / "fresh"), 2, "no such")
    assert not (tmp_path / "fresh").exists()


def test_restore_into_a_home_that_holds_data_is_refused_unless_forced(home, tmp_path):
    folder = tmp_path / "backup"
    assert wtm("backup", str(folder)).exit_code == 0
    before = tree(home)

    result = wtm("restore", str(folder))

    refused(result, 4, "already holds data")
    assert tree(home) == before
    forced = wtm("restore", str(folder), "--force")
    assert forced.exit_code == 0, forced.output
    records = SqliteRecordStore(home / "records.db")
    try:
        statuses = sorted(e.status.value for e in records.scan_executions())
        assert statuses == ["failed", "failed", "failed", "succeeded", "succeeded"]
    finally:
        records.close()


def test_restore_into_stores_with_records_only_is_refused_and_writes_no_object(request, tmp_path):
    source = sqlite_local(request, tmp_path / "source")
    fill(*source)
    backup_stores(*source, tmp_path / "backup")
    records, objects = sqlite_local(request, tmp_path / "target")
    records.put_worker(WorkerRecord(worker_id="w", task_id="t", version="1"))

    with pytest.raises(ConflictError, match="already holds data: 1 workers"):
        restore_stores(records, objects, tmp_path / "backup")

    assert every_object(objects) == {}
    assert [w.worker_id for w in records.list_workers()] == ["w"]


def test_backup_of_a_home_without_records_is_refused(clean_env, tmp_path):
    refused(wtm("backup", str(tmp_path / "b"), home=tmp_path / "empty"), 3, "no records at")
    assert not (tmp_path / "b").exists()


# the running session stack ----------------------------------------------------------
def test_backup_of_the_running_stack_restores_into_an_empty_home(
    cli_env, client, tmp_path, monkeypatch
):
    make_task(
        tmp_path,
        "bk_echo",
        'import numpy as np\nreturn {"text": input_data["text"], "array": np.arange(100), '
        '"pad": "x" * 300_000}',
    )
    make_task(tmp_path, "bk_slow", "import time\ntime.sleep(60)\nreturn {}", timeout=120)
    client.register_task(tmp_path / "bk_echo")
    client.register_task(tmp_path / "bk_slow")
    pipeline = {"pipeline_id": "bk_flow", "steps": [{"step_id": "echo", "task_id": "bk_echo"}]}
    (tmp_path / "bk_flow.json").write_text(json.dumps(pipeline))
    client.register_pipelines(tmp_path / "bk_flow.json")
    ran = [
        client.run("bk_echo", {"text": "one"}),
        client.run("bk_flow", {"text": "two"}),
        client.run("face_detection", {"image_path": str(IMAGES / "coffee.jpg")}),
    ]
    assert all(r.status == ExecutionStatus.SUCCEEDED for r in ran), [r.error for r in ran]
    assert ran[0].result_ref and ran[1].result_ref  # large results: stored as objects
    slow = client.submit("bk_slow", {})
    wait_until(lambda: slow.status == ExecutionStatus.RUNNING, 60, "the slow job to run")

    backed = runner.invoke(app, ["backup", str(tmp_path / "backup"), "--json"])
    client.cancel(slow.id)

    assert backed.exit_code == 0, backed.output
    summary = json.loads(backed.stdout)
    record = client.execution(slow.id)
    lane = keys.stream(record.queue, keys.lane_for(record.priority))
    noted = {s["stream"]: s for s in summary["streams"]}[lane]
    assert noted["pending"] >= 1 and noted["last_delivered_id"] is not None

    fresh = tmp_path / "fresh"
    monkeypatch.setenv("WTM_HOME", str(fresh))
    restored = runner.invoke(app, ["restore", str(tmp_path / "backup"), "--json"])
    assert restored.exit_code == 0, restored.output
    assert slow.id in json.loads(restored.stdout)["interrupted"]

    copy = Client(Settings(home=fresh), start=False)
    try:
        assert [t.model_dump() for t in copy.tasks()] == [t.model_dump() for t in client.tasks()]
        assert [p.model_dump() for p in copy.pipelines()] == [
            p.model_dump() for p in client.pipelines()
        ]
        for was in ran:
            now = copy.execution(was.execution_id)
            assert now.model_dump(exclude={"result_ref"}) == was.model_dump(exclude={"result_ref"})
            assert _same(copy.result(was.execution_id), client.result(was.execution_id))
        stored = copy.execution(ran[0].execution_id).result_ref
        assert stored == copy.objects.uri(DATA, keys.result_key(ran[0].execution_id))
        assert stored.startswith(fresh.resolve().as_uri())  # this home's file, not the source's
        assert copy.execution(slow.id).error.type == "Interrupted"
        assert len(list(copy.records.scan_executions())) == summary["counts"]["executions"]
        restored_objects = every_object(copy.objects)
        assert len(restored_objects) == summary["counts"]["objects"]
        for (bucket, key), data in restored_objects.items():
            assert client.objects.get(bucket, key) == data, key
    finally:
        copy.close()


def _same(a: Any, b: Any) -> bool:
    """Equal, numpy arrays included."""
    import numpy as np

    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b)
    return a == b
