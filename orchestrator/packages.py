"""Task packages: deterministic archives, registration, safe extraction, import.

A package is content-addressed: the archive of a folder always has the same
bytes, so its sha256 names the code. Replicas extract into a cache keyed by
that sha256 and import the entry point under a module name unique to it, so
two packages that both have a ``task.py`` load side by side.
"""

from __future__ import annotations

import ast
import contextlib
import gzip
import hashlib
import importlib
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
import types
import zlib
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

from orchestrator import keys, seedcompat
from orchestrator.artifacts import Candidate, Registry
from orchestrator.errors import NotFoundError, PackageError, SpecError
from orchestrator.models import TaskRecord
from orchestrator.objects import ObjectStore
from orchestrator.sdk import TaskBase
from orchestrator.taskspec import TaskSpec, load_spec


@dataclass(frozen=True)
class Limits:
    """What an archive may hold before extraction refuses it."""

    max_bytes: int = 512 * 1024 * 1024
    max_files: int = 10_000


_SKIP_DIRS = {"__pycache__", ".git", ".pytest_cache", ".mypy_cache", ".ruff_cache"}


def build_archive(folder: Path) -> bytes:
    """A gzip'd tar of folder with fixed order, times, owners and modes."""
    folder = Path(folder)
    buffer = io.BytesIO()
    # gzip header mtime=0 and no file name: same folder, same bytes.
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in _package_files(folder):
            info = tarfile.TarInfo(path.relative_to(folder).as_posix())
            data = path.read_bytes()
            info.size = len(data)
            info.mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _package_files(folder: Path, limits: Limits = Limits()) -> list[Path]:
    """The files a package holds; PackageError past the limits extraction applies
    (checked on their sizes before any is read, so a huge sparse file is refused)."""
    files, total = [], 0
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).parts
        if any(p in _SKIP_DIRS for p in rel) or path.suffix == ".pyc":
            continue
        if path.is_symlink():
            raise PackageError(f"{path}: symbolic links are not packaged")
        if path.is_file():
            files.append(path)
            total += path.stat().st_size
            if total > limits.max_bytes:
                raise PackageError(
                    f"{folder}: package is over {limits.max_bytes // 2**20} MB unpacked "
                    f"(at {path.relative_to(folder)}); a replica could never load it"
                )
            if len(files) > limits.max_files:
                raise PackageError(f"{folder}: package has over {limits.max_files} files")
    return files


def discover(root: Path) -> list[Path]:
    """The task package folders directly under ``root`` (those with a task.json), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise NotFoundError(f"{root}: no such folder of task packages")
    return sorted(p for p in root.iterdir() if (p / "task.json").is_file())


def register(
    folder: Path, registry: Registry[TaskRecord], force: bool = False
) -> tuple[TaskRecord, bool]:
    """Check a package folder, archive it and register it; returns (record, changed)."""
    return registry.register(candidate(folder), force)


def candidate(folder: Path) -> Candidate[TaskRecord]:
    """Check a package folder and archive it, ready to register (nothing is stored).

    Requirements the environment lacks are refused here, not first when a job runs.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotFoundError(f"{folder}: no such task folder")
    spec = load_spec(folder)
    check_entry_point(folder, spec)
    check_requirements(spec)
    data = build_archive(folder)

    def build(sha: str, key: str) -> TaskRecord:
        return TaskRecord(
            task_id=spec.task_id,
            version=spec.version,
            sha256=sha,
            size=len(data),
            object_key=key,
            registered_at=time.time(),
            spec=spec,
        )

    return Candidate(spec.task_id, spec.version, data, build)


def check_entry_point(folder: Path, spec: TaskSpec) -> None:
    """The entry point's module parses and defines its class (nothing is run)."""
    module, _, name = spec.entry_point.rpartition(".")
    path = folder / Path(*module.split(".")).with_suffix(".py")
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except FileNotFoundError as e:
        raise SpecError(f"{folder}: entry_point {spec.entry_point!r}: no {path.name}") from e
    except SyntaxError as e:
        raise SpecError(f"{path}:{e.lineno}: syntax error: {e.msg}") from e
    if not any(isinstance(n, ast.ClassDef) and n.name == name for n in tree.body):
        raise SpecError(f"{path}: entry_point {spec.entry_point!r}: no class {name!r}")


