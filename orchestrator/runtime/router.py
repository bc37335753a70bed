"""A dispatcher's view of the replica sets: least-loaded routing within limits.

Handles come from a :class:`ReplicaSource` (the controller) and are cached, so
a call costs no Ray lookup. The router counts its own calls per replica, sends
each call to the replica with the fewest, and holds a call back while every
replica is at the set's ``max_concurrency``. Calls held back take a free slot
in order of priority, then arrival (a freed slot wakes only the call first in
line, so a thousand waiting calls cost nothing per release), with aging: a call gains one priority
level for every ``AGING_S`` it waits, so a stream of high-priority calls
cannot starve a low one forever. Every ``report_s`` it reports its demand to
the source, whose answer says which sets changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from orchestrator import keys
from orchestrator.plan import PlannedStep

log = logging.getLogger("wtm.router")

AGING_S = 10.0  # a waiting call gains one priority level this often


@dataclass(frozen=True)
class ReplicaView:
    """A set's routable replicas as its owner sees them now."""

    generation: int  # changes whenever the set's replicas change
    handles: dict[str, Any]
    max_concurrency: int  # calls one replica takes at once


class ReplicaSource(Protocol):
    """Who owns the replica sets (the controller actor in production)."""

    async def replicas(self, task_id: str, version: str, sha256: str | None) -> ReplicaView:
        """The set's routable replicas, starting one (and waiting) if it has none."""

    async def report(self, consumer: str, demand: dict[str, int]) -> dict[str, int]:
        """This dispatcher's calls waiting or running per set; returns set generations."""

    def replica_failed(self, key: str, name: str, reason: str) -> None:
        """A replica died or hung: have it replaced (fire and forget)."""


class ControllerReplicas:
    """The controller actor as a :class:`ReplicaSource`.

    Ray restarts the controller when its process dies (and retries calls made
    meanwhile); if it was replaced instead (``wtm up`` after ``down``, a new
    head), the old handle is dead for good, so the controller is looked up
    again by name and the call repeated, until ``wait_s`` has passed.
    """

    def __init__(self, namespace: str, wait_s: float = 120.0):
        self.namespace = namespace
        self.wait_s = wait_s
        self._handle: Any = None

    def _controller(self) -> Any:
        import ray

        if self._handle is None:
            self._handle = ray.get_actor(keys.CONTROLLER, namespace=self.namespace)
        return self._handle

    async def _call(self, method: str, *args: Any) -> Any:
        import ray

        deadline = asyncio.get_running_loop().time() + self.wait_s
        while True:
            try:
                return await getattr(self._controller(), method).remote(*args)
            except (
                ray.exceptions.ActorDiedError,
                ray.exceptions.ActorUnavailableError,
                ValueError,
            ):
                # ValueError: no controller of that name (yet); died: replaced since
                if asyncio.get_running_loop().time() > deadline:
                    raise
                self._handle = None
                await asyncio.sleep(0.5)

    async def replicas(self, task_id: str, version: str, sha256: str | None) -> ReplicaView:
        return await self._call("replicas", task_id, version, sha256)

    async def report(self, consumer: str, demand: dict[str, int]) -> dict[str, int]:
        return await self._call("report", consumer, demand)

    def replica_failed(self, key: str, name: str, reason: str) -> None:
        with contextlib.suppress(Exception):  # the controller's prober catches what this misses
            self._controller().replica_failed.remote(key, name, reason)


@dataclass
class Route:
    """The replicas of one set that this dispatcher routes to."""

    generation: int = -1
    handles: dict[str, Any] = field(default_factory=dict)
    outstanding: dict[str, int] = field(default_factory=dict)
    limit: int = 1
    demand: int = 0  # calls waiting for or running on this set
    freed: asyncio.Event = field(default_factory=asyncio.Event)  # replaced on each signal
    waiting: list[tuple[float, int]] = field(default_factory=list)  # heap of (rank, ticket)
    wakers: dict[tuple[float, int], asyncio.Event] = field(default_factory=dict)  # per waiter
    stale: bool = True
    sha256: str | None = None  # the package the handles run


