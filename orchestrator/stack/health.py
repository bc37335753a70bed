"""`wtm health`: each part of the stack, whether it answers, and where it is."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable

import redis
from pydantic import BaseModel

from orchestrator import keys
from orchestrator.errors import StackError
from orchestrator.objects import open_objects
from orchestrator.records import open_records
from orchestrator.settings import Settings
from orchestrator.stack import processes, state
from orchestrator.stack.services import redis_ok
from orchestrator.stack.state import StackState


class Component(BaseModel):
    """One line of `wtm health`."""

    name: str
    ok: bool
    detail: str


def health(settings: Settings) -> list[Component]:
    """Each component with whether it answers and where it is."""
    st = state.read(settings)
    try:
        resolved = state.resolve(settings, st)
    except StackError as e:
        return [Component(name="stack", ok=False, detail=str(e))]
    url = resolved.redis.url
    out = [Component(name="redis", ok=redis_ok(url), detail=redact(url))]
    out.append(
        _check(
            "records",
            lambda: open_records(resolved).list_tasks(),
            redact(resolved.records.uri) or str(resolved.records_file),
        )
    )
    out.append(
        _check(
            "objects",
            lambda: open_objects(resolved).list(keys.TASKS_BUCKET, "x"),
            resolved.objects.endpoint or str(resolved.objects_dir),
        )
    )
    out += _ray(resolved, st)
    if out[0].ok:
        alive = _live_dispatchers(url)
        out.append(Component(name="dispatchers", ok=bool(alive), detail=f"{len(alive)} alive"))
        out += _control(url)
    else:  # their heartbeats live in Redis: nothing can be said of them now
        fix = "restarted by the stack's supervisor, or by `wtm up`" if settings.embedded else ""
        unknown = f"unknown while Redis is down{'; Redis is ' + fix if fix else ''}"
        out += [Component(name=n, ok=False, detail=unknown) for n in ("dispatchers", "controller")]
    if st and settings.embedded:
        alive = bool(st.supervisor_pid and processes.matching([st.supervisor_pid], []))
        out.append(Component(name="supervisor", ok=alive, detail=f"pid {st.supervisor_pid}"))
    if st:
        ports = ", ".join(f"{k} {v}" for k, v in sorted(st.ports.items()))
        out.append(Component(name="ports", ok=True, detail=ports))
    return out


def _ray(resolved: Settings, st: StackState | None) -> list[Component]:
    address = resolved.ray.address or ""
    ok = processes.port_open(st.gcs_port) if st and st.gcs_port else bool(address)
    out = [Component(name="ray", ok=ok, detail=f"gcs {address}")]
    if st and st.dashboard_url:
        dashboard_ok = processes.http_ok(st.dashboard_url)
        out.append(Component(name="dashboard", ok=dashboard_ok, detail=st.dashboard_url))
    return out


def _control(url: str | None) -> list[Component]:
    """The controller, from the heartbeat it writes with its replica sets."""
    beat = controller_beat(url)
    if beat is None:
        return [Component(name="controller", ok=False, detail="no heartbeat: down or restarting")]
    age = time.time() - beat["at"]
    out = [Component(name="controller", ok=True, detail=f"pid {beat['pid']}, beat {age:.0f}s ago")]
    broken = [s for s in beat["sets"] if s.get("last_error") and not s["ready"]]
    sets = ", ".join(f"{s['key']} {len(s['ready'])}/{s['max']}" for s in beat["sets"]) or "none"
    detail = "; ".join(f"{s['key']}: {s['last_error']}" for s in broken) or sets
    out.append(Component(name="replicas", ok=not broken, detail=detail))
    return out


def control_plane_alive(url: str | None) -> bool:
    """Whether the controller and at least one dispatcher beat (read from Redis)."""
    return controller_beat(url) is not None and bool(_live_dispatchers(url))


def controller_beat(url: str | None) -> dict | None:
    """The controller's last heartbeat (pid, at, sets), or None if it has none alive."""
    if not redis_ok(url):
        return None
    raw = redis.Redis.from_url(url).get(keys.CONTROLLER_ALIVE)
    return json.loads(raw) if raw else None


def _check(name: str, probe: Callable[[], object], detail: str) -> Component:
    try:
        probe()
        return Component(name=name, ok=True, detail=detail)
    except Exception as e:  # noqa: BLE001 - health reports, never raises
        return Component(name=name, ok=False, detail=f"{detail}: {e}")


def _live_dispatchers(url: str | None) -> list[str]:
    if not redis_ok(url):
        return []
    r = redis.Redis.from_url(url)
    return sorted(k.decode() for k in r.scan_iter(match=keys.dispatcher_alive("*")))


def redact(url: str | None) -> str:
    """A URL with its credentials hidden ('' for none)."""
    return re.sub(r"//[^@/]*@", "//***@", url or "")
