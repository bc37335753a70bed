"""Task packages: deterministic archives, registration, verified fetch, safe extraction."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

from orchestrator import artifacts, keys, packages
from orchestrator.errors import ConflictError, PackageError, SpecError
from orchestrator.objects.local import LocalObjectStore
from orchestrator.packages import (
    Limits,
    build_archive,
    check_requirements,
    extract,
    fetch,
    load_task,
    register,
)
from orchestrator.records.sqlite import SqliteRecordStore
from orchestrator.taskspec import TaskSpec


@pytest.fixture
def records(tmp_path):
    store = SqliteRecordStore(tmp_path / "records.db")
    yield store
    store.close()


@pytest.fixture
def objects(tmp_path):
    return LocalObjectStore(tmp_path / "objects")


@pytest.fixture
def tasks(records, objects):
    return artifacts.tasks(records, objects)


@pytest.fixture(autouse=True)
def forget_loaded_packages():
    """Drop the package modules a test imported, so tests do not share code."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("wtm_pkg_"):
            del sys.modules[name]


def write_package(
    folder: Path, task_id: str = "echo", version: str = "1.0.0", value: str = "one", **spec
) -> Path:
    """A package whose task returns the VALUE of its own helper module."""
    folder.mkdir(parents=True, exist_ok=True)
    doc = {
        "task_id": task_id,
        "name": task_id,
        "version": version,
        "entry_point": "task.Task",
        **spec,
    }
    (folder / "task.json").write_text(json.dumps(doc))
    (folder / "task.py").write_text(
        textwrap.dedent(
            """\
            from orchestrator import SimpleTask

            from .helper import VALUE


            class Task(SimpleTask):
                def process(self, input_data):
                    return {"value": VALUE}
            """
        )
    )
    (folder / "helper.py").write_text(f"VALUE = {value!r}\n")
    return folder


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def member_names(archive: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return tar.getnames()


# build_archive -----------------------------------------------------------------
def test_archive_of_the_same_folder_is_the_same_bytes(tmp_path):
    folder = write_package(tmp_path / "pkg")
    (folder / "data").mkdir()
    (folder / "data" / "weights.bin").write_bytes(os.urandom(1000))

    assert build_archive(folder) == build_archive(folder)


def test_archive_sha_ignores_modification_times(tmp_path):
    folder = write_package(tmp_path / "pkg")
    before = sha(build_archive(folder))

    os.utime(folder / "task.py", (1_000_000_000, 1_000_000_000))
    os.utime(folder / "helper.py")

    assert sha(build_archive(folder)) == before


def test_archive_of_a_copy_elsewhere_is_the_same_bytes(tmp_path):
    # Content addressing: the sha names the code, not where it was built.
    a = write_package(tmp_path / "a")
    b = write_package(tmp_path / "somewhere" / "else")

    assert build_archive(a) == build_archive(b)


def test_archive_sha_changes_with_content(tmp_path):
    folder = write_package(tmp_path / "pkg")
    before = sha(build_archive(folder))

    (folder / "helper.py").write_text("VALUE = 'two'\n")

    assert sha(build_archive(folder)) != before


def test_archive_skips_bytecode_caches(tmp_path):
    folder = write_package(tmp_path / "pkg")
    clean = build_archive(folder)
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "task.cpython-311.pyc").write_bytes(b"\x00junk")
    (folder / "stray.pyc").write_bytes(b"\x00junk")

    archive = build_archive(folder)

    assert archive == clean
    assert sorted(member_names(archive)) == ["helper.py", "task.json", "task.py"]


# register ------------------------------------------------------------------------
def test_register_stores_the_archive_and_the_record(tmp_path, records, objects, tasks):
    folder = write_package(tmp_path / "pkg", task_id="echo", version="1.2.0")

    record, changed = register(folder, tasks)

    assert changed is True
    assert (record.task_id, record.version) == ("echo", "1.2.0")
    stored = objects.get(keys.TASKS_BUCKET, record.object_key)
    assert stored == build_archive(folder)
    assert record.sha256 == sha(stored)
    assert record.size == len(stored)
    assert records.get_task("echo", "1.2.0") == record