def fetch(record: TaskRecord, objects: ObjectStore, cache: Path, limits: Limits = Limits()) -> Path:
    """Download, verify and safely extract a package; returns its folder.

    The sha256 is checked on every load: a download against the record, and a
    folder already in the cache against the archive kept beside it (itself
    checked against the record), file by file; a cached copy edited or damaged
    since is replaced by a fresh one. The cache is keyed by sha256 and filled by
    rename, so concurrent loaders on one machine never see a half-extracted package.
    """
    target = Path(cache) / record.sha256
    kept = target.with_name(f"{record.sha256}.tar.gz")
    if target.is_dir() and _intact(target, kept, record.sha256):
        return target
    data = objects.get(keys.TASKS_BUCKET, record.object_key)
    actual = hashlib.sha256(data).hexdigest()
    if actual != record.sha256:
        raise PackageError(
            f"{record.task_id}@{record.version}: archive sha256 {actual[:12]} "
            f"does not match the record's {record.sha256[:12]}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".extract-"))
    try:
        (staging / "files").mkdir()
        extract(data, staging / "files", limits)
        (staging / "archive").write_bytes(data)
        os.replace(staging / "archive", kept)
        if target.is_dir():  # edited or damaged since it was extracted: set aside
            with contextlib.suppress(OSError):
                target.rename(staging / "stale")
        with contextlib.suppress(OSError):  # another loader won: theirs is identical
            (staging / "files").rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _intact(folder: Path, kept: Path, sha256: str) -> bool:
    """Whether an extracted package holds exactly the files of its archive, and that
    archive is the one the record names (Python's own ``__pycache__`` aside)."""
    try:
        data = kept.read_bytes()
        if hashlib.sha256(data).hexdigest() != sha256:
            return False
        on_disk = {p.relative_to(folder).as_posix(): p for p in _package_files(folder)}
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            if set(on_disk) != {m.name for m in members}:
                return False
            for m in members:
                stream = tar.extractfile(m)
                if stream is None or stream.read() != on_disk[m.name].read_bytes():
                    return False
    except (OSError, PackageError, tarfile.TarError, EOFError, zlib.error):
        return False
    return True


def extract(data: bytes, dest: Path, limits: Limits = Limits()) -> None:
    """Extract an archive, refusing anything that could escape dest."""
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")  # noqa: SIM115 - closed below
    except tarfile.TarError as e:
        raise PackageError(f"not a readable archive: {e}") from e
    with tar:
        try:
            members = tar.getmembers()
            _check_members(members, limits)
            tar.extractall(dest, filter="data")
        except (tarfile.TarError, EOFError, zlib.error) as e:
            raise PackageError(f"archive is corrupt or truncated: {e}") from e


def _check_members(members: list[tarfile.TarInfo], limits: Limits) -> None:
    if len(members) > limits.max_files:
        raise PackageError(f"archive has {len(members)} entries, over the {limits.max_files} limit")
    total = 0
    for m in members:
        name = m.name
        if name.startswith("/") or Path(name).is_absolute():
            raise PackageError(f"archive entry {name!r} is an absolute path")
        if ".." in Path(name).parts:
            raise PackageError(f"archive entry {name!r} climbs out with '..'")
        if m.isdev() or m.isfifo():
            raise PackageError(f"archive entry {name!r} is a device or fifo")
        if m.issym() or m.islnk():
            link = Path(name).parent / m.linkname if m.issym() else Path(m.linkname)
            if Path(m.linkname).is_absolute() or ".." in Path(*link.parts).parts:
                raise PackageError(f"archive entry {name!r} links outside the package")
        total += m.size
        if total > limits.max_bytes:
            raise PackageError(f"archive unpacks to over {limits.max_bytes} bytes")


def check_requirements(spec: TaskSpec) -> None:
    """Fail with the full list of requirements this environment lacks, and the two fixes.

    Registration and every replica's load both check: this environment stands
    for the cluster's (one image everywhere), and a node that still differs is
    caught when its replica loads.
    """
    env = spec.runtime_env or {}
    if any(k in env for k in ("pip", "uv", "conda")):  # the task brings its own packages
        return
    missing = []
    for line in spec.requirements:
        try:
            req = Requirement(line)
        except InvalidRequirement as e:
            raise PackageError(f"{spec.task_id}: bad requirement {line!r}") from e
        if not _satisfied(req):
            missing.append(line)
    if missing:
        pip = json.dumps({"pip": missing})
        raise PackageError(
            f"{spec.task_id}: missing requirements: {', '.join(missing)}; install them "
            f'where the replicas run, or add "runtime_env": {pip} to task.json '
            "so Ray installs them for this task's replicas alone"
        )


# Distribution names that provide the same import as another (pins in the seed's
# task.json name opencv-python; we install the headless build).
_ALIASES = {"opencv-python": ("opencv-python-headless", "opencv-contrib-python-headless")}


def _satisfied(req: Requirement) -> bool:
    for name in (req.name, *_ALIASES.get(req.name.lower(), ())):
        try:
            version = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
        if not req.specifier or req.specifier.contains(version, prereleases=True):
            return True
    return False


def module_name(record: TaskRecord) -> str:
    """The import name a package's code lives under in any process."""
    safe = "".join(c if c.isalnum() else "_" for c in record.task_id)
    return f"wtm_pkg_{safe}_{record.sha256[:12]}"


def load_task(record: TaskRecord, folder: Path) -> TaskBase:
    """Import the entry point from an extracted package and build the task."""
    spec = record.spec
    check_requirements(spec)
    seedcompat.install()  # packages written for the seed import `tasks.base.task_base`
    name = module_name(record)
    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = [str(folder)]  # relative imports resolve inside it
        package.__file__ = str(folder / "__init__.py")
        sys.modules[name] = package
    module_path, _, class_name = spec.entry_point.rpartition(".")
    try:
        module = importlib.import_module(f"{name}.{module_path}")
        cls = getattr(module, class_name)
    except (ImportError, AttributeError, SyntaxError) as e:
        raise PackageError(f"{spec.task_id}: cannot import {spec.entry_point}: {e}") from e
    if not (isinstance(cls, type) and issubclass(cls, TaskBase)):
        shadow = seedcompat.shadowing()
        hint = f" (a `tasks` package at {shadow} hides the seed SDK alias)" if shadow else ""
        raise PackageError(f"{spec.task_id}: {spec.entry_point} is not a TaskBase subclass{hint}")
    task = cls()
    task.metadata = record.spec.model_dump(mode="json")
    task.metadata.setdefault("package_dir", str(folder))
    return task
