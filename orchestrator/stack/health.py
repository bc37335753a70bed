"""`wtm health`: each part of the stack, whether it answers, and where it is."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import redis
from pydantic import BaseModel

from orchestrator import keys
from orchestrator.errors import StackError
from orchestrator.objects import open_objects
from orchestrator.records import open_records
from orchestrator.secrets import redact, redact_text
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
    """Each component with whether it answers and where it is (no credential shown)."""
    shown = _components(settings)
    return [c.model_copy(update={"detail": redact_text(c.detail)}) for c in shown]


def _components(settings: Settings) -> list[Component]:
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
    token = resolved.ray.auth_token_file
    auth = ", token authentication" if token else ""
    out = [Component(name="ray", ok=ok, detail=f"gcs {address}{auth}")]
    if st and st.dashboard_url:
        dashboard_ok = _dashboard_ok(st.dashboard_url, token)
        out.append(Component(name="dashboard", ok=dashboard_ok, detail=st.dashboard_url))
    out.append(_metrics(resolved, st))
    return out


def _metrics(resolved: Settings, st: StackState | None) -> Component:
    """Where Prometheus reads the metrics: the setting, else the embedded head's
    endpoint, else each node's, as the controller found them on the cluster."""
    known = resolved.ray.metrics_url or (st.metrics_url if st else None)
    urls = [known] if known else (controller_beat(resolved.redis.url) or {}).get("metrics", [])
    if not urls:
        unknown = "unknown until the controller beats (or set WTM_RAY__METRICS_URL)"
        return Component(name="metrics", ok=False, detail=unknown)
    more = f" (+{len(urls) - 1} more nodes: Prometheus reads each)" if len(urls) > 1 else ""
    return Component(name="metrics", ok=processes.http_ok(urls[0]), detail=urls[0] + more)


def _dashboard_ok(url: str, token_file: Path | None) -> bool:
    """Whether the dashboard's API answers: a page that needs the token, when the head
    has one (its front page is open to anyone, so proves nothing about the token)."""
    if token_file is None:
        return processes.http_ok(url)
    try:
        token = token_file.read_text().strip()
    except OSError:
        return False
    return processes.http_ok(f"{url}/api/version", {"Authorization": f"Bearer {token}"})


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
