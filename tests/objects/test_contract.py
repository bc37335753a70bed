"""The object store contract, run against every implementation.

Each backend is one entry in ``BACKENDS``; the tests at the bottom that look
at the local folder itself are specific to ``LocalObjectStore``.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.errors import ConfigError, InputError, NotFoundError, StackError
from orchestrator.objects import ObjectStore
from orchestrator.objects.local import LocalObjectStore
from orchestrator.objects.minio import MinioObjectStore

BUCKET = "ai-tasks"


def _local(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    return LocalObjectStore(tmp_path / "objects")


def _minio(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    # The session's S3 server starts only when a MinIO test runs; a fresh
    # prefix gives each test buckets no other test has touched.
    endpoint = request.getfixturevalue("s3_endpoint")
    return MinioObjectStore(endpoint, "key", "secret", bucket_prefix=f"t{uuid.uuid4().hex[:12]}-")


# One factory per backend: (request, tmp_path) -> a fresh, empty store.
BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], ObjectStore]] = {
    "local": _local,
    "minio": _minio,
}


@pytest.fixture(params=sorted(BACKENDS))
def store(request, tmp_path) -> ObjectStore:
    return BACKENDS[request.param](request, tmp_path)


def test_put_then_get_returns_the_same_bytes(store):
    data = bytes(range(256)) * 100
    store.put(BUCKET, "tasks/face_detection/1.0.0/abc.tar.gz", data)

    assert store.get(BUCKET, "tasks/face_detection/1.0.0/abc.tar.gz") == data


def test_empty_object_round_trips(store):
    store.put(BUCKET, "empty", b"")

    assert store.get(BUCKET, "empty") == b""
    assert store.exists(BUCKET, "empty")


def test_put_overwrites(store):
    store.put(BUCKET, "k", b"old contents that are longer")
    store.put(BUCKET, "k", b"new")

    assert store.get(BUCKET, "k") == b"new"
    assert store.list(BUCKET) == ["k"]


def test_get_missing_raises_not_found(store):
    with pytest.raises(NotFoundError):
        store.get(BUCKET, "no/such/key")


def test_buckets_are_separate(store):
    store.put("ai-tasks", "k", b"task")
    store.put("ai-data", "k", b"data")

    assert store.get("ai-tasks", "k") == b"task"
    assert store.get("ai-data", "k") == b"data"
    with pytest.raises(NotFoundError):
        store.get("ai-pipelines", "k")


def test_exists(store):
    store.put(BUCKET, "a/b.txt", b"x")

    assert store.exists(BUCKET, "a/b.txt")
    assert not store.exists(BUCKET, "a/c.txt")
    assert not store.exists("ai-data", "a/b.txt")


def test_delete_removes_and_is_idempotent(store):
    store.put(BUCKET, "a/b.txt", b"x")

    store.delete(BUCKET, "a/b.txt")
    store.delete(BUCKET, "a/b.txt")
    store.delete(BUCKET, "never/was")

    assert not store.exists(BUCKET, "a/b.txt")
    with pytest.raises(NotFoundError):
        store.get(BUCKET, "a/b.txt")


def test_list_under_prefix_is_sorted(store):
    for key in ("tasks/b/2", "tasks/a/1", "pipelines/p", "tasks/a/0", "tasksX"):
        store.put(BUCKET, key, b"x")

    assert store.list(BUCKET, "tasks/") == ["tasks/a/0", "tasks/a/1", "tasks/b/2"]
    assert store.list(BUCKET, "tasks/a/") == ["tasks/a/0", "tasks/a/1"]
    assert store.list(BUCKET) == sorted(
        ["pipelines/p", "tasks/a/0", "tasks/a/1", "tasks/b/2", "tasksX"]
    )
    assert store.list(BUCKET, "nothing/") == []


def test_list_of_an_unused_bucket_is_empty(store):
    assert store.list("ai-pipelines") == []
    assert store.list_modified("ai-pipelines") == {}


def test_list_modified_gives_each_key_under_prefix_its_write_time(store):
    before = time.time()
    for key in ("steps/e1/a.json", "steps/e1/b.json", "results/e1.json"):
        store.put(BUCKET, key, b"x")
    after = time.time()

    found = store.list_modified(BUCKET, "steps/")

    assert sorted(found) == ["steps/e1/a.json", "steps/e1/b.json"]
    # S3 keeps whole seconds: allow that much either side
    assert all(before - 1 <= t <= after + 1 for t in found.values())


def test_put_leaves_no_temporary_objects_visible(store):
    for n in range(5):
        store.put(BUCKET, f"dir/obj{n}", b"x" * n)
    store.put(BUCKET, "dir/obj0", b"replaced")

    assert store.list(BUCKET) == [f"dir/obj{n}" for n in range(5)]


@pytest.mark.parametrize("key", ["../victim", "a/../../victim", "{abs}", ""])
def test_keys_escaping_the_bucket_are_refused(store, tmp_path, key):
    # An absolute key aims at a real file outside the store, which must survive.
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    key = key.format(abs=victim)

    for attempt in (
        lambda: store.put(BUCKET, key, b"x"),
        lambda: store.get(BUCKET, key),
        lambda: store.exists(BUCKET, key),
        lambda: store.delete(BUCKET, key),
    ):
        with pytest.raises(InputError):
            attempt()

    assert victim.read_bytes() == b"precious"
    assert not (tmp_path / "objects" / "victim").exists()


@pytest.mark.parametrize("key", ["a", "a/b/c"])
def test_get_of_a_key_next_to_an_object_raises_not_found(store, key):
    store.put(BUCKET, "a/b", b"x")

    with pytest.raises(NotFoundError):
        store.get(BUCKET, key)


@pytest.mark.parametrize("key", ["a", "a/b/c"])
def test_delete_of_a_key_next_to_an_object_does_nothing(store, key):
    store.put(BUCKET, "a/b", b"x")

    store.delete(BUCKET, key)

    assert store.get(BUCKET, "a/b") == b"x"


# local folder only -------------------------------------------------------------
def test_local_put_leaves_no_temporary_files_on_disk(tmp_path):
    store = LocalObjectStore(tmp_path / "objects")
    for n in range(3):
        store.put(BUCKET, f"dir/obj{n}", b"data")

    files = sorted(
        Path(d, f).relative_to(tmp_path / "objects").as_posix()
        for d, _, names in os.walk(tmp_path / "objects")
        for f in names
    )
    assert files == [f"{BUCKET}/dir/obj{n}" for n in range(3)]


def test_local_failed_put_keeps_the_old_object_and_no_temporary_file(tmp_path):
    store = LocalObjectStore(tmp_path / "objects")
    store.put(BUCKET, "k", b"old")

    with pytest.raises(TypeError):
        store.put(BUCKET, "k", "not bytes")  # type: ignore[arg-type]

    assert store.get(BUCKET, "k") == b"old"
    assert os.listdir(tmp_path / "objects" / BUCKET) == ["k"]


def test_local_uri_is_a_file_uri_of_the_object(tmp_path):
    store = LocalObjectStore(tmp_path / "objects")
    store.put(BUCKET, "a/b", b"x")

    uri = store.uri(BUCKET, "a/b")

    assert uri == (tmp_path / "objects" / BUCKET / "a" / "b").resolve().as_uri()


# MinIO only --------------------------------------------------------------------
def test_minio_uri_names_the_object_as_callers_address_it(s3_endpoint):
    # The prefix stays inside the store: an s3:// URI parsed back (as images.py
    # does) addresses the same object through the same store.
    store = MinioObjectStore(
        s3_endpoint, "key", "secret", bucket_prefix=f"u{uuid.uuid4().hex[:8]}-"
    )
    store.put(BUCKET, "a/b", b"x")

    uri = store.uri(BUCKET, "a/b")

    assert uri == f"s3://{BUCKET}/a/b"
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    assert store.get(bucket, key) == b"x"


def test_minio_stores_with_other_prefixes_do_not_see_each_others_objects(s3_endpoint):
    one = MinioObjectStore(s3_endpoint, "key", "secret", bucket_prefix=f"a{uuid.uuid4().hex[:8]}-")
    two = MinioObjectStore(s3_endpoint, "key", "secret", bucket_prefix=f"b{uuid.uuid4().hex[:8]}-")
    one.put(BUCKET, "k", b"one")

    assert two.list(BUCKET) == []
    assert not two.exists(BUCKET, "k")
    two.put(BUCKET, "k", b"two")
    assert one.get(BUCKET, "k") == b"one"


def test_minio_put_recreates_a_bucket_removed_behind_its_back(s3_endpoint):
    store = MinioObjectStore(
        s3_endpoint, "key", "secret", bucket_prefix=f"r{uuid.uuid4().hex[:8]}-"
    )
    store.put(BUCKET, "k", b"x")
    store.delete(BUCKET, "k")
    store._client.remove_bucket(store.bucket_prefix + BUCKET)

    store.put(BUCKET, "k", b"again")

    assert store.get(BUCKET, "k") == b"again"


def test_minio_unreachable_endpoint_is_a_one_line_stack_error():
    store = MinioObjectStore("127.0.0.1:1", "key", "secret")  # nothing listens on port 1

    with pytest.raises(StackError, match=r"127\.0\.0\.1:1") as caught:
        store.get(BUCKET, "k")

    assert "\n" not in str(caught.value)


def test_minio_malformed_endpoint_or_prefix_is_a_config_error():
    with pytest.raises(ConfigError):
        MinioObjectStore("http://localhost:9000/path")
    with pytest.raises(ConfigError):
        MinioObjectStore("localhost:9000", bucket_prefix="Upper_Case")
