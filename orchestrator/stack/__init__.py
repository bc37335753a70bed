"""The embedded stack: a real redis-server and a local Ray head under WTM_HOME.

``up`` is idempotent and records what it started in ``WTM_HOME/stack.json``
(:mod:`.state`); ``down`` stops exactly those processes (:mod:`.services`),
never another stack's. The controller and dispatchers are deployed onto the
cluster from a child process (:func:`orchestrator.cluster.deploy`), so
starting a stack never touches the calling process's own Ray connection.
Nothing here starts anything unless called to: :func:`ensure` is the one
place that starts a stack on demand, and callers say when they call it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from orchestrator import cluster
from orchestrator.settings import Settings
from orchestrator.stack import processes, services, state
from orchestrator.stack.health import Component, health
from orchestrator.stack.state import StackState, resolve
from orchestrator.stack.state import read as read_state

__all__ = [
    "Component",
    "Notify",
    "StackState",
    "down",
    "ensure",
    "health",
    "is_up",
    "read_state",
    "resolve",
    "stack_pids",
    "up",
]

Notify = Callable[[str], None]


def is_up(settings: Settings) -> bool:
    """Whether the embedded parts named in stack.json answer."""
    st = state.read(settings)
    if st is None:
        return False
    if settings.redis.url is None and not services.redis_ok(st.redis_url):
        return False
    return settings.ray.address is not None or processes.port_open(st.gcs_port)


def ensure(settings: Settings, notify: Notify | None = None) -> Settings:
    """Start the embedded stack if it is not running; returns resolved settings."""
    if not settings.embedded:
        return settings
    if not is_up(settings):
        st = up(settings)
        if notify:
            notify(f"Started the embedded stack in {settings.home} ({_summary(st)})")
    return resolve(settings)


def up(settings: Settings, notify: Notify | None = None) -> StackState:
    """Start what is missing (Redis, Ray head), then deploy the controller and dispatchers."""
    say = notify or (lambda _msg: None)
    with state.locked(settings):
        st = state.read(settings) if is_up(settings) else None
        if st is None:
            services.stop(state.read(settings))  # leftovers of a crashed stack
            st = StackState(home=str(settings.home), started_at=time.time())
            if settings.redis.url is None:
                say("starting redis-server")
                services.start_redis(settings, st)
            if settings.ray.address is None:
                say("starting the Ray head (takes a few seconds)")
                services.start_ray(settings, st)
            state.write(settings, st)
        say("deploying the controller and dispatchers")
        st.dispatchers = cluster.deploy(resolve(settings, st))
        state.write(settings, st)
        return st


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
