"""Logs: the seed's logging section honoured, files under the home, an execution's lines found."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from orchestrator import logs
from orchestrator.errors import ConfigError
from orchestrator.models import ExecutionStatus
from orchestrator.settings import Settings, load_settings
from tests.conftest import make_task
from tests.helpers import wait_until


@pytest.fixture
def home(monkeypatch, tmp_path) -> Path:
    for name in list(os.environ):
        if name.startswith("WTM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("WTM_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def logger():
    """A logger of the test's own: configuring it leaves the root (pytest's) alone."""
    name = "wtm.test_logs"
    wtm_level = logging.getLogger("wtm").level
    yield name
    target = logging.getLogger(name)
    for handler in list(target.handlers):
        target.removeHandler(handler)
        handler.close()
    logging.getLogger("wtm").setLevel(wtm_level)


# the seed's section -----------------------------------------------------------------------
def test_the_seed_logging_section_is_read_whole(home):
    section = {"level": "debug", "format": "json", "rotation": "1 day", "retention": "10 files"}
    (home / "config.json").write_text(json.dumps({"logging": section}))

    s = load_settings()

    assert s.log_level == "DEBUG"
    assert (s.logging.format, s.logging.rotation, s.logging.retention) == (
        "json",
        "1 day",
        "10 files",
    )
    assert s.logs_dir == home.resolve() / "logs"
    assert logs.parse_rotation(s.logging.rotation) == logs.Rotation(every_s=86400)
    assert logs.parse_retention(s.logging.retention) == logs.Retention(keep=10)
    assert logs.parse_rotation("10 MB") == logs.Rotation(size=10_000_000)
    assert logs.parse_retention("1 week") == logs.Retention(max_age_s=7 * 86400)


@pytest.mark.parametrize(
    ("section", "named"),
    [
        ({"rotation": "often"}, "logging.rotation"),
        ({"retention": "forever"}, "logging.retention"),
        ({"format": "{time} {colour} {message}"}, "logging.format"),
        ({"level": "LOUD"}, "log_level"),
        ({"rotaton": "10 MB"}, "logging.rotaton"),
    ],
)
def test_a_bad_logging_value_is_a_config_error_naming_it(home, section, named):
    (home / "config.json").write_text(json.dumps({"logging": section}))

    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_settings()


def test_environment_variables_set_the_logging_group(home, monkeypatch):
    monkeypatch.setenv("WTM_LOGGING__FORMAT", "json")
    monkeypatch.setenv("WTM_LOGGING__DIR", str(home / "elsewhere"))
    monkeypatch.setenv("WTM_LOG_LEVEL", "warning")

    s = load_settings()

    assert (s.logging.format, s.log_level, s.logs_dir) == ("json", "WARNING", home / "elsewhere")


# formats and files ------------------------------------------------------------------------
def test_the_seed_template_writes_its_fields_and_the_execution_id(tmp_path, logger):
    settings = Settings(home=tmp_path)
    path = logs.configure(settings, "wtm:dispatcher#0", logger)
    log = logging.getLogger(f"{logger}.x")

    log.info("plain line")
    with logs.for_execution("01EXEC", "detect"):
        log.warning("inside %s", "a step")
    log.debug("below the level")
    log.error("cannot reach %s", "redis://:hunter2@redis:6379/0")

    assert path == tmp_path / "logs" / "wtm-dispatcher-0.log"
    first, second, third = path.read_text().splitlines()
    assert third.endswith("| cannot reach redis://***@redis:6379/0")  # no credential in a log
    time_, level, name, message = first.split(" | ")
    assert (level, name, message) == ("INFO", f"{logger}.x", "plain line")
    assert time_.startswith("20")
    assert second.endswith("| inside a step | execution=01EXEC step=detect")


def test_json_format_writes_one_parseable_object_per_line(tmp_path, logger):
    settings = Settings(home=tmp_path, logging={"format": "json"}, log_level="DEBUG")
    path = logs.configure(settings, "cli", logger)
    log = logging.getLogger(logger)

    log.debug("one")
    with logs.for_execution("01EXEC"):
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("two")

    one, two = (json.loads(line) for line in path.read_text().splitlines())
    assert (one["level"], one["message"], one["name"], one["process"]) == (
        "DEBUG",
        "one",
        logger,
        "cli",
    )
    assert "execution_id" not in one
    assert (two["level"], two["execution_id"]) == ("ERROR", "01EXEC")
    assert "ValueError: boom" in two["exception"]


def test_files_rotate_by_size_and_keep_what_the_retention_allows(tmp_path, logger):
    settings = Settings(home=tmp_path, logging={"rotation": "1 KB", "retention": "2 files"})
    path = logs.configure(settings, "cli", logger)
    other = logs.RotatingFile(path, logs.Rotation(size=1000), logs.Retention(keep=2))
    other.setFormatter(logging.Formatter("%(message)s"))  # a second process on the same file
    log = logging.getLogger(logger)

    for i in range(100):
        log.info("line %03d %s", i, "x" * 40)
        other.emit(logging.makeLogRecord({"msg": f"other {i:03d}"}))
    other.close()

    rotated = sorted(path.parent.glob("cli.*.log"))
    assert len(rotated) == 2
    assert all(p.stat().st_size < 1100 for p in [*rotated, path])
    kept = "".join(p.read_text() for p in [*rotated, path])
    assert "line 099" in kept and "other 099" in kept  # the newest lines of both writers


def test_retention_by_age_removes_old_files_of_gone_processes(tmp_path, logger):
    folder = tmp_path / "logs"
    folder.mkdir()
    old = folder / "wtm-gone@1.0.0-3.log"
    old.write_text("from a replica long gone\n")
    os.utime(old, (1, 1))
    settings = Settings(home=tmp_path, logging={"retention": "1 day"})

    logs.configure(settings, "cli", logger)

    assert not old.exists()


# on the stack -----------------------------------------------------------------------------
def test_a_run_leaves_the_tasks_and_dispatchers_lines_under_the_home(
    cli_env, client, stack_settings, tmp_path
):
    body = """
    self.logger.info("counting %s for the log", input_data["n"])
    if input_data["n"] < 0:
        raise FatalError("negative")
    return {"n": input_data["n"]}
    """
    client.register_task(make_task(tmp_path, "logs_t", body))

    ok = client.run("logs_t", {"n": 7}, timeout=120)
    bad = client.run("logs_t", {"n": -1}, timeout=120)

    assert (ok.status, bad.status) == (ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED)
    folder = stack_settings.logs_dir
    replica = folder / logs.file_name(ok.worker_id)
    line = wait_until(
        lambda: [x for x in replica.read_text().splitlines() if "counting 7" in x],
        what="the task's info line in its replica's file",
    )[0]
    assert "| INFO | wtm.task." in line and f"execution={ok.execution_id}" in line
    dispatcher = (folder / "wtm-dispatcher-0.log").read_text()
    assert "dispatcher wtm:dispatcher#0 serving" in dispatcher
    assert f"execution {bad.execution_id} failed: FatalError: negative" in dispatcher
    assert ok.execution_id not in dispatcher  # a success costs no line at INFO

    shown = CliRunner().invoke(app, ["executions", "show", bad.execution_id])
    assert shown.exit_code == 0, shown.output
    out = " ".join(shown.stdout.split())  # the console wraps long lines
    assert f"logs of {bad.worker_id}: {folder / logs.file_name(bad.worker_id)}" in out
    assert "counting -1 for the log" in out
    assert f"logs of wtm-dispatcher-0: {folder / 'wtm-dispatcher-0.log'}" in out
    assert "FatalError: negative" in out
