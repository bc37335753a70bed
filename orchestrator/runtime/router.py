"""A dispatcher's view of the replica sets: least-loaded routing within limits.

Handles come from the controller and are cached, so a job costs no Ray
lookup. The router counts its own calls per replica, sends each call to the
replica with the fewest, and holds a call back while every replica is at its
``max_concurrency`` (so a call's timeout starts when it really starts). Every
``period`` it reports its demand to the controller, whose answer says which
sets changed.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from orchestrator import keys
from orchestrator.models import TaskRecord
from orchestrator.taskspec import TaskSpec

REFRESH_WAIT_S = 1.0


@dataclass
class Route:
    """The replicas of one set that this dispatcher routes to."""

    generation: int = -1
    handles: dict[str, Any] = field(default_factory=dict)
    outstanding: dict[str, int] = field(default_factory=dict)
    limit: int = 1
    demand: int = 0  # calls waiting for or running on this set
    freed: asyncio.Event = field(default_factory=asyncio.Event)
    stale: bool = True
    sha256: str | None = None  # the package the handles run


class Router:
    """Picks a replica for each call; tells the controller about demand and failures."""

    def __init__(self, controller: Any, consumer: str):
        self.controller = controller
        self.consumer = consumer
        self.routes: dict[str, Route] = {}

    async def acquire(self, record: TaskRecord) -> tuple[str, Any]:
        """A replica with a free slot (waits for one); pair with :meth:`release`."""
        key = keys.set_key(record.task_id, record.version)
        route = self.routes.setdefault(key, Route())
        route.limit = TaskSpec.model_validate(record.spec).replicas.max_concurrency
        route.demand += 1
        if route.sha256 != record.sha256:  # re-registered with --force: new replicas
            route.stale = True
        try:
            while True:
                if route.stale or not route.handles:
                    await self._refresh(key, record, route)
                name = _least_loaded(route)
                if name is not None:
                    route.outstanding[name] += 1
                    return name, route.handles[name]
                route.freed.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(route.freed.wait(), REFRESH_WAIT_S)
        except BaseException:
            route.demand -= 1
            raise

    def release(self, record: TaskRecord, name: str) -> None:
        route = self.routes[keys.set_key(record.task_id, record.version)]
        route.demand -= 1
        if name in route.outstanding:
            route.outstanding[name] -= 1
        route.freed.set()

    def failed(self, record: TaskRecord, name: str, reason: str) -> None:
        """Stop routing to a replica and have the controller replace it."""
        key = keys.set_key(record.task_id, record.version)
        route = self.routes.get(key)
        if route is not None:
            route.handles.pop(name, None)
            route.outstanding.pop(name, None)
            route.stale = True
        self.controller.replica_failed.remote(key, name, reason)

    async def report(self) -> None:
        """Send demand; mark the routes whose set changed since we fetched it."""
        demand = {key: route.demand for key, route in self.routes.items()}
        generations = await self.controller.report.remote(self.consumer, demand)
        for key, route in self.routes.items():
            if generations.get(key, route.generation) != route.generation:
                route.stale = True

    async def _refresh(self, key: str, record: TaskRecord, route: Route) -> None:
        generation, handles = await self.controller.replicas.remote(
            record.task_id, record.version, record.sha256
        )
        route.generation, route.handles, route.stale = generation, handles, False
        route.sha256 = record.sha256
        route.outstanding = {name: route.outstanding.get(name, 0) for name in handles}
        route.freed.set()


def _least_loaded(route: Route) -> str | None:
    free = [(n, name) for name, n in route.outstanding.items() if n < route.limit]
    return min(free)[1] if free else None
