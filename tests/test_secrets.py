"""Secrets never shown: with passwords set for Redis, MongoDB and the object store,
no command's output, no record and no log file holds one."""

from __future__ import annotations

import json
import secrets
import stat
from pathlib import Path

import pytest

from orchestrator import stack
from orchestrator.records import open_records
from orchestrator.secrets import for_replicas, redact, redact_text
from orchestrator.settings import Settings
from orchestrator.testing import write_task
from tests.conftest import moto_server
from tests.private_stack import running, shell_env, wtm


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@127.0.0.1:6379/0", "redis://***@127.0.0.1:6379/0"),
        ("redis://user:p@ss@host:1/0", "redis://***@host:1/0"),  # an '@' left unescaped
        (
            "mongodb://admin:s3cret@db:27017/?authSource=admin",
            "mongodb://***@db:27017/?authSource=admin",
        ),
        ("mongodb+srv://u:p@cluster.example.com/db", "mongodb+srv://***@cluster.example.com/db"),
        ("rediss://default:pw@cache.example.com:6380/0", "rediss://***@cache.example.com:6380/0"),
        ("mongodb://u:ab/cd@db:27017/", "mongodb://***@db:27017/"),  # a '/' left unescaped
        ("mongodb://reader@db/ai_worker", "mongodb://***@db/ai_worker"),  # a user alone
        ("redis://h:6379/0?password=s3cret&db=1", "redis://h:6379/0?password=***&db=1"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("http://127.0.0.1:8265", "http://127.0.0.1:8265"),
        (None, ""),
    ],
)
def test_redact_hides_the_credentials_of_a_url(url, shown):
    assert redact(url) == shown


def test_redact_text_hides_every_url_in_a_message():
    message = "Error 111 connecting to redis://:pw1@a:1/0; then mongodb://u:pw2@b/ (x@y z)"
    assert redact_text(message) == (
        "Error 111 connecting to redis://***@a:1/0; then mongodb://***@b/ (x@y z)"
    )


def test_replicas_get_settings_without_the_records_redis_or_ray_credentials(tmp_path):
    full = Settings(
        home=tmp_path,
        redis={"url": "redis://:pw@r:6379/0"},
        records={"uri": "mongodb://admin:pw@m:27017/", "database": "prod"},
        objects={"endpoint": "s3:9000", "access_key": "ak", "secret_key": "sk"},
        ray={"address": "head:6379", "auth_token_file": tmp_path / "token"},
    )
    safe = for_replicas(full)
    assert "pw" not in safe.model_dump_json()
    assert str(tmp_path / "token") not in safe.model_dump_json()
    assert (safe.objects.endpoint, safe.objects.secret_key) == ("s3:9000", "sk")  # its data
    assert safe.home == full.home and safe.controller == full.controller
    assert full.redis.url == "redis://:pw@r:6379/0"  # the caller's copy is untouched


@pytest.fixture
def s3():
    """An S3 server of this test's own (moto), its keys checked by nobody but us."""
    with moto_server() as endpoint:
        yield endpoint


def test_no_password_shows_in_any_output_record_or_log(tmp_path, s3):
    home, wtm_home = tmp_path / "home", tmp_path / "wtm"
    home.mkdir()
    s3_secret = f"s3-secret-{secrets.token_hex(8)}"
    mongo_password = f"mongo-pw-{secrets.token_hex(8)}"
    quoted = f"quoted-pw-{secrets.token_hex(8)}"  # in an error a task raises
    env = shell_env(
        home,
        wtm_home,
        WTM_OBJECTS__ENDPOINT=s3,
        WTM_OBJECTS__ACCESS_KEY=f"access-{secrets.token_hex(4)}",
        WTM_OBJECTS__SECRET_KEY=s3_secret,
    )
    ok = write_task(tmp_path, "secret_echo", 'return {"echo": input_data["text"]}')
    leaky = write_task(
        tmp_path,
        "secret_leaky",
        f'raise FatalError("cannot reach redis://:{quoted}@db.internal:6379/0 (refused)")',
    )
    outputs: list[str] = []

    def cli(*args: str, env: dict[str, str] = env) -> dict | list | None:
        done = wtm(env, *args)
        outputs.extend([done.stdout, done.stderr])
        try:
            return json.loads(done.stdout)
        except ValueError:
            return None

    with running(env) as up:
        outputs += [up.stdout, up.stderr]
        assert up.returncode == 0, up.stderr
        redis_password = (wtm_home / "secrets" / "redis_password").read_text().strip()
        ray_token = (wtm_home / "secrets" / "ray_auth_token").read_text().strip()
        cli("task", "register", str(ok))
        cli("task", "register", str(leaky))
        cli("health")
        health = cli("health", "--json")
        assert {c["name"] for c in health} >= {"redis", "records", "objects", "ray"}
        cli("task", "list", "--json")
        cli("task", "info", "secret_echo", "--json")
        done = cli("run", "secret_echo", '{"text": "hi"}', "--json")
        assert done["status"] == "succeeded"
        failed = cli("run", "secret_leaky", "{}", "--json")
        assert failed["status"] == "failed" and "***@db.internal" in failed["error"]["message"]
        cli("run", "no_such_task", "{}")  # an error, on stderr
        cli("executions", "list", "--json")
        cli("executions", "show", done["execution_id"], "--json")
        cli("executions", "show", failed["execution_id"])  # with its log lines
        cli("worker", "status", "--json")
        cli("dlq", "list", "--json")
        # MongoDB records with a password (mongomock: the same code up to the socket).
        mongo = {**env, "WTM_RECORDS__URI": f"mongomock://admin:{mongo_password}@db:27017/"}
        cli("health", env=mongo)
        cli("health", "--json", env=mongo)
        cli("task", "list", "--json", env=mongo)
        cli("executions", "list", "--json", env=mongo)
        cli("executions", "show", "NO_SUCH_EXECUTION", env=mongo)

        resolved = stack.resolve(Settings(home=wtm_home, objects={"endpoint": s3}))
        records = open_records(resolved)
        dumped = [r.model_dump_json() for r in records.list_tasks()]
        dumped += [r.model_dump_json() for r in records.scan_executions()]
        dumped += [r.model_dump_json() for r in records.list_workers()]
        st = stack.read_state(resolved)
        ray_logs = Path(st.ray_temp_dir) / "session_latest" / "logs"
        assert stat.S_IMODE((wtm_home / "stack.json").stat().st_mode) == 0o600  # holds the URL

    logs = [p for p in wtm_home.rglob("*") if p.is_file() and _is_log(p)]
    logs += [p for p in ray_logs.rglob("*") if p.is_file()] if ray_logs.exists() else []
    assert any(p.name.endswith(".log") for p in logs)
    places = {
        "outputs": "\n".join(outputs),
        "records": "\n".join(dumped),
        **{p.name: p.read_bytes().decode("latin-1") for p in wtm_home.glob("records.db*")},
        **{str(p): p.read_bytes().decode("latin-1") for p in logs},
    }
    secret_values = {
        "the Redis password": redis_password,
        "the object store's secret key": s3_secret,
        "the MongoDB password": mongo_password,
        "a password an error quoted": quoted,
        "the Ray token": ray_token,
    }
    leaks = [
        f"{what} in {where}"
        for where, text in places.items()
        for what, value in secret_values.items()
        if value in text
    ]
    assert leaks == []


def _is_log(path: Path) -> bool:
    return path.suffix in (".log", ".out", ".err") or "logs" in path.parts
