"""The control plane's long-lived actors (controller, dispatchers): how they are deployed.

Each is a named detached actor that Ray restarts when its process dies
(``max_restarts=-1``) and that starts its own loops when it is constructed,
so a restarted one serves again with no one asking. Deploying is idempotent:
a running actor is kept, unless the caller asks to ``replace`` one that runs
with other settings.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

import ray

from orchestrator.settings import Settings


def settings_digest(settings: Settings) -> str:
    """A short fingerprint of the settings an actor runs with."""
    return hashlib.sha256(settings.model_dump_json().encode()).hexdigest()[:16]


def start_itself(wait_s: float = 300.0) -> None:
    """From an actor's ``__init__``: have its ``start`` run as soon as it is up.

    A call made from ``__init__`` can reach the actor while Ray still counts it
    as restarting and fail at once, so a thread of the actor's own repeats it
    until it has run.
    """
    handle = ray.get_runtime_context().current_actor

    def kick() -> None:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                ray.get(handle.start.remote(), timeout=60)
                return
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                time.sleep(0.2)

    threading.Thread(target=kick, daemon=True, name="wtm-start").start()


def deploy(
    cls: type, name: str, settings: Settings, args: tuple, replace: bool, **options: Any
) -> Any:
    """Start the named actor unless it runs; returns its handle.

    With ``replace``, one running with other settings is killed first and a new
    one started under its name. ``options`` are Ray actor options beyond the
    common ones.
    """
    namespace = settings.ray.namespace
    running = _running(name, namespace)
    if running is not None:
        if not replace or _runs_with(running, settings):
            return running
        ray.kill(running, no_restart=True)
        _wait_gone(name, namespace)
    handle = (
        ray.remote(cls)
        .options(
            name=name,
            namespace=namespace,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            max_concurrency=1000,
            max_restarts=-1,  # Ray restarts it when its process dies
            **options,
        )
        .remote(*args)
    )
    ray.get(handle.start.remote())
    return handle


def _running(name: str, namespace: str) -> Any | None:
    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:  # no actor of that name
        return None


def _runs_with(handle: Any, settings: Settings) -> bool:
    try:
        return ray.get(handle.ping.remote(), timeout=60)["settings"] == settings_digest(settings)
    except Exception:  # noqa: BLE001 - dead, hung, or an older version without ping
        return False


def _wait_gone(name: str, namespace: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _running(name, namespace) is not None:
        time.sleep(0.1)
