"""Settings: WTM_ environment variables, the seed's config.json, and which one wins."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from orchestrator.errors import ConfigError
from orchestrator.settings import load_settings

# The seed's "Complete Worker Configuration" (seed-report.md), as users have it.
SEED_CONFIG = {
    "database": {
        "type": "mongodb",
        "host": "localhost",
        "port": 27017,
        "database": "ai_worker",
        "username": "admin",
        "password": "admin123",
        "auth_source": "admin",
    },
    "minio": {
        "endpoint": "localhost:9000",
        "access_key": "minioadmin",
        "secret_key": "minioadmin123",
        "bucket": "ai-tasks",
        "secure": False,
    },
    "redis": {"host": "localhost", "port": 6379, "password": "redis123", "db": 0},
    "worker": {
        "worker_id": "worker_001",
        "max_concurrent_tasks": 5,
        "active_tasks": ["face_detection", "face_attribute", "face_extractor"],
        "task_configs": {
            "face_detection": {"queue": "face_detection", "priority": 8, "timeout": 120},
            "face_attribute": {"queue": "face_attribute", "priority": 6, "timeout": 90},
        },
    },
    "logging": {
        "level": "INFO",
        "format": "{time} | {level} | {name} | {message}",
        "rotation": "10 MB",
        "retention": "1 week",
    },
}


@pytest.fixture
def home(monkeypatch, tmp_path) -> Path:
    """An empty WTM_HOME and no other WTM_ variables, whatever the caller's shell has."""
    for name in list(os.environ):
        if name.startswith("WTM_"):
            monkeypatch.delenv(name)
    home = tmp_path / "wtm-home"
    home.mkdir()
    monkeypatch.setenv("WTM_HOME", str(home))
    return home


def write_config(home: Path, data: dict) -> Path:
    path = home / "config.json"
    path.write_text(json.dumps(data))
    return path


# defaults and the environment ------------------------------------------------------
def test_without_config_everything_is_embedded(home):
    s = load_settings()

    assert s.home == home.resolve()
    assert s.redis.url is None
    assert s.records.uri is None
    assert s.objects.endpoint is None
    assert s.ray.address is None
    assert s.embedded


