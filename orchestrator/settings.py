"""Typed settings: one object built at the edge (CLI, SDK) and passed down.

Sources, strongest first: keyword arguments, ``WTM_*`` environment variables
(nested groups with ``__``: ``WTM_REDIS__URL``), a ``config.json`` in the
seed's format, then the embedded defaults. No other module reads the
environment.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from orchestrator import logs
from orchestrator.errors import ConfigError


class RedisSettings(BaseModel):
    """Where the queues live; ``url=None`` means the embedded redis-server."""

    url: str | None = None


class RecordsSettings(BaseModel):
    """The system of record; ``uri=None`` means a SQLite file under the home."""

    uri: str | None = None
    database: str = "ai_worker"
    timeout_s: float = 10.0  # SQLite: how long a write waits for another's lock


class ObjectsSettings(BaseModel):
    """The object store; ``endpoint=None`` means a folder under the home."""

    endpoint: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    secure: bool = False
    region: str | None = None


class RaySettings(BaseModel):
    """The Ray cluster; ``address=None`` means the embedded local head."""

    address: str | None = None
    namespace: str = "wtm"
    num_cpus: int | None = None
    # Where `wtm health` says Prometheus reads Ray's metrics on a cluster you run
    # (e.g. http://ray-head:8080/metrics). None: each node's own, as the
    # controller finds them; the embedded head's is in stack.json.
    metrics_url: str | None = None
    # A file holding the cluster's auth token: every Ray process and driver this
    # system starts runs with token authentication on and this token. None: Ray's
    # own (RAY_AUTH_MODE, RAY_AUTH_TOKEN[_PATH]); the embedded stack uses one of its own.
    auth_token_file: Path | None = None


class DispatcherSettings(BaseModel):
    """How dispatchers read the streams and how many jobs each runs at once."""

    count: int = 1
    concurrency: int = 256
    block_ms: int = 1000
    max_deliveries: int = 5
    queues: list[str] = Field(default_factory=list)  # empty: every known queue
    heartbeat_s: float = 2.0  # beat (and lease renewal) period; dead after ~5 missed beats
    redis_connections: int = 32  # jobs share this many connections
    inline_result_bytes: int = 256 * 1024  # larger results go to the object store
    replica_wait_s: float = 1.0  # a call waiting for a replica slot re-checks the set this often


class ControllerSettings(BaseModel):
    """How the controller scales replica sets and tells live replicas from dead ones."""

    period_s: float = 0.5  # control loop period
    # An idle replica stops after this long (Ray Serve's downscale delay), or to make
    # room for a set an execution needs; demand above what the replicas hold for
    # upscale_delay_s adds replicas (Serve's upscale delay). One execution's own
    # parallel steps of a task get their replicas at once.
    idle_timeout_s: float = 600.0
    upscale_delay_s: float = 30.0
    load_timeout_s: float = 600.0  # a replica must load its task within this
    heartbeat_s: float = 2.0  # replicas send their worker record to the controller this often
    probe_timeout_s: float = 5.0  # a replica that does not answer a probe within this is hung
    report_ttl_s: float = 5.0  # a dispatcher's demand report counts for this long
    dead_after_beats: int = 3  # a replica silent for this many heartbeats is shown dead


class StepSettings(BaseModel):
    """System defaults of a step's policy, for what the step, the task's own
    ``task.json``, ``worker.task_configs`` and the pipeline's ``global_settings``
    leave unset (see :func:`orchestrator.policy.resolve_step_policy`)."""

    timeout_s: float = Field(default=300.0, gt=0)
    max_retries: int = Field(default=3, ge=0)
    backoff_base_s: float = Field(default=0.2, ge=0)  # first retry waits up to this
    backoff_max_s: float = Field(default=30.0, ge=0)  # no retry waits longer


class ClientSettings(BaseModel):
    """How a client waits for executions."""

    poll_s: float = 2.0  # records check while waiting, in case an event was missed
    outage_s: float = 60.0  # a wait rides out the records being unreachable this long
    idempotency_s: float = 24 * 3600.0  # a submit's idempotency key is remembered this long
    cancel_ttl_s: float = 7 * 24 * 3600.0  # how long a cancel request is remembered
    inline_input_bytes: int = 64 * 1024  # larger inputs travel through the object store
    max_input_bytes: int = 256 * 2**20  # larger ones are refused: send files instead


class RetentionSettings(BaseModel):
    """How long finished executions, and all kept for them, stay (see orchestrator.retention)."""

    older_than_days: float = Field(default=30.0, ge=0)  # 0: never prune by itself
    every_s: float = Field(default=3600.0, gt=0)  # how often the controller prunes


class LoggingSettings(BaseModel):
    """The seed's ``logging`` section but its level (that is ``log_level``): how each
    process's log file under ``logs_dir`` is written (see :mod:`orchestrator.logs`)."""

    model_config = ConfigDict(extra="forbid")
    format: str = logs.TEMPLATE  # a template of loguru's fields, "text" (this one) or "json"
    rotation: str = "10 MB"  # a size, or a period ("1 day")
    retention: str = "1 week"  # an age, or a count of rotated files ("10 files")
    dir: Path | None = None  # None: logs/ under the home

    @field_validator("format")
    @classmethod
    def _format(cls, value: str) -> str:
        logs.formatter(value)  # an unknown {field} is named now, not in an actor later
        return value

    @field_validator("rotation")
    @classmethod
    def _rotation(cls, value: str) -> str:
        logs.parse_rotation(value)
        return value

    @field_validator("retention")
    @classmethod
    def _retention(cls, value: str) -> str:
        logs.parse_retention(value)
        return value


