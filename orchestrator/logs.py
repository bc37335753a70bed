"""Logs: the seed's ``logging`` section (level, format, rotation, retention) applied to a process.

Each process writes a file of its own under ``settings.logs_dir``
(``$WTM_HOME/logs`` unless ``logging.dir`` says otherwise), named for what it
is: ``cli.log``, ``wtm-controller.log``, ``wtm-dispatcher-0.log``, one per
replica (``wtm-face_detection@1.0.0-0.log``). A file rotates by size
(``"10 MB"``) or by period (``"1 day"``: at each period's boundary), and
rotated files go once older than the retention (``"1 week"``) or beyond a
count (``"10 files"``). Several processes may append to one file (every CLI
command writes ``cli.log``): rotation takes a lock and re-checks, and a
process whose file was rotated by another reopens it.

Formats: the seed's template (``{time} | {level} | {name} | {message}``,
loguru's field names) or ``json``, one object per line. Lines logged while a
replica runs a step, or a dispatcher runs a job, carry the execution and step
id, so ``wtm executions show`` finds them (:func:`execution_logs`).
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.secrets import redact_text
from orchestrator.taskspec import parse_size

if TYPE_CHECKING:
    from orchestrator.settings import Settings

JSON = "json"
TEXT = "text"  # the seed's template, by name
TEMPLATE = "{time} | {level} | {name} | {message}"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_LOGURU_LEVELS = {"TRACE": "DEBUG", "SUCCESS": "INFO"}  # the seed's loguru has these two more

# The ids of the execution and step this thread or asyncio task works for.
_execution: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar(
    "wtm_execution", default=("", "")
)


# parsing the seed's values -----------------------------------------------------------------
def parse_level(text: str) -> str:
    """``info``, ``WARNING``, loguru's ``TRACE``/``SUCCESS``: a standard level name."""
    name = str(text).strip().upper()
    name = _LOGURU_LEVELS.get(name, name)
    if name not in LEVELS:
        raise ValueError(f"unknown log level {text!r}: use one of {', '.join(LEVELS)}")
    return name


_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_UNITS = {"sec": "s", "second": "s", "min": "m", "minute": "m", "hour": "h", "day": "d"}
_UNITS |= {"week": "w"} | {u: u for u in _UNIT_S}


def parse_duration(text: str) -> float | None:
    """``"1 week"``, ``"10 days"``, ``"12h"``, ``"30 min"`` in seconds; None if not a duration."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+?)s?\s*", str(text))
    unit = _UNITS.get(match.group(2).lower()) if match else None
    return None if unit is None else float(match.group(1)) * _UNIT_S[unit]


@dataclass(frozen=True)
class Rotation:
    """When a log file is rotated: past ``size`` bytes, or at each ``every_s`` boundary."""

    size: int | None = None
    every_s: float | None = None


@dataclass(frozen=True)
class Retention:
    """Which rotated files go: older than ``max_age_s``, or beyond the newest ``keep``."""

    max_age_s: float | None = None
    keep: int | None = None


def parse_rotation(text: str) -> Rotation:
    """``"10 MB"`` (a size) or ``"1 day"`` (a period); ValueError otherwise."""
    every = parse_duration(text)
    if every is not None:
        return Rotation(every_s=every)
    try:
        return Rotation(size=parse_size(str(text)))
    except ValueError:
        raise ValueError(
            f"rotation {text!r}: use a size (10 MB) or a period (1 day, 12 hours)"
        ) from None


def parse_retention(text: str) -> Retention:
    """``"1 week"`` (an age) or ``"10 files"`` / ``"10"`` (a count); ValueError otherwise."""
    age = parse_duration(text)
    if age is not None:
        return Retention(max_age_s=age)
    match = re.fullmatch(r"\s*(\d+)\s*(files?)?\s*", str(text))
    if match is None:
        raise ValueError(f"retention {text!r}: use an age (1 week, 10 days) or a count (10 files)")
    return Retention(keep=int(match.group(1)))


# formats ----------------------------------------------------------------------------------
# The seed's template names loguru's fields; each maps to a LogRecord attribute.
_FIELDS = {
    "time": "asctime",
    "level": "levelname",
    "name": "name",
    "message": "message",
    "function": "funcName",
    "line": "lineno",
    "module": "module",
    "file": "filename",
    "process": "process",
    "thread": "threadName",
    "execution_id": "execution_id",
    "step_id": "step_id",
}


class TemplateFormatter(logging.Formatter):
    """The seed's ``{time} | {level} | {name} | {message}``; the execution's id appended
    to lines logged for one, unless the template places it itself."""

    def __init__(self, template: str):
        def field(match: re.Match) -> str:
            name, spec = match.group(1), match.group(2) or ""
            if name not in _FIELDS:
                raise ValueError(f"format {template!r}: unknown field {{{name}}}")
            # loguru's time specs (YYYY-MM-DD) mean nothing here: the time stays ISO-like.
            return "{" + _FIELDS[name] + ("" if name == "time" else spec) + "}"

        fmt = re.sub(r"\{(\w+)(:[^}]*)?\}", field, template)
        super().__init__(fmt, style="{", validate=True)
        self.places_id = "{execution_id" in fmt

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        execution_id = getattr(record, "execution_id", "")
        if execution_id and not self.places_id:
            step = getattr(record, "step_id", "")
            line += f" | execution={execution_id}" + (f" step={step}" if step else "")
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, process, message,
    and the execution and step where the line was logged for one."""

    def __init__(self, role: str = ""):
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname,
            "name": record.name,
            "message": record.getMessage(),
            "process": self.role or record.processName,
            "pid": record.process,
        }
        for key in ("execution_id", "step_id"):
            if getattr(record, key, ""):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def formatter(fmt: str, role: str = "") -> logging.Formatter:
    """The formatter for a ``logging.format`` value: ``json``, ``text`` (the seed's
    template) or a template of its own."""
    name = fmt.strip().lower()
    if name == JSON:
        return JsonFormatter(role)
    return TemplateFormatter(TEMPLATE if name == TEXT else fmt)


