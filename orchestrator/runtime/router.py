"""A dispatcher's view of the replica sets: least-loaded routing within limits.

Handles come from a :class:`ReplicaSource` (the controller) and are cached, so
a call costs no Ray lookup. A call that has to wait says why (``on_wait``):
its set's replica is being placed, started or loaded, or every slot is busy.

The router counts its own calls per replica, sends each call to the replica
with the fewest, and holds a call back while every replica is at the set's
``max_concurrency``. Calls held back take a free slot in order of priority,
then arrival (a freed slot wakes only the call first in line, so a thousand
waiting calls cost nothing per release), with aging: a call gains one
priority level for every ``AGING_S`` it waits, so a stream of high-priority
calls cannot starve a low one forever. Every ``report_s`` it reports its
demand to the source, whose answer says which sets changed.

Demand counts the calls waiting or running, and the calls that running plans
will make (:meth:`Router.expect`): an execution taken up asks for every set
its plan needs at once, so replicas of later stages start while the first
stage runs, and a parallel group of k steps of one task asks for k slots. A
set that gets more demand than it has slots is reported at once, not at the
next period.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from orchestrator import keys
from orchestrator.models import StepPhase
from orchestrator.plan import PlannedStep
from orchestrator.runtime.calls import OnWait

log = logging.getLogger("wtm.router")

AGING_S = 10.0  # a waiting call gains one priority level this often
ASK_WAIT_S = 0.5  # a call waiting for a set's first replica asks again this often


@dataclass(frozen=True)
class ReplicaView:
    """A set's routable replicas as its owner sees them now."""

    generation: int  # changes whenever the set's replicas change
    handles: dict[str, Any]
    max_concurrency: int  # calls one replica takes at once
    phase: StepPhase | None = None  # with no handles: what the set waits for


class ReplicaSource(Protocol):
    """Who owns the replica sets (the controller actor in production)."""

    async def replicas(
        self, task_id: str, version: str, sha256: str | None, wait_s: float | None = None
    ) -> ReplicaView:
        """The set's routable replicas, starting one if it has none; waits for one at
        most ``wait_s`` (None: until ready), then says what the set waits for."""

    async def report(self, consumer: str, demand: dict[str, list[int]]) -> dict[str, int]:
        """This dispatcher's calls waiting, running or planned per set, and the most
        slots of it one execution needs at once; returns set generations."""

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

    async def replicas(
        self, task_id: str, version: str, sha256: str | None, wait_s: float | None = None
    ) -> ReplicaView:
        return await self._call("replicas", task_id, version, sha256, wait_s)

    async def report(self, consumer: str, demand: dict[str, list[int]]) -> dict[str, int]:
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
    phase: StepPhase | None = None  # with no handles: what the set waits for
    refreshing: asyncio.Task | None = None  # the one ask for the set's replicas in flight
    expected: dict[str, int] = field(default_factory=dict)  # execution -> calls it will make
    widths: dict[str, int] = field(default_factory=dict)  # execution -> slots it needs at once

    @property
    def wanted(self) -> int:
        """Calls waiting, running, or yet to come from running plans."""
        return self.demand + sum(self.expected.values())

    @property
    def slots(self) -> int:
        return len(self.handles) * self.limit


