"""The embedded stack: a real redis-server and a local Ray head under WTM_HOME.

``up`` is idempotent and records what it started in ``WTM_HOME/stack.json``
(:mod:`.state`); ``down`` stops exactly those processes (:mod:`.services`),
never another stack's. The controller and dispatchers are deployed onto the
cluster from a child process (:func:`orchestrator.cluster.deploy`), so
starting a stack never touches the calling process's own Ray connection.

What dies is restarted, and only that (:func:`heal`): Redis on its port with
its AOF, the Ray head on its ports, the control plane if it is gone. A small
supervisor process (:mod:`.supervisor`) does this every second with no one
asking; :func:`ensure`, the one place that starts a stack on demand, does it
too, so whoever notices first puts the stack right.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from orchestrator import cluster
from orchestrator.settings import Settings
from orchestrator.stack import processes, services, state
from orchestrator.stack.health import Component, control_plane_alive, health
from orchestrator.stack.state import StackState, resolve
from orchestrator.stack.state import read as read_state

__all__ = [
    "Component",
    "Notify",
    "StackState",
    "dead_parts",
    "down",
    "ensure",
    "heal",
    "health",
    "is_up",
    "read_state",
    "resolve",
    "stack_pids",
    "up",
]

log = logging.getLogger("wtm.stack")

Notify = Callable[[str], None]


def is_up(settings: Settings) -> bool:
    """Whether the embedded parts named in stack.json answer."""
    st = state.read(settings)
    return st is not None and not dead_parts(settings, st)


def ensure(settings: Settings, notify: Notify | None = None) -> Settings:
    """Start the embedded stack, or restart what of it died; returns resolved settings.

    With nothing embedded, the control plane is still put back if it is gone
    (and Redis answers: a Redis that does not is the caller's one-line error).
    """
    if not settings.embedded:
        url = settings.redis.url
        if services.redis_ok(url) and not control_plane_alive(url):
            cluster.deploy(settings, replace=False)
        return settings
    st = state.read(settings)
    if st is None:
        st = up(settings)
        if notify:
            notify(f"Started the embedded stack in {settings.home} ({_summary(st)})")
    elif dead_parts(settings, st) or not _supervised(st):
        with state.locked(settings):
            current = state.read(settings) or st
            restarted = heal(settings, current)
            if not _supervised(current):
                _supervise(settings, current)
                restarted.append("the supervisor")
        if notify and restarted:
            notify(f"Restarted {', '.join(restarted)} of the embedded stack in {settings.home}")
    return resolve(settings)


def up(settings: Settings, notify: Notify | None = None) -> StackState:
    """Start what is missing (Redis, Ray head), deploy the control plane, supervise it all.

    A start that fails halfway stops what it started and records nothing, so the
    next ``up`` starts clean; a stack that was already running is left as it is.
    """
    say = notify or (lambda _msg: None)
    with state.locked(settings):
        st = state.read(settings)
        fresh = st is None
        if st is None:
            st = StackState(home=str(settings.home), started_at=time.time())
        try:
            if fresh:
                _start(settings, st, say)
            else:
                heal(settings, st, deploy=False)
            say("deploying the controller and dispatchers")
            st.dispatchers = cluster.deploy(resolve(settings, st))
            state.write(settings, st)
            _supervise(settings, st)
        except BaseException:
            if fresh:
                _undo(settings, st)
            raise
        return st


def _start(settings: Settings, st: StackState, say: Notify) -> None:
    """Start the embedded Redis and Ray head of a new stack (the caller holds the lock)."""
    if settings.redis.url is None:
        say("starting redis-server")
        services.start_redis(settings, st)
    if settings.ray.address is None:
        say("starting the Ray head (takes a few seconds)")
        services.start_ray(settings, st)
    state.write(settings, st)


def _undo(settings: Settings, st: StackState) -> None:
    """Stop what a failed start started, and forget it."""
    log.warning("starting the stack in %s failed: stopping what it started", settings.home)
    try:
        services.stop(st)
    finally:
        state.forget(settings)


def heal(settings: Settings, st: StackState, deploy: bool = True) -> list[str]:
    """Restart what of the stack died, only that; returns what was restarted.

    Redis comes back on its port and reloads its AOF; a new Ray head takes the
    old one's ports and gets the control plane deployed; a control plane gone
    from a live head is deployed again. Running jobs and replicas are left
    alone. ``deploy=False`` leaves a missing control plane to the caller (a new
    head is always given one). The caller holds the stack's lock.
    """
    restarted = []
    dead = dead_parts(settings, st)
    if "redis" in dead:
        log.warning(
            "redis-server of %s is gone: restarting it on port %s", st.home, st.ports.get("redis")
        )
        processes.stop(services.redis_processes(st))
        services.start_redis(settings, st)
        restarted.append("redis")
    if "ray" in dead:
        log.warning("the Ray head of %s is gone: restarting it", st.home)
        processes.stop(services.ray_processes(st))
        services.start_ray(settings, st)
        restarted.append("the Ray head")
    if restarted:
        state.write(settings, st)
    resolved = resolve(settings, st)
    # A Redis just restarted has no heartbeats yet: the control plane is judged next time.
    judge = deploy and "redis" not in dead
    if "ray" in dead or (judge and not control_plane_alive(resolved.redis.url)):
        st.dispatchers = cluster.deploy(resolved, replace=False)
        state.write(settings, st)
        restarted.append("the control plane")
    return restarted


def down(settings: Settings) -> list[str]:
    """Stop what this home's ``up`` started; returns what was stopped."""
    with state.locked(settings):
        st = state.read(settings)
        if st is None:
            return []
        if settings.ray.address:  # a cluster we did not start: remove our actors only
            cluster.remove_actors(resolve(settings, st))
        stopped = services.stop(st)
        state.forget(settings)
        return stopped


def dead_parts(settings: Settings, st: StackState) -> list[str]:
    """The embedded parts that do not answer now: "redis", "ray"."""
    dead = []
    if settings.redis.url is None and not services.redis_ok(st.redis_url):
        dead.append("redis")
    if settings.ray.address is None and not processes.port_open(st.gcs_port):
        dead.append("ray")
    return dead


def _supervised(st: StackState) -> bool:
    return bool(st.supervisor_pid) and bool(processes.matching([st.supervisor_pid], []))


def _supervise(settings: Settings, st: StackState) -> None:
    """Start the embedded stack's supervisor unless it runs (the caller holds the lock).

    A cluster this system did not start is watched by ``wtm supervise`` instead.
    """
    if _supervised(st) or not settings.embedded:
        return
    logfile = settings.home / "supervisor.log"
    package_root = str(Path(__file__).resolve().parents[2])
    env = services.stack_env(settings)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    with open(logfile, "ab") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.stack.supervisor"],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=out,
            env=env,
            start_new_session=True,  # outlives the command that started it
        )
    assert child.stdin is not None
    child.stdin.write(settings.model_dump_json().encode())  # never on the command line
    child.stdin.close()
    st.supervisor_pid = child.pid
    state.write(settings, st)


def stack_pids(settings: Settings) -> list[int]:
    """Live pids of this home's stack (for tests and benchmarks)."""
    st = state.read(settings)
    return [p.pid for p in services.stack_processes(st)] if st else []


def _summary(st: StackState) -> str:
    parts = []
    if st.redis_url:
        parts.append(f"redis :{st.ports.get('redis')}")
    if st.dashboard_url:
        parts.append(f"ray dashboard {st.dashboard_url}")
    return ", ".join(parts)
