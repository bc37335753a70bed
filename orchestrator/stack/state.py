"""What ``wtm up`` started, as written to ``WTM_HOME/stack.json``, and the lock around it."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, Field

from orchestrator.errors import StackError
from orchestrator.settings import Settings


class StackState(BaseModel):
    """The embedded stack's processes and ports."""

    home: str
    redis_url: str | None = None
    redis_pid: int | None = None
    ray_address: str | None = None
    ray_temp_dir: str | None = None
    gcs_port: int | None = None
    dashboard_url: str | None = None
    metrics_url: str | None = None  # the Ray head's Prometheus endpoint
    ray_token_file: str | None = None  # the head's auth token (see stack.credentials)
    ports: dict[str, int] = Field(default_factory=dict)
    dispatchers: list[str] = Field(default_factory=list)
    supervisor_pid: int | None = None
    started_at: float


def path(settings: Settings) -> Path:
    return settings.home / "stack.json"


def read(settings: Settings) -> StackState | None:
    """The recorded state, or None if nothing is recorded (or it cannot be read)."""
    try:
        return StackState.model_validate_json(path(settings).read_text())
    except (FileNotFoundError, ValueError):
        return None


def write(settings: Settings, state: StackState) -> None:
    """Replace the recorded state at once (a reader sees the old file or the new one).

    Only the owner may read it: the Redis URL in it holds the stack's password.
    """
    target = path(settings)
    tmp = target.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)  # an older one may be readable by others
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(state.model_dump(), indent=2))
    os.replace(tmp, target)


def forget(settings: Settings) -> None:
    path(settings).unlink(missing_ok=True)


@contextlib.contextmanager
def locked(settings: Settings) -> Iterator[None]:
    """Hold the home's lock: one ``up`` or ``down`` at a time, across processes."""
    settings.home.mkdir(parents=True, exist_ok=True)
    with open(settings.home / "stack.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def resolve(settings: Settings, state: StackState | None = None) -> Settings:
    """Settings with the embedded endpoints filled in; StackError if the stack is down."""
    if not settings.embedded:
        return settings
    state = state or read(settings)
    if state is None:
        raise StackError(f"the embedded stack in {settings.home} is not running; run `wtm up`")
    update = settings.model_copy(deep=True)
    if update.redis.url is None:
        update.redis.url = state.redis_url
    if update.ray.address is None:
        update.ray.address = state.ray_address
        if state.ray_token_file and update.ray.auth_token_file is None:
            update.ray.auth_token_file = Path(state.ray_token_file)
    return update