class Router:
    """Picks a replica for each call; tells the source about demand and failures."""

    def __init__(self, source: ReplicaSource, consumer: str, report_s: float, wait_s: float):
        self.source = source
        self.consumer = consumer
        self.report_s = report_s
        self.wait_s = wait_s
        self.routes: dict[str, Route] = {}
        self._reporter: asyncio.Task | None = None
        self._soon: asyncio.Task | None = None
        self._tickets = itertools.count()

    def expect(self, execution_id: str, steps: list[PlannedStep], calls: dict[str, int]) -> None:
        """A plan was taken up: ``calls`` slots of each set (``steps`` say which task
        version a set key is) will be asked for. Counted as demand from now until
        the execution's steps ask for them, or :meth:`forget`."""
        self._ensure_reporting()
        urgent = False
        for step in steps:
            key = keys.set_key(step.task_id, step.version)
            if key not in calls or execution_id in self._route(key).expected:
                continue
            route = self._route(key)
            before = route.wanted
            route.expected[execution_id] = route.widths[execution_id] = calls[key]
            urgent |= before <= route.slots < route.wanted
        if urgent:
            self._report_soon()

    def forget(self, execution_id: str) -> None:
        """The execution ended: what it was expected to ask for no longer counts."""
        for route in self.routes.values():
            route.expected.pop(execution_id, None)
            route.widths.pop(execution_id, None)

    def _route(self, key: str) -> Route:
        return self.routes.setdefault(key, Route())

    async def acquire(
        self,
        step: PlannedStep,
        priority: int = 5,
        prefer: str | None = None,
        on_wait: OnWait | None = None,
        execution_id: str | None = None,
    ) -> tuple[str, Any]:
        """A replica of the step's task with a free slot (waits for one); pair with release.

        Among calls waiting for this set, the one with the highest priority
        (aged by its wait) takes the next free slot; equal ones, the earliest.
        With ``prefer`` (the replica a lost delivery left this call running
        on) that replica, while it is in the set, so the call joins the run
        there instead of starting another. ``on_wait`` is told why the call
        waits, each time that changes.
        """
        self._ensure_reporting()
        key = keys.set_key(step.task_id, step.version)
        route = self._route(key)
        before = route.wanted
        route.demand += 1
        if execution_id is not None and route.expected.get(execution_id):
            route.expected[execution_id] -= 1  # the expected call is here: counted once
        if before <= route.slots < route.wanted and route.handles:
            self._report_soon()
        if route.sha256 != step.package_sha256:  # re-registered with --force: new replicas
            route.stale = True
        told: list[StepPhase | None] = [None]

        async def waiting(phase: StepPhase | None) -> None:
            if on_wait is not None and phase is not None and phase != told[0]:
                told[0] = phase
                await on_wait(phase)

        # Aging without re-sorting: every waiter's rank grows at the same rate, so
        # ranking by priority minus arrival (in levels) keeps one order for good.
        if prefer is not None:
            return await self._acquire_preferred(step, route, prefer, waiting)
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
                await waiting(route.phase if not route.handles else StepPhase.BUSY)
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

    def try_acquire(
        self, step: PlannedStep, execution_id: str | None = None
    ) -> tuple[str, Any] | None:
        """A free slot taken at once, or None if the call would have to wait (no
        replica known, none free, or calls already in line): the common case under
        a steady load costs no task, event or timer."""
        route = self.routes.get(keys.set_key(step.task_id, step.version))
        if route is None or route.stale or route.waiting or route.sha256 != step.package_sha256:
            return None
        name = _least_loaded(route)
        if name is None:
            return None
        self._ensure_reporting()
        route.demand += 1
        if execution_id is not None and route.expected.get(execution_id):
            route.expected[execution_id] -= 1
        route.outstanding[name] += 1
        return name, route.handles[name]

    def limit(self, step: PlannedStep) -> int:
        """How many calls one replica of the step's set takes at once (as last fetched)."""
        route = self.routes.get(keys.set_key(step.task_id, step.version))
        return route.limit if route is not None else 1

    async def _acquire_preferred(
        self,
        step: PlannedStep,
        route: Route,
        prefer: str,
        waiting: Callable[[StepPhase | None], Awaitable[None]],
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
                await waiting(route.phase if not route.handles else StepPhase.BUSY)
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
        """Send demand (and the most slots one execution needs at once); mark the
        routes whose set changed since we fetched it."""
        demand = {
            key: [route.wanted, max(route.widths.values(), default=1)]
            for key, route in self.routes.items()
        }
        generations = await self.source.report(self.consumer, demand)
        for key, route in self.routes.items():
            if generations.get(key, route.generation) != route.generation:
                route.stale = True

    def _report_soon(self) -> None:
        """Report now (once: a report already on its way carries the news)."""
        if self._soon is None or self._soon.done():
            self._soon = asyncio.get_running_loop().create_task(self._report_now())

    async def _report_now(self) -> None:
        try:
            await self.report()
        except Exception:  # the periodic report tries again
            log.exception("reporting demand failed")

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
        """Fetch the set's replicas: one ask in flight per set, whoever waits on it.

        With no replica ready the ask returns (at once the first time, then within
        ``ASK_WAIT_S``) saying what the set waits for (``route.phase``), and the
        route stays stale: asked again."""
        if route.refreshing is None or route.refreshing.done():
            route.refreshing = asyncio.get_running_loop().create_task(self._ask(step, route))
        await asyncio.shield(route.refreshing)

    async def _ask(self, step: PlannedStep, route: Route) -> None:
        # The first ask of a cold set returns at once, so its wait is named at once.
        wait = ASK_WAIT_S if route.phase is not None else 0.0
        view = await self.source.replicas(step.task_id, step.version, step.package_sha256, wait)
        # A copy: the router drops failed replicas from its own view, not from the source's.
        route.generation, route.handles = view.generation, dict(view.handles)
        route.stale, route.phase = not view.handles, view.phase
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