def test_register_same_content_again_changes_nothing(tmp_path, records, objects, tasks):
    folder = write_package(tmp_path / "pkg")
    first, _ = register(folder, tasks)
    os.utime(folder / "task.py", (1_000_000_000, 1_000_000_000))

    again, changed = register(folder, tasks)

    assert changed is False
    assert again == first
    assert records.list_tasks() == [first]


def test_register_different_content_under_the_same_version_conflicts(tmp_path, records, tasks):
    folder = write_package(tmp_path / "pkg", value="one")
    first, _ = register(folder, tasks)
    (folder / "helper.py").write_text("VALUE = 'two'\n")

    with pytest.raises(ConflictError, match=r"1\.0\.0"):
        register(folder, tasks)

    assert records.get_task("echo", "1.0.0") == first


def test_register_with_force_replaces_the_content(tmp_path, records, objects, tasks):
    folder = write_package(tmp_path / "pkg", value="one")
    first, _ = register(folder, tasks)
    (folder / "helper.py").write_text("VALUE = 'two'\n")

    second, changed = register(folder, tasks, force=True)

    assert changed is True
    assert second.sha256 != first.sha256
    assert records.get_task("echo", "1.0.0") == second
    assert objects.get(keys.TASKS_BUCKET, second.object_key) == build_archive(folder)


# fetch ---------------------------------------------------------------------------
def test_fetch_extracts_the_registered_files(tmp_path, records, objects, tasks):
    folder = write_package(tmp_path / "pkg")
    record, _ = register(folder, tasks)

    out = fetch(record, objects, tmp_path / "cache")

    assert sorted(p.name for p in out.iterdir()) == ["helper.py", "task.json", "task.py"]
    for name in ("helper.py", "task.json", "task.py"):
        assert (out / name).read_bytes() == (folder / name).read_bytes()


def test_fetch_refuses_an_archive_that_does_not_match_its_sha(tmp_path, records, objects, tasks):
    record, _ = register(write_package(tmp_path / "pkg"), tasks)
    other = build_archive(write_package(tmp_path / "evil", value="evil"))
    objects.put(keys.TASKS_BUCKET, record.object_key, other)

    with pytest.raises(PackageError, match="sha256"):
        fetch(record, objects, tmp_path / "cache")

    assert not (tmp_path / "cache" / record.sha256).exists()


def test_every_load_checks_a_cached_package_against_its_sha(tmp_path, records, objects, tasks):
    folder = write_package(tmp_path / "pkg")
    record, _ = register(folder, tasks)
    cached = fetch(record, objects, tmp_path / "cache")

    (cached / "helper.py").write_text("VALUE = 'edited in the cache'\n")  # edited since
    (cached / "extra.py").write_text("print('planted')\n")
    again = fetch(record, objects, tmp_path / "cache")

    assert again == cached
    assert sorted(p.name for p in again.iterdir()) == ["helper.py", "task.json", "task.py"]
    assert (again / "helper.py").read_bytes() == (folder / "helper.py").read_bytes()


def test_a_cached_package_is_not_trusted_once_its_kept_archive_changed(
    tmp_path, records, objects, tasks
):
    record, _ = register(write_package(tmp_path / "pkg"), tasks)
    cache = tmp_path / "cache"
    fetch(record, objects, cache)
    evil = build_archive(write_package(tmp_path / "evil", value="evil"))
    (cache / f"{record.sha256}.tar.gz").write_bytes(evil)  # the copy kept beside it
    objects.put(keys.TASKS_BUCKET, record.object_key, evil)  # and the stored archive

    with pytest.raises(PackageError, match="sha256"):
        fetch(record, objects, cache)