class _Redacted(logging.Formatter):
    """Another formatter's lines with the credentials of every URL in them hidden:
    an error message may quote a store's address (see :mod:`orchestrator.secrets`)."""

    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(self.inner.format(record))


class _ExecutionFilter(logging.Filter):
    """Stamps each record with the execution and step its thread or task works for."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.execution_id, record.step_id = _execution.get()
        return True


# the rotating file ------------------------------------------------------------------------
_STAMP = "%Y%m%d-%H%M%S-%f"  # a rotated file is <stem>.<stamp>.log: names sort by age
_ROTATED = re.compile(r"\.\d{8}-\d{6}-\d{6}$")


def rotated(path: Path) -> list[Path]:
    """The rotated files of a log file, oldest first."""
    files = path.parent.glob(f"{path.stem}.*{path.suffix}")  # <stem>.<stamp>.log, and others
    return sorted(f for f in files if _ROTATED.fullmatch(f.stem[len(path.stem) :]))


class RotatingFile(logging.FileHandler):
    """A log file that rotates by size or period and keeps what the retention allows.

    Safe with several processes appending: rotation happens under a lock file
    and only if still due, and a process finding its file rotated by another
    (or deleted by retention) reopens it. The file is created on the first line.
    """

    def __init__(self, path: Path, rotation: Rotation, retention: Retention):
        super().__init__(path, encoding="utf-8", delay=True)
        self.rotation, self.retention = rotation, retention

    def _open(self):
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._follow()
            if self._due():
                self._rotate()
        except OSError:
            self.handleError(record)
        super().emit(record)

    def _follow(self) -> None:
        """Reopen if the file under our name is no longer the one we write to."""
        if self.stream is None:
            return
        try:
            moved = os.stat(self.baseFilename).st_ino != os.fstat(self.stream.fileno()).st_ino
        except FileNotFoundError:
            moved = True
        if moved:
            self.close()  # emit opens it again (delay=True)

    def _due(self) -> bool:
        try:
            st = os.stat(self.baseFilename)
        except FileNotFoundError:
            return False
        if self.rotation.size is not None:
            return st.st_size >= self.rotation.size
        every = self.rotation.every_s
        return bool(every) and st.st_size > 0 and st.st_mtime // every < time.time() // every

    def _rotate(self) -> None:
        lock_path = self.baseFilename + ".lock"
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if self._due():  # another process may have rotated it meanwhile
                    stamp = datetime.now().strftime(_STAMP)
                    base = Path(self.baseFilename)
                    os.replace(base, base.with_name(f"{base.stem}.{stamp}{base.suffix}"))
                    prune(base.parent, self.retention, base)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        self.close()


def prune(folder: Path, retention: Retention, log: Path | None = None) -> None:
    """Remove what the retention lets go: of ``log``'s rotated files, or of every file.

    With an age, any log file not written for that long goes (a replica's file
    outlives the replica); with a count, the newest rotated files of ``log`` stay.
    """
    now = time.time()
    for path in rotated(log) if log else folder.glob("*.log"):
        with contextlib.suppress(OSError):
            if retention.max_age_s is not None and now - path.stat().st_mtime > retention.max_age_s:
                path.unlink()
    if retention.keep is not None and log:
        for path in rotated(log)[: -retention.keep or None]:
            path.unlink(missing_ok=True)


# configuring a process --------------------------------------------------------------------
class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a test runner swaps it)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def file_name(process: str) -> str:
    """A process's log file name: ``wtm:dispatcher#0`` -> ``wtm-dispatcher-0.log``."""
    return re.sub(r"[^\w.@-]+", "-", process).strip("-") + ".log"


