"""The one registry of versioned artifacts, as tasks and pipelines both use it."""

from __future__ import annotations

import pytest

from orchestrator import artifacts, keys
from orchestrator.artifacts import Candidate
from orchestrator.errors import ConflictError, NotFoundError
from orchestrator.models import PipelineRecord
from orchestrator.objects.local import LocalObjectStore
from orchestrator.pipelinespec import PipelineSpec
from orchestrator.records.sqlite import SqliteRecordStore


@pytest.fixture
def registry(tmp_path):
    records = SqliteRecordStore(tmp_path / "records.db")
    objects = LocalObjectStore(tmp_path / "objects")
    yield artifacts.pipelines(records, objects), objects
    records.close()


def candidate(version: str, data: bytes, at: float = 1.0) -> Candidate:
    spec = PipelineSpec(pipeline_id="p", steps=[{"task_id": "t"}], metadata={"version": version})

    def build(sha: str, key: str) -> PipelineRecord:
        return PipelineRecord(
            pipeline_id="p",
            version=version,
            sha256=sha,
            object_key=key,
            registered_at=at,
            spec=spec,
        )

    return Candidate("p", version, data, build)


def register(registry, version: str, data: bytes, force: bool = False, at: float = 1.0):
    return registry.register(candidate(version, data, at), force)


def test_versions_are_content_addressed_kept_side_by_side_and_the_latest_is_the_default(
    registry,
):
    reg, objects = registry
    one, changed = register(reg, "1", b"one", at=1.0)
    assert changed and one.object_key == keys.pipeline_key("p", "1", one.sha256)
    assert objects.get(keys.PIPELINES_BUCKET, one.object_key) == b"one"
    assert register(reg, "1", b"one") == (one, False)  # the same content changes nothing
    two, _ = register(reg, "2", b"two", at=2.0)
    assert reg.resolve("p") == two and reg.resolve("p", "1") == one
    assert [r.version for r in reg.versions("p")] == ["1", "2"]


def test_other_content_under_a_registered_version_needs_force(registry):
    reg, _ = registry
    first, _ = register(reg, "1", b"one")
    with pytest.raises(ConflictError, match=r"pipeline p version 1 .* bump metadata\.version"):
        register(reg, "1", b"changed")
    assert reg.resolve("p", "1") == first
    replaced, changed = register(reg, "1", b"changed", force=True)
    assert changed and replaced.sha256 != first.sha256


def test_delete_removes_records_then_objects_and_names_what_is_missing(registry):
    reg, objects = registry
    one, _ = register(reg, "1", b"one", at=1.0)
    two, _ = register(reg, "2", b"two", at=2.0)
    assert reg.delete("p", "1") == [one]
    assert not objects.exists(keys.PIPELINES_BUCKET, one.object_key)
    assert reg.resolve("p") == two
    assert reg.delete("p") == [two]
    with pytest.raises(NotFoundError, match="unknown pipeline 'p'; see `wtm pipeline list`"):
        reg.delete("p")
    with pytest.raises(NotFoundError, match="unknown pipeline 'p' version 3"):
        reg.resolve("p", "3")


def test_several_register_all_or_none(registry):
    reg, objects = registry
    register(reg, "1", b"one")
    batch = [candidate("2", b"two"), candidate("1", b"changed")]  # the second conflicts
    with pytest.raises(ConflictError):
        reg.register_all(batch)
    assert [r.version for r in reg.versions("p")] == ["1"]  # "2" was not stored either
    assert objects.list(keys.PIPELINES_BUCKET) == [reg.resolve("p").object_key]