# extract: hostile archives ----------------------------------------------------------
def tar_of(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def file_member(name: str, data: bytes = b"pwned") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def link_member(name: str, target: str, kind: bytes = tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def all_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


@pytest.fixture
def sandbox(tmp_path):
    """(dest, outside): extraction goes to dest; nothing may appear in outside."""
    dest = tmp_path / "sandbox" / "dest"
    dest.mkdir(parents=True)
    return dest, tmp_path / "sandbox"


def hostile_archives(outside: Path) -> dict[str, bytes]:
    return {
        "absolute path": tar_of(file_member("ok.txt"), file_member(str(outside / "abs.txt"))),
        "dot-dot path": tar_of(file_member("ok.txt"), file_member("../climb.txt")),
        "nested dot-dot": tar_of(file_member("a/b/../../../climb.txt")),
        "symlink outside": tar_of(
            link_member("escape", str(outside)), file_member("escape/through.txt")
        ),
        "relative symlink outside": tar_of(
            link_member("escape", "../"), file_member("escape/through.txt")
        ),
        "hard link outside": tar_of(link_member("hard", "../victim", kind=tarfile.LNKTYPE)),
        "character device": tar_of(
            link_member("tty", "", kind=tarfile.CHRTYPE),
        ),
        "block device": tar_of(link_member("disk", "", kind=tarfile.BLKTYPE)),
        "fifo": tar_of(link_member("pipe", "", kind=tarfile.FIFOTYPE)),
    }


@pytest.mark.parametrize(
    "case",
    [
        "absolute path",
        "dot-dot path",
        "nested dot-dot",
        "symlink outside",
        "relative symlink outside",
        "hard link outside",
        "character device",
        "block device",
        "fifo",
    ],
)
def test_extract_refuses_hostile_archives(sandbox, case):
    dest, outside = sandbox
    victim = outside / "victim"
    victim.write_text("precious")
    before = all_files(outside) - all_files(dest)

    with pytest.raises(PackageError):
        extract(hostile_archives(outside)[case], dest)

    assert all_files(outside) - all_files(dest) == before
    assert victim.read_text() == "precious"


def test_extract_refuses_too_many_files(sandbox):
    dest, _ = sandbox
    archive = tar_of(*(file_member(f"f{n}.txt", b"x") for n in range(4)))

    with pytest.raises(PackageError, match="3"):
        extract(archive, dest, Limits(max_files=3))

    assert list(dest.iterdir()) == []


def test_extract_refuses_too_many_bytes(sandbox):
    dest, _ = sandbox
    archive = tar_of(file_member("a.bin", b"x" * 60), file_member("b.bin", b"x" * 41))

    with pytest.raises(PackageError, match="100"):
        extract(archive, dest, Limits(max_bytes=100))

    assert list(dest.iterdir()) == []


def test_extract_accepts_an_archive_at_the_limits(sandbox):
    dest, _ = sandbox
    archive = tar_of(file_member("a.bin", b"x" * 60), file_member("sub/b.bin", b"y" * 40))

    extract(archive, dest, Limits(max_files=2, max_bytes=100))

    assert (dest / "a.bin").read_bytes() == b"x" * 60
    assert (dest / "sub" / "b.bin").read_bytes() == b"y" * 40


def test_extract_refuses_bytes_that_are_not_an_archive(sandbox):
    dest, _ = sandbox

    with pytest.raises(PackageError):
        extract(b"this is not a tar file at all", dest)


def test_extract_refuses_a_truncated_archive(tmp_path, sandbox):
    dest, _ = sandbox
    folder = write_package(tmp_path / "pkg")
    (folder / "weights.bin").write_bytes(os.urandom(50_000))
    archive = build_archive(folder)

    with pytest.raises(PackageError):
        extract(archive[: len(archive) // 2], dest)


# load_task -----------------------------------------------------------------------
def test_two_packages_with_the_same_module_names_load_side_by_side(tmp_path, objects, tasks):
    # Two versions of one task, each with its own task.py and helper.py.
    v1 = write_package(tmp_path / "v1", task_id="echo", version="1.0.0", value="from v1")
    v2 = write_package(tmp_path / "v2", task_id="echo", version="2.0.0", value="from v2")
    r1, _ = register(v1, tasks)
    r2, _ = register(v2, tasks)

    t1 = load_task(r1, fetch(r1, objects, tmp_path / "cache"))
    t2 = load_task(r2, fetch(r2, objects, tmp_path / "cache"))

    assert t2.run({}) == {"value": "from v2"}
    assert t1.run({}) == {"value": "from v1"}
    assert (t1.metadata["version"], t2.metadata["version"]) == ("1.0.0", "2.0.0")


def test_register_refuses_a_package_over_the_extraction_limit_and_stores_nothing(
    tmp_path, records, objects, tasks
):
    folder = write_package(tmp_path / "pkg")
    with open(folder / "weights.bin", "wb") as f:  # 1 GB, sparse: nothing is really written
        f.truncate(1024**3)

    with pytest.raises(PackageError, match=r"over 512 MB unpacked \(at weights\.bin\)"):
        register(folder, tasks)
    assert records.list_tasks() == [] and objects.list(keys.TASKS_BUCKET, "") == []


def test_an_id_too_long_is_refused_in_one_line(tmp_path, records, tasks):
    folder = write_package(tmp_path / "pkg", task_id="t" * 5000)

    with pytest.raises(SpecError, match=r"field 'task_id': String should have at most 128"):
        register(folder, tasks)
    assert records.list_tasks() == []


def test_register_names_a_missing_entry_point_and_stores_nothing(tmp_path, records, objects, tasks):
    folder = write_package(tmp_path / "pkg", entry_point="task.Missing")

    with pytest.raises(SpecError, match=r"entry_point 'task\.Missing': no class 'Missing'"):
        register(folder, tasks)
    assert records.list_tasks() == []


def test_register_names_a_syntax_error_with_its_line(tmp_path, records, objects, tasks):
    folder = write_package(tmp_path / "pkg")
    (folder / "task.py").write_text("class Task(:\n    pass\n")

    with pytest.raises(SpecError, match=r"task\.py:1: syntax error"):
        register(folder, tasks)


def test_register_refuses_a_schema_that_is_not_json_schema(tmp_path, records, objects, tasks):
    folder = write_package(tmp_path / "pkg")
    doc = json.loads((folder / "task.json").read_text())
    (folder / "task.json").write_text(json.dumps({**doc, "input_schema": {"type": "objekt"}}))

    with pytest.raises(SpecError, match=r"'input_schema' is not a valid JSON Schema"):
        register(folder, tasks)


# check_requirements ------------------------------------------------------------------
def spec_with(requirements: list[str], **extra) -> TaskSpec:
    return TaskSpec(
        task_id="needy",
        name="needy",
        version="1.0.0",
        entry_point="task.Task",
        requirements=requirements,
        **extra,
    )


def test_check_requirements_reports_every_missing_one_at_once():
    spec = spec_with(
        [
            "definitely-not-installed-pkg>=1",
            "pydantic>=2",
            "numpy>=999",
            "another-made-up-pkg==0.1",
        ]
    )

    with pytest.raises(PackageError) as info:
        check_requirements(spec)

    message = str(info.value)
    assert "needy" in message
    assert "definitely-not-installed-pkg>=1" in message
    assert "numpy>=999" in message
    assert "another-made-up-pkg==0.1" in message
    assert "pydantic" not in message


def test_check_requirements_passes_when_everything_is_installed():
    check_requirements(spec_with(["pydantic>=2", "numpy", "opencv-python>=4.8.0"]))


def test_check_requirements_is_skipped_for_a_task_with_its_own_runtime_env():
    spec = spec_with(["definitely-not-installed-pkg>=1"], runtime_env={"pip": ["x"]})

    check_requirements(spec)


def test_check_requirements_names_a_malformed_line():
    with pytest.raises(PackageError, match="not a == requirement"):
        check_requirements(spec_with(["not a == requirement"]))


def test_register_refuses_missing_requirements_and_stores_nothing(
    tmp_path, records, objects, tasks
):
    folder = write_package(tmp_path / "pkg", requirements=["definitely-not-installed-pkg>=1"])

    with pytest.raises(PackageError) as info:
        register(folder, tasks)

    message = str(info.value)
    assert "missing requirements: definitely-not-installed-pkg>=1;" in message
    assert '"runtime_env": {"pip": ["definitely-not-installed-pkg>=1"]}' in message
    assert "\n" not in message
    assert records.list_tasks() == [] and objects.list(keys.TASKS_BUCKET, "") == []


def test_load_task_refuses_a_package_with_missing_requirements(
    tmp_path, records, objects, tasks, monkeypatch
):
    # Registered where the requirement was installed; loaded where it is not.
    folder = write_package(tmp_path / "pkg", requirements=["definitely-not-installed-pkg>=1"])
    with monkeypatch.context() as m:
        m.setattr(packages, "_satisfied", lambda req: True)
        record, _ = register(folder, tasks)

    with pytest.raises(PackageError, match="definitely-not-installed-pkg"):
        load_task(record, fetch(record, objects, tmp_path / "cache"))