class Router:
    """Picks a replica for each call; tells the source about demand and failures."""

    def __init__(self, source: ReplicaSource, consumer: str, report_s: float, wait_s: float):
        self.source = source
        self.consumer = consumer
        self.report_s = report_s
        self.wait_s = wait_s
        self.routes: dict[str, Route] = {}
        self._reporter: asyncio.Task | None = None
        self._tickets = itertools.count()

    async def acquire(
        self, step: PlannedStep, priority: int = 5, prefer: str | None = None
    ) -> tuple[str, Any]:
        """A replica of the step's task with a free slot (waits for one); pair with release.

        Among calls waiting for this set, the one with the highest priority
        (aged by its wait) takes the next free slot; equal ones, the earliest.
        With ``prefer`` (the replica a lost delivery left this call running
        on) that replica, while it is in the set, so the call joins the run
        there instead of starting another.
        """
        self._ensure_reporting()
        key = keys.set_key(step.task_id, step.version)
        route = self.routes.setdefault(key, Route())
        route.demand += 1
        if route.sha256 != step.package_sha256:  # re-registered with --force: new replicas
            route.stale = True
        # Aging without re-sorting: every waiter's rank grows at the same rate, so
        # ranking by priority minus arrival (in levels) keeps one order for good.
        if prefer is not None:
            return await self._acquire_preferred(step, route, prefer)
        ticket = (-(priority - time.monotonic() / AGING_S), next(self._tickets))
        heapq.heappush(route.waiting, ticket)
        woken = route.wakers[ticket] = asyncio.Event()
        try:
            while True:
                if route.stale or not route.handles:
                    await self._refresh(step, route)
                name = _least_loaded(route) if route.waiting[0] == ticket else None
                if name is not None:
                    heapq.heappop(route.waiting)
                    route.outstanding[name] += 1
                    _signal(route)  # the next in line may find a slot too
                    return name, route.handles[name]
                woken.clear()
                with contextlib.suppress(TimeoutError):  # (wait_for can swallow a cancel)
                    async with asyncio.timeout(self.wait_s):
                        await woken.wait()
        except BaseException:
            route.demand -= 1
            raise
        finally:
            del route.wakers[ticket]
            if ticket in route.waiting:  # cancelled or failed while waiting: out of line
                route.waiting.remove(ticket)
                heapq.heapify(route.waiting)
                _signal(route)

    def limit(self, step: PlannedStep) -> int:
        """How many calls one replica of the step's set takes at once (as last fetched)."""
        route = self.routes.get(keys.set_key(step.task_id, step.version))
        return route.limit if route is not None else 1

    async def _acquire_preferred(
        self, step: PlannedStep, route: Route, prefer: str
    ) -> tuple[str, Any]:
        """A slot on one replica, outside the line (the calls in line keep theirs); any
        replica once that one is gone from the set."""
        try:
            while True:
                if route.stale or not route.handles:
                    await self._refresh(step, route)
                if prefer not in route.handles:
                    name = _least_loaded(route)
                elif route.outstanding[prefer] < route.limit:
                    name = prefer
                else:
                    name = None
                if name is not None:
                    route.outstanding[name] += 1
                    return name, route.handles[name]
                signal = route.freed
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.wait_s):
                        await signal.wait()
        except BaseException:
            route.demand -= 1
            raise

    def release(self, step: PlannedStep, name: str) -> None:
        route = self.routes[keys.set_key(step.task_id, step.version)]
        route.demand -= 1
        if name in route.outstanding:
            route.outstanding[name] -= 1
        _signal(route)

    def failed(self, step: PlannedStep, name: str, reason: str) -> None:
        """Stop routing to a replica and have the source replace it."""
        key = keys.set_key(step.task_id, step.version)
        route = self.routes.get(key)
        if route is not None:
            route.handles.pop(name, None)
            route.outstanding.pop(name, None)
            route.stale = True
            _signal(route)
        self.source.replica_failed(key, name, reason)

    async def report(self) -> None:
        """Send demand; mark the routes whose set changed since we fetched it."""
        demand = {key: route.demand for key, route in self.routes.items()}
        generations = await self.source.report(self.consumer, demand)
        for key, route in self.routes.items():
            if generations.get(key, route.generation) != route.generation:
                route.stale = True

    def _ensure_reporting(self) -> None:
        if self._reporter is None or self._reporter.done():
            self._reporter = asyncio.get_running_loop().create_task(self._report_loop())

    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(self.report_s)
            try:
                await self.report()
            except Exception:  # the controller restarting, say: report again next period
                log.exception("reporting demand failed")

    async def _refresh(self, step: PlannedStep, route: Route) -> None:
        view = await self.source.replicas(step.task_id, step.version, step.package_sha256)
        # A copy: the router drops failed replicas from its own view, not from the source's.
        route.generation, route.handles, route.stale = view.generation, dict(view.handles), False
        route.limit = view.max_concurrency
        route.sha256 = step.package_sha256
        route.outstanding = {name: route.outstanding.get(name, 0) for name in view.handles}
        _signal(route)


def _signal(route: Route) -> None:
    """Something changed on the route: wake the call first in line (it wakes the next
    if it takes a slot) and every call waiting for a replica of its own."""
    if route.waiting:
        route.wakers[route.waiting[0]].set()
    route.freed.set()
    route.freed = asyncio.Event()


def _least_loaded(route: Route) -> str | None:
    free = [(n, name) for name, n in route.outstanding.items() if n < route.limit]
    return min(free)[1] if free else None