def test_env_vars_with_prefix_and_nesting(home, monkeypatch):
    monkeypatch.setenv("WTM_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("WTM_REDIS__URL", "redis://cache.internal:6380/2")
    monkeypatch.setenv("WTM_RECORDS__URI", "mongodb://db.internal:27017/")
    monkeypatch.setenv("WTM_RECORDS__DATABASE", "prod")
    monkeypatch.setenv("WTM_RAY__ADDRESS", "ray://head:10001")
    monkeypatch.setenv("WTM_DISPATCHER__CONCURRENCY", "32")
    monkeypatch.setenv("WTM_DISPATCHER__QUEUES", '["vision", "text"]')
    monkeypatch.setenv("WTM_OBJECTS__SECURE", "true")

    s = load_settings()

    assert s.log_level == "DEBUG"
    assert s.redis.url == "redis://cache.internal:6380/2"
    assert (s.records.uri, s.records.database) == ("mongodb://db.internal:27017/", "prod")
    assert s.ray.address == "ray://head:10001"
    assert s.dispatcher.concurrency == 32
    assert s.dispatcher.queues == ["vision", "text"]
    assert s.objects.secure is True
    assert not s.embedded


def test_home_from_env_is_expanded_and_absolute(home, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WTM_HOME", "relative-home")

    assert load_settings().home == (tmp_path / "relative-home").resolve()


def test_a_malformed_env_value_is_a_config_error_naming_the_field(home, monkeypatch):
    monkeypatch.setenv("WTM_DISPATCHER__CONCURRENCY", "lots")

    with pytest.raises(ConfigError, match=r"dispatcher\.concurrency"):
        load_settings()


def test_keyword_arguments_beat_the_environment(home, monkeypatch):
    monkeypatch.setenv("WTM_LOG_LEVEL", "DEBUG")

    assert load_settings(log_level="WARNING").log_level == "WARNING"


# the seed's config.json ------------------------------------------------------------
def test_seed_config_is_translated(home):
    write_config(home, SEED_CONFIG)

    s = load_settings()

    assert s.redis.url == "redis://:redis123@localhost:6379/0"
    assert s.records.uri == "mongodb://admin:admin123@localhost:27017/?authSource=admin"
    assert s.records.database == "ai_worker"
    assert s.objects.endpoint == "localhost:9000"
    assert (s.objects.access_key, s.objects.secret_key) == ("minioadmin", "minioadmin123")
    assert s.objects.secure is False
    assert s.worker.worker_id == "worker_001"
    assert s.worker.max_concurrent_tasks == 5
    assert s.worker.active_tasks == ["face_detection", "face_attribute", "face_extractor"]
    assert s.worker.task_configs["face_attribute"].timeout == 90
    assert s.worker.task_configs["face_detection"].queue == "face_detection"
    assert s.log_level == "INFO"


def test_passwords_with_url_characters_are_escaped(home):
    write_config(
        home,
        {
            "redis": {"host": "r", "port": 6379, "password": "p@ss:w/rd", "db": 3},
            "database": {"host": "m", "username": "ad min", "password": "a@b", "auth_source": "x"},
        },
    )

    s = load_settings()

    assert s.redis.url == "redis://:p%40ss%3Aw%2Frd@r:6379/3"
    assert s.records.uri == "mongodb://ad%20min:a%40b@m:27017/?authSource=x"


def test_config_file_named_by_wtm_config(home, monkeypatch, tmp_path):
    path = tmp_path / "elsewhere.json"
    path.write_text(json.dumps({"redis": {"url": "redis://named:1/0"}}))
    write_config(home, {"redis": {"url": "redis://home:1/0"}})
    monkeypatch.setenv("WTM_CONFIG", str(path))

    assert load_settings().redis.url == "redis://named:1/0"


def test_wtm_config_naming_a_missing_file_is_a_config_error(home, monkeypatch, tmp_path):
    monkeypatch.setenv("WTM_CONFIG", str(tmp_path / "nope.json"))

    with pytest.raises(ConfigError, match=r"nope\.json"):
        load_settings()


def test_env_beats_config_json(home, monkeypatch):
    write_config(home, SEED_CONFIG)
    monkeypatch.setenv("WTM_REDIS__URL", "redis://from-env:6379/1")
    monkeypatch.setenv("WTM_RECORDS__DATABASE", "from_env")
    monkeypatch.setenv("WTM_WORKER__MAX_CONCURRENT_TASKS", "9")

    s = load_settings()

    assert s.redis.url == "redis://from-env:6379/1"
    assert s.records.database == "from_env"
    assert s.worker.max_concurrent_tasks == 9
    # What the environment does not set still comes from the file.
    assert s.records.uri == "mongodb://admin:admin123@localhost:27017/?authSource=admin"
    assert s.objects.endpoint == "localhost:9000"
    assert s.worker.worker_id == "worker_001"


def test_unknown_section_is_a_config_error_naming_it_and_the_file(home):
    path = write_config(home, {**SEED_CONFIG, "databse": {"host": "typo"}})

    with pytest.raises(ConfigError) as info:
        load_settings()

    assert "'databse'" in str(info.value)
    assert str(path) in str(info.value)


def test_malformed_config_json_is_a_config_error_naming_the_file(home):
    path = home / "config.json"
    path.write_text('{"redis": {"host": "localhost",}}')

    with pytest.raises(ConfigError) as info:
        load_settings()

    assert str(path) in str(info.value)


def test_config_json_in_a_home_passed_as_argument_is_read(home, tmp_path):
    other = tmp_path / "other-home"
    other.mkdir()
    write_config(other, {"redis": {"url": "redis://other:1/0"}})

    s = load_settings(home=other)

    assert s.home == other.resolve()
    assert s.redis.url == "redis://other:1/0"