class TaskOverrides(BaseModel):
    """One entry of the seed's ``worker.task_configs``: an operator's overrides of a
    task's ``task.json`` in this deployment."""

    model_config = ConfigDict(extra="forbid")
    queue: str | None = None
    priority: int | None = Field(default=None, ge=1, le=10)
    timeout: float | None = Field(default=None, gt=0)
    max_retries: int | None = Field(default=None, ge=0)


class WorkerSettings(BaseModel):
    """The seed's ``worker`` section: defaults for replicas."""

    worker_id: str = "worker_001"
    max_concurrent_tasks: int = 16
    active_tasks: list[str] = Field(default_factory=list)
    task_configs: dict[str, TaskOverrides] = Field(default_factory=dict)

    def overrides(self, task_id: str) -> TaskOverrides:
        """The operator's overrides of one task (none set: every field None)."""
        return self.task_configs.get(task_id) or TaskOverrides()


class Settings(BaseSettings):
    """Everything configurable, grouped by the system it configures."""

    model_config = SettingsConfigDict(env_prefix="WTM_", env_nested_delimiter="__", extra="ignore")

    home: Path = Path("~/.wtm")
    config: Path | None = None
    log_level: str = "INFO"
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    records: RecordsSettings = Field(default_factory=RecordsSettings)
    objects: ObjectsSettings = Field(default_factory=ObjectsSettings)
    ray: RaySettings = Field(default_factory=RaySettings)
    dispatcher: DispatcherSettings = Field(default_factory=DispatcherSettings)
    controller: ControllerSettings = Field(default_factory=ControllerSettings)
    steps: StepSettings = Field(default_factory=StepSettings)
    client: ClientSettings = Field(default_factory=ClientSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        kwargs = getattr(init_settings, "init_kwargs", {})
        return (init_settings, env_settings, SeedConfigSource(settings_cls, kwargs))

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        return logs.parse_level(value)

    def model_post_init(self, __context: Any) -> None:
        self.home = self.home.expanduser().resolve()

    @property
    def embedded(self) -> bool:
        """True when any part runs on the embedded stack."""
        return self.redis.url is None or self.ray.address is None

    # The embedded stores' places under the home, named once.
    @property
    def records_file(self) -> Path:
        return self.home / "records.db"

    @property
    def objects_dir(self) -> Path:
        return self.home / "objects"

    @property
    def logs_dir(self) -> Path:
        """Where each process writes its log file (see :mod:`orchestrator.logs`)."""
        return (self.logging.dir or self.home / "logs").expanduser()

    @property
    def package_cache(self) -> Path:
        """Where replicas and `task test` extract packages, one folder per sha256."""
        return self.home / "cache" / "packages"


class SeedConfigSource(PydanticBaseSettingsSource):
    """Reads the seed's ``config.json`` (database, minio, redis, worker, logging).

    The file is ``WTM_CONFIG`` if set, else ``config.json`` in the home folder.
    """

    def __init__(self, settings_cls: type[BaseSettings], init_kwargs: dict[str, Any]):
        super().__init__(settings_cls)
        self.init_kwargs = init_kwargs

    def get_field_value(self, field, field_name):  # pragma: no cover - unused
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = _config_path(self.init_kwargs.get("config"), self.init_kwargs.get("home"))
        if path is None:
            return {}
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        return translate_seed_config(data, source=str(path))


def _config_path(config: Any = None, home: Any = None) -> Path | None:
    """An explicit config (argument, then WTM_CONFIG), else the home's config.json."""
    explicit = config or os.environ.get("WTM_CONFIG")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file {explicit}: no such file")
        return path
    home = Path(home or os.environ.get("WTM_HOME", "~/.wtm")).expanduser()
    candidate = home / "config.json"
    return candidate if candidate.is_file() else None


def translate_seed_config(data: dict[str, Any], source: str = "config.json") -> dict[str, Any]:
    """Map the seed's config sections onto our settings groups."""
    known = {
        "database",
        "minio",
        "redis",
        "worker",
        "logging",
        "ray",
        "dispatcher",
        "controller",
        "steps",
        "client",
        "retention",
        "home",
    }
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown section {unknown[0]!r}")
    out: dict[str, Any] = {}
    if "redis" in data:
        out["redis"] = {"url": _redis_url(data["redis"])}
    if "database" in data:
        out["records"] = _records(data["database"])
    if "minio" in data:
        m = data["minio"]
        out["objects"] = {
            "endpoint": m.get("endpoint"),
            "access_key": m.get("access_key"),
            "secret_key": m.get("secret_key"),
            "secure": m.get("secure", False),
        }
    if "worker" in data:
        out["worker"] = data["worker"]
    if "logging" in data:
        section = dict(data["logging"])
        if "level" in section:
            out["log_level"] = section.pop("level")
        out["logging"] = section
    for key in ("ray", "dispatcher", "controller", "steps", "client", "retention", "home"):
        if key in data:
            out[key] = data[key]
    return out


def _redis_url(r: dict[str, Any]) -> str:
    if "url" in r:
        return r["url"]
    auth = f":{quote(str(r['password']), safe='')}@" if r.get("password") else ""
    return f"redis://{auth}{r.get('host', 'localhost')}:{r.get('port', 6379)}/{r.get('db', 0)}"


def _records(d: dict[str, Any]) -> dict[str, Any]:
    if d.get("type", "mongodb") == "sqlite":
        return {"uri": d.get("path"), "database": d.get("database", "ai_worker")}
    if "uri" in d:
        return {"uri": d["uri"], "database": d.get("database", "ai_worker")}
    auth = ""
    if d.get("username"):
        auth = f"{quote(d['username'], safe='')}:{quote(str(d.get('password', '')), safe='')}@"
    query = f"?authSource={d['auth_source']}" if d.get("auth_source") else ""
    uri = f"mongodb://{auth}{d.get('host', 'localhost')}:{d.get('port', 27017)}/{query}"
    return {"uri": uri, "database": d.get("database", "ai_worker")}


def load_settings(**overrides: Any) -> Settings:
    """Build settings from overrides, the environment and config.json."""
    try:
        return Settings(**overrides)
    except ConfigError:
        raise
    except Exception as e:  # pydantic's ValidationError: name the field
        raise ConfigError(f"invalid settings: {_first_error(e)}") from e


def _first_error(e: Exception) -> str:
    errors = getattr(e, "errors", None)
    if callable(errors):
        first = errors()[0]
        return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    return str(e)