def log_file(settings: Settings, process: str) -> Path:
    """Where ``process`` (an actor's name, or ``cli``) writes its log."""
    return settings.logs_dir / file_name(process)


def configure(
    settings: Settings,
    process: str,
    logger: str = "",
    stderr: str | None = None,
    plain_stderr: bool = False,
) -> Path:
    """Send ``logger``'s records (the root's: every library's) to ``process``'s file.

    ``stderr``: a level from which records also go to stderr (in the file's
    format, or the bare message with ``plain_stderr``). Idempotent: calling it
    again replaces what it installed. Returns the file's path.
    """
    cfg = settings.logging
    target = logging.getLogger(logger or None)
    for handler in [h for h in target.handlers if getattr(h, "_wtm", False)]:
        target.removeHandler(handler)
        handler.close()
    path = log_file(settings, process)
    file = RotatingFile(path, parse_rotation(cfg.rotation), parse_retention(cfg.retention))
    handlers: list[logging.Handler] = [file]
    if stderr is not None:
        err = _Stderr()
        err.setLevel(stderr)
        handlers.append(err)
    styled = formatter(cfg.format, process)
    for handler in handlers:
        plain = plain_stderr and handler is not file
        handler.setFormatter(_Redacted(logging.Formatter("%(message)s") if plain else styled))
        handler.addFilter(_ExecutionFilter())
        handler._wtm = True  # type: ignore[attr-defined]
        target.addHandler(handler)
    # DEBUG is for wtm's own loggers (task code's self.logger among them): other
    # libraries (redis, urllib3...) would bury them, so they stay at INFO.
    level = logging.getLevelName(settings.log_level)
    target.setLevel(max(level, logging.INFO) if not logger else level)
    logging.getLogger("wtm").setLevel(level)
    with contextlib.suppress(OSError):
        prune(path.parent, parse_retention(cfg.retention))
    return path


def configure_actor(settings: Settings, name: str) -> Path | None:
    """In a Ray actor's process: every record to the actor's file, warnings also to
    stderr (Ray's worker log, shown by the dashboard). Elsewhere (a test running the
    class in process) nothing changes."""
    import ray

    if not ray.is_initialized() or ray.get_runtime_context().get_actor_id() is None:
        return None
    return configure(settings, name, stderr="WARNING")


# an execution's lines ---------------------------------------------------------------------
@contextlib.contextmanager
def for_execution(execution_id: str | None, step_id: str | None = None) -> Iterator[None]:
    """Lines logged inside carry this execution's (and step's) id."""
    token = _execution.set((execution_id or "", step_id or ""))
    try:
        yield
    finally:
        _execution.reset(token)


def set_execution(execution_id: str, step_id: str = "") -> None:
    """Lines logged from here on in this asyncio task (or thread) carry the id."""
    _execution.set((execution_id, step_id))


def bound(fn: Callable[..., Any], execution_id: str | None, step_id: str | None) -> Callable:
    """``fn`` run with lines it logs carrying the execution's id (for a thread pool)."""

    def run(*args: Any, **kwargs: Any) -> Any:
        with for_execution(execution_id, step_id):
            return fn(*args, **kwargs)

    return run


@dataclass
class LogLines:
    """A log file that concerns an execution, and its lines that name it."""

    process: str
    path: Path
    exists: bool
    lines: list[str]


def execution_logs(
    settings: Settings, execution_id: str, replicas: list[str], limit: int = 200
) -> list[LogLines]:
    """The replicas' files (the steps ran there) and every dispatcher file, each with
    its lines naming the execution (rotated files included, at most ``limit``).

    Files live on the node that wrote them: on a cluster a replica's file is on
    its node, so here it may not exist.
    """
    folder = settings.logs_dir
    found = [(r, folder / file_name(r)) for r in dict.fromkeys(replicas)]
    dispatchers = sorted(folder.glob("wtm-dispatcher*.log")) if folder.is_dir() else []
    found += [(p.stem, p) for p in dispatchers if not _ROTATED.search(p.stem)]
    out = []
    for process, path in found:
        lines = _grep(path, execution_id, limit)
        if lines or process in replicas:
            out.append(LogLines(process, path, path.exists(), lines))
    return out


def _grep(path: Path, needle: str, limit: int) -> list[str]:
    """Lines naming ``needle`` in a file and its rotated siblings, oldest first."""
    files = [*rotated(path), path]
    lines: list[str] = []
    for f in files:
        with contextlib.suppress(OSError), open(f, encoding="utf-8", errors="replace") as fh:
            lines += [line.rstrip("\n") for line in fh if needle in line]
    return lines[-limit:]
