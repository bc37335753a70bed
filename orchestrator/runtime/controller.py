"""The controller: a detached async Ray actor that owns every replica set.

For each task version it keeps a set of named detached replicas
(``wtm:<task_id>@<version>#<n>``) between the task's ``min`` and ``max``,
sized by the demand dispatchers report; replaces replicas that die or hang;
and drains idle ones. Its loop reads as named steps and never blocks on a
Ray result: every probe is awaited with a timeout. It writes the replicas'
worker records from the heartbeats they send it, so a replica (where task
code runs) is started with settings that hold no records or Redis credentials.

It keeps nothing that cannot be rebuilt: Ray restarts it when its process
dies, and the new one adopts every named replica still alive, so running
replicas (and their loaded models) survive it. It publishes a heartbeat with
its replica sets (and where each node serves its metrics) to Redis for
``wtm health``, samples the queues and replica sets into the metrics with it
(:mod:`orchestrator.metrics`), and prunes old executions every
``retention.every_s`` (see :mod:`orchestrator.retention`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
from typing import Any

import ray

from orchestrator import keys, logs, metrics, retention
from orchestrator.errors import NotFoundError, ReplicaUnavailable
from orchestrator.models import WorkerRecord, WorkerState
from orchestrator.objects import open_objects
from orchestrator.policy import cluster_fit, desired_replicas, replicas_for, scaling_demand
from orchestrator.records import open_records
from orchestrator.resilience import async_redis, redis_client
from orchestrator.runtime import actors, placement
from orchestrator.runtime.replica import Replica
from orchestrator.runtime.replica_set import (
    ReplicaSet,
    Why,
    actor_options,
    no_room,
    unplaceable,
)
from orchestrator.runtime.router import ReplicaView
from orchestrator.secrets import for_replicas
from orchestrator.settings import Settings

log = logging.getLogger("wtm.controller")

# Control calls (ping, stats) have their own threads, so they are answered
# while every task thread is busy.
ReplicaActor = ray.remote(concurrency_groups={"control": 2})(Replica)


def _pending(handle: Any) -> bool:
    """Whether Ray still waits to create this actor (not placed, or its process not up),
    as the GCS says; False when it cannot tell."""
    try:
        from ray._private import state  # the GCS's actor table: no dashboard needed

        info = state.actors(actor_id=handle._actor_id.hex())
    except Exception:  # noqa: BLE001 - an API Ray may change: then do nothing rash
        return False
    return info.get("State") in ("PENDING_CREATION", "DEPENDENCIES_UNREADY")


class Controller:
    """Owns the replica sets; dispatchers ask it for replicas and report demand.

    Sizing is one pass over every set (:meth:`_scale`), run each period and
    whenever a set that is needed has no replica: the policy says how many
    replicas each set wants (:func:`~orchestrator.policy.desired_replicas`),
    and :mod:`~orchestrator.runtime.placement` says which of them start now
    and which idle replicas give way. Every start and stop is noted with why
    (:meth:`_note`): in the log, the metrics and ``wtm:replica-events``.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.cfg = settings.controller
        self.records = open_records(settings)
        self.sets: dict[str, ReplicaSet] = {}
        self.reports: dict[str, tuple[float, dict[str, tuple[int, int]]]] = {}
        self.redis = async_redis(settings.redis.url) if settings.redis.url else None
        self._loop_task: asyncio.Task | None = None
        self._prober: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._totals: dict[str, float] = {"CPU": 1.0}
        self._node_table: list[dict] = []
        self._totals_at = -CLUSTER_READ_S
        self._scaling = asyncio.Lock()
        # Worker records are written here, replicas' heartbeats included, one at a
        # time: a beat of a replica already marked dead or forgotten is dropped.
        self._workers_lock = asyncio.Lock()
        self._retired: set[str] = set()

    async def start(self) -> None:
        """Adopt the replicas alive on the cluster, then run the loops (idempotent)."""
        if self._loop_task is None:
            self._loop_task = self._background(self._control_loop())
            self._background(self._heartbeat())
            self._background(self._prune_loop())
            try:
                await self._adopt_all()
            except Exception:  # records away, say: each set adopts its replicas on first use
                log.exception("adopting the live replicas failed")

    async def ping(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "settings": actors.settings_digest(self.settings)}

    # API for dispatchers and the CLI -----------------------------------------
    async def replicas(
        self, task_id: str, version: str, sha256: str | None = None, wait_s: float | None = None
    ) -> ReplicaView:
        """The routable replicas of a set, starting one if none is.

        Waits until one is ready, or at most ``wait_s``: then the view has no
        handles and says what the set waits for (its ``phase``). ``sha256`` is
        the package the caller expects: if the version was re-registered
        (``--force``) the set's replicas are retired and new ones load the new code.
        """
        rs = await self._set(task_id, version)
        if sha256 and rs.record.sha256 != sha256:
            await self._renew(rs)
        rs.asked_at = time.monotonic()  # demand until the caller's next report says so
        rs.last_error = None
        if not rs.ready and not rs.starting:
            await self._scale()
        wait = self.cfg.load_timeout_s if wait_s is None else wait_s
        deadline, phase = time.monotonic() + wait, rs.phase()
        while not rs.ready:
            if rs.last_error:
                raise ReplicaUnavailable(f"no replica of {rs.key} could start: {rs.last_error}")
            left = deadline - time.monotonic()
            if left <= 0 or (wait_s is not None and rs.phase() != phase):
                break  # a caller that waits a while is told as soon as the wait changes
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await rs.changed.wait()
        return ReplicaView(rs.generation, dict(rs.ready), rs.spec.calls_at_once, rs.phase())

    async def worker_beat(self, worker: dict[str, Any]) -> None:
        """A replica's heartbeat: its worker record, written here for it (a replica,
        where task code runs, holds no records credentials). A replica this
        controller does not keep, or already retired, is not written."""
        record = WorkerRecord.model_validate(worker)
        async with self._workers_lock:
            rs = self._set_of(record.worker_id)
            if record.worker_id in self._retired or rs is None:
                return
            if record.worker_id in rs.starting and record.worker_id not in rs.loading:
                # Placed and up, it loads its task: what placing it took is free again.
                rs.loading.add(record.worker_id)
                rs.bump()
                self._background(self._scale())
            await asyncio.to_thread(self.records.put_worker, record)

    def _set_of(self, name: str) -> ReplicaSet | None:
        return next((rs for rs in self.sets.values() if rs.keeps(name)), None)

    async def report(self, dispatcher: str, demand: dict[str, Any]) -> dict[str, int]:
        """A dispatcher's calls waiting or running per set and those its running plans
        will make, with the most slots one execution needs at once (``[calls,
        width]``, or just calls); returns set generations. A set needed now that has
        no replica gets one at once, not at the next period."""
        pairs = {k: tuple(v) if isinstance(v, list | tuple) else (v, 1) for k, v in demand.items()}
        self.reports[dispatcher] = (time.monotonic(), pairs)
        cold = [key for key, (n, _) in pairs.items() if n > 0 and self._cold(key)]
        if cold:
            async with self._scaling:  # every set of the plan known before one is sized
                for key in cold:
                    with contextlib.suppress(NotFoundError):  # deleted: nothing to start
                        await self._set(*keys.parse_set_key(key))
            await self._scale()
        return {key: rs.generation for key, rs in self.sets.items()}

    def _cold(self, key: str) -> bool:
        rs = self.sets.get(key)
        return rs is None or not (rs.ready or rs.starting)

    async def replica_failed(self, key: str, name: str, reason: str) -> None:
        """A dispatcher saw a replica die or hang: kill it and replace it."""
        rs = self.sets.get(key)
        if rs is None or (name not in rs.ready and name not in rs.draining):
            return
        handle = rs.ready.pop(name, None) or rs.draining.pop(name)
        rs.stopping_for.pop(name, None)
        rs.bump()
        await self._kill(handle)
        await self._mark_worker(name, WorkerState.DEAD)
        self._note("stopped", name, Why(_failure_kind(reason), reason), warn=True)
        await self._scale()

    async def scale(self, task_id: str, version: str, count: int) -> int:
        """Pin a set to ``count`` replicas (`wtm worker scale`)."""
        rs = await self._set(task_id, version)
        # Zero unpins: the set drains now and jobs start replicas on demand again.
        rs.pinned = count or None
        rs.min_override = count
        if count == 0:
            rs.last_needed = 0.0
        await self._scale()
        return count

    async def ensure(self, task_id: str, version: str, min_replicas: int) -> list[str]:
        """Keep at least ``min_replicas`` running and wait for them (`wtm worker start`)."""
        rs = await self._set(task_id, version)
        rs.min_override = min_replicas
        await self._scale()
        deadline = time.monotonic() + self.cfg.load_timeout_s
        while len(rs.ready) < min(min_replicas, self._high(rs)) and time.monotonic() < deadline:
            await asyncio.wait_for(rs.changed.wait(), self.cfg.load_timeout_s)
        return sorted(rs.ready)

    async def warm(self, wanted: list[tuple[str, str, int]], timeout_s: float) -> dict[str, Any]:
        """Start replicas ahead of a burst (`wtm warm`): ``(task_id, version, n)`` each.

        Each set is asked for ``n`` replicas (within its ``max`` and what the
        cluster holds) and counted as needed until they are ready; then they
        stay, like any replica, until idle for ``idle_timeout_s``. Returns when
        every set has what it can have, or after ``timeout_s``: each set's
        ready replicas and, where it has fewer than asked, why.
        """
        sets = []
        for task_id, version, n in wanted:
            rs = await self._set(task_id, version)
            rs.warm, rs.last_error = max(rs.warm, n), None
            sets.append((rs, n))
        await self._scale()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not all(self._warmed(rs, n) for rs, n in sets):
            await asyncio.sleep(WARM_CHECK_S)
        report = {}
        for rs, n in sets:
            rs.warm, rs.last_needed = 0, time.monotonic()
            short = None if len(rs.ready) >= n else rs.last_error or self._why_short(rs, n)
            report[rs.key] = {"ready": sorted(rs.ready), "wanted": n, "short": short}
        return report

    def _warmed(self, rs: ReplicaSet, n: int) -> bool:
        """Whether a set warmed to ``n`` has all it can have now."""
        if len(rs.ready) >= min(n, self._high(rs)) or rs.last_error:
            return True
        # Short of room, nothing on its way that would make some: as warm as it gets.
        moving = any(o.starting or o.draining for o in self.sets.values())
        return not rs.starting and not moving

    def _why_short(self, rs: ReplicaSet, n: int) -> str:
        high = self._high(rs)
        if high < n:
            return f"at most {high} replicas (its replicas.max, or what the cluster holds)"
        return "the cluster has no room for more replicas now"

    async def stop(self, task_id: str | None = None) -> list[str]:
        """Stop every replica of a task (or of all tasks) and forget the sets."""
        stopped = []
        for key, rs in list(self.sets.items()):
            if task_id is None or rs.record.task_id == task_id:
                for name, handle in [*rs.ready.items(), *rs.draining.items()]:
                    await self._kill(handle)
                    await self._forget_worker(name)
                    self._note("stopped", name, Why("stopped", "stopped by `wtm worker stop`"))
                    stopped.append(name)
                rs.ready.clear()
                rs.draining.clear()
                rs.bump()
                del self.sets[key]
        return sorted(stopped)

    async def status(self) -> list[dict[str, Any]]:
        """Each set: its replicas and what the controller wants of it."""
        return [
            {
                "key": k,
                "ready": sorted(rs.ready),
                "starting": sorted(rs.starting),
                "draining": sorted(rs.draining),
                "pinned": rs.pinned,
                "min": rs.low,
                "max": self._high(rs),
                "demand": self._demand(rs),
                "waiting": str(rs.phase()) if not rs.ready and self._demand(rs) else None,
                "last_error": rs.last_error,
            }
            for k, rs in sorted(self.sets.items())
        ]

    # the control loop ----------------------------------------------------------
    async def _control_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.period_s)
            for rs in list(self.sets.values()):
                try:
                    await self._finish_draining(rs)
                except Exception:
                    log.exception("draining %s failed", rs.key)
            try:
                await self._scale()
                await self._check_placed()
            except Exception:
                log.exception("sizing the replica sets failed")
            if self._prober is None or self._prober.done():  # one sweep at a time
                self._prober = self._background(self._probe_all())

    async def _scale(self) -> None:
        """Size every set at once: start what policy wants and the cluster has room for
        (first replicas of needed sets first), make room for a needed set's first
        replica from idle ones, and drain what has been idle for ``idle_timeout_s``."""
        async with self._scaling:
            sets = list(self.sets.values())
            snapshots = [self._snapshot(rs) for rs in sets]
            free = placement.free_resources(self._cluster_totals(), snapshots)
            granted = placement.grants(snapshots, free)
            for rs in sets:
                for _ in range(granted.get(rs.key, 0)):
                    self._start_replica(rs, self._why_start(rs))
            rooms = placement.make_room(snapshots, free, granted)
            for target, stops in rooms.items():
                why = Why("room", f"to make room for {target}")
                for key, n in stops:
                    for name in self.sets[key].drain(n, why):
                        self._note("stopping", name, why)
            self._mark_blocked(sets, snapshots, granted, rooms)
            for rs, snap in zip(sets, snapshots, strict=True):
                surplus = len(rs.ready) - snap.want
                if surplus > 0:
                    why = Why("idle", f"idle for {self.cfg.idle_timeout_s:g}s")
                    if rs.pinned is not None:
                        why = Why("pinned", f"scaled to {rs.pinned} by `wtm worker scale`")
                    for name in rs.drain(surplus, why):
                        self._note("stopping", name, why)

    def _snapshot(self, rs: ReplicaSet) -> placement.SetSnapshot:
        now = time.monotonic()
        demand, width = self._reported(rs)
        per_replica = rs.spec.calls_at_once
        if replicas_for(demand, per_replica) >= len(rs.ready):  # every ready replica is needed
            rs.last_needed = now
        current = len(rs.ready) + len(rs.starting)
        if replicas_for(demand, per_replica) > current:  # more than the set holds
            rs.pressed_since = rs.pressed_since or now
        else:
            rs.pressed_since = None
        pressed_for = None if rs.pressed_since is None else now - rs.pressed_since
        want = desired_replicas(
            current=current,
            demand=scaling_demand(
                demand, width, per_replica, pressed_for, self.cfg.upscale_delay_s
            ),
            low=rs.low,
            high=self._high(rs),
            per_replica=per_replica,
            idle_for=now - rs.last_needed,
            idle_timeout=self.cfg.idle_timeout_s,
            pinned=rs.pinned,
        )
        urgent = now - rs.asked_at < self.cfg.report_ttl_s  # a call waits on it now
        return rs.snapshot(want, demand, urgent)

    def _why_start(self, rs: ReplicaSet) -> Why:
        have = len(rs.ready) + len(rs.starting)
        if rs.pinned is not None:
            return Why("pinned", f"scaled to {rs.pinned} by `wtm worker scale`")
        if have < rs.low:
            return Why("min", f"keeps its min of {rs.low}")
        if rs.warm:
            return Why("warm", "warmed by `wtm warm`")
        return Why("demand", f"{self._demand(rs)} calls waiting, running or planned")

    def _mark_blocked(
        self,
        sets: list[ReplicaSet],
        snapshots: list[placement.SetSnapshot],
        granted: dict[str, int],
        rooms: dict[str, Any],
    ) -> None:
        """Note which needed sets wait for room; fail at once the ones that never will."""
        waiting = {s.key for s in placement.waiting_for_room(snapshots, granted)}
        totals = self._cluster_totals()
        for rs, snap in zip(sets, snapshots, strict=True):
            blocked = rs.key in waiting
            if blocked != rs.blocked:
                rs.blocked = blocked
                rs.bump()
            if not blocked:
                continue
            # No node could ever hold it, or nothing that holds the room ever gives way.
            error = unplaceable(rs.record.task_id, actor_options(rs.spec), self._nodes())
            hopeless = rs.key not in rooms and not self._draining_any()
            if error is None and hopeless and not placement.could_ever_fit(snap, snapshots, totals):
                error = no_room(rs.spec, rs.record.task_id, snap.needs)
            if error is not None:
                rs.last_error = error
                rs.bump()

    def _draining_any(self) -> bool:
        return any(rs.draining for rs in self.sets.values())

    async def _finish_draining(self, rs: ReplicaSet) -> None:
        """Kill drained replicas once they have nothing in flight."""
        for name, handle in list(rs.draining.items()):
            stats = await self._probe(handle, "stats")
            if stats is None or stats.get("in_flight", 0) == 0:
                rs.draining.pop(name, None)
                why = rs.stopping_for.pop(name, Why("idle", "drained"))
                await self._kill(handle)
                await self._forget_worker(name)
                self._note("stopped", name, why)
                rs.bump()

    async def _check_placed(self) -> None:
        """A replica Ray has not placed long after it started, though the controller
        counted room for it (something outside the system holds the resources):
        its set is shown waiting for placement, and given up if it never could be."""
        now = time.time()
        for rs in list(self.sets.values()):
            late = [n for n, t in rs.started_at.items() if now - t > PLACEMENT_GRACE_S]
            late = [n for n in late if n not in rs.loading and n in rs.handles]
            unplaced = [n for n in late if await asyncio.to_thread(_pending, rs.handles[n])]
            blocked = bool(unplaced) and not rs.ready
            if blocked and not rs.blocked:
                rs.blocked = True
                rs.bump()
            if unplaced and not rs.ready and len(rs.starting) == 1:
                snap = self._snapshot(rs)
                snapshots = [self._snapshot(o) for o in self.sets.values()]
                if not placement.could_ever_fit(snap, snapshots, self._cluster_totals()):
                    rs.last_error = no_room(rs.spec, rs.record.task_id, snap.needs)
                    rs.give_up[unplaced[0]].set()

    async def _probe_all(self) -> None:
        """Replace ready replicas whose process is gone, or that stopped answering."""
        for rs in list(self.sets.values()):
            for name, handle in list(rs.ready.items()):
                answer = await self._probe(handle, "ping")
                rs.silent[name] = rs.silent.get(name, 0) + 1 if answer is None else 0
                if answer is _DEAD:
                    await self.replica_failed(rs.key, name, "replica process died")
                elif rs.silent[name] >= HUNG_AFTER_PROBES:
                    timeout = self.cfg.probe_timeout_s * HUNG_AFTER_PROBES
                    await self.replica_failed(rs.key, name, f"hung: no answer for {timeout:g}s")

    async def _heartbeat(self) -> None:
        """Say in Redis that the controller is alive, with its sets, for `wtm health`."""
        if self.redis is None:
            return
        ttl = max(1, math.ceil(self.cfg.heartbeat_s * 3))
        sampler = metrics.ControlSampler(self.redis)
        while True:
            beat = {
                "pid": os.getpid(),
                "at": time.time(),
                "sets": await self.status(),
                "metrics": await sampler.endpoints(),  # where Prometheus reads each node
            }
            try:
                await self.redis.set(keys.CONTROLLER_ALIVE, json.dumps(beat), ex=ttl)
            except Exception as e:  # noqa: BLE001 - Redis restarting: beat again next time
                log.warning("heartbeat failed: %s", e)
            await sampler.sample(self._replica_counts())
            await asyncio.sleep(self.cfg.heartbeat_s)

    def _replica_counts(self) -> list[metrics.ReplicaCounts]:
        """Each set's replicas by state, for the metrics."""
        counts = []
        for rs in self.sets.values():
            states = {"ready": rs.ready, "starting": rs.starting, "draining": rs.draining}
            counts.append(
                (rs.record.task_id, rs.record.version, {k: len(v) for k, v in states.items()})
            )
        return counts

    async def _prune_loop(self) -> None:
        """Apply the retention setting: prune what is older, every ``every_s``."""
        keep = self.settings.retention
        if not keep.older_than_days or self.settings.redis.url is None:
            return
        while True:
            await asyncio.sleep(keep.every_s)
            before = time.time() - keep.older_than_days * 86400
            try:
                await asyncio.to_thread(self._prune, before)
            except Exception:  # records or Redis away: the next round catches up
                log.exception("pruning old executions failed")

    def _prune(self, before: float) -> None:
        r = redis_client(self.settings.redis.url)  # type: ignore[arg-type]
        try:
            retention.prune(self.records, open_objects(self.settings), r, before)
        finally:
            r.close()

    async def _adopt_all(self) -> None:
        """Rebuild the replica sets from the named replicas alive on the cluster."""
        names = [
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == self.settings.ray.namespace and keys.is_replica(a["name"])
        ]
        for task_id, version in sorted({keys.replica_set_of(n) for n in names}):
            try:
                await self._set(task_id, version)
            except NotFoundError:  # its task was deleted: the replicas go too
                for name in names:
                    if keys.replica_set_of(name) == (task_id, version):
                        with contextlib.suppress(Exception):
                            ray.kill(ray.get_actor(name, namespace=self.settings.ray.namespace))

    # steps -------------------------------------------------------------------
    async def _set(self, task_id: str, version: str) -> ReplicaSet:
        key = keys.set_key(task_id, version)
        rs = self.sets.get(key)
        if rs is None:
            record = await asyncio.to_thread(self.records.get_task, task_id, version)
            if record is None:
                raise NotFoundError(f"unknown task {task_id!r} version {version}")
            rs = self.sets.get(key)  # another caller may have made it while this one read
            if rs is None:  # made and adopted in one step: no await between them
                rs = self.sets[key] = ReplicaSet(record=record)
                self._adopt(rs)
        return rs

    async def _renew(self, rs: ReplicaSet) -> None:
        """Reload a set's task record; if its code changed, drain the old replicas."""
        record = await asyncio.to_thread(
            self.records.get_task, rs.record.task_id, rs.record.version
        )
        if record is None or record.sha256 == rs.record.sha256:
            return
        rs.record = record
        why = Why("code", "its task was registered again with new code")
        for name in rs.drain(len(rs.ready), why):
            self._note("stopping", name, why)

    def _adopt(self, rs: ReplicaSet) -> None:
        """Take over replicas a previous controller started (they are detached); only
        when the set is made, so a replica this controller is starting is never
        taken for a ready one."""
        prefix = keys.replica_prefix(rs.record.task_id, rs.record.version)
        names = [
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == self.settings.ray.namespace
            and a["name"].startswith(prefix)
            and not rs.keeps(a["name"])
        ]
        for name in names:
            with contextlib.suppress(Exception):
                rs.ready[name] = ray.get_actor(name, namespace=self.settings.ray.namespace)
                rs.next_index = max(rs.next_index, keys.replica_index(name) + 1)
        if names:
            rs.bump()

    def _start_replica(self, rs: ReplicaSet, why: Why) -> None:
        options = actor_options(rs.spec)
        unfit = unplaceable(rs.record.task_id, options, self._nodes())
        if unfit:  # no node could ever hold it: waiting for placement would wait forever
            rs.last_error = unfit
            rs.bump()
            return
        name = keys.replica_name(rs.record.task_id, rs.record.version, rs.next_index)
        rs.next_index += 1
        self._retired.discard(name)
        handle = ReplicaActor.options(
            name=name,
            namespace=self.settings.ray.namespace,
            lifetime="detached",
            get_if_exists=True,
            **options,
        ).remote(for_replicas(self.settings), rs.record, name)
        rs.starting.add(name)
        rs.started_at[name] = time.time()
        rs.give_up[name] = asyncio.Event()
        rs.handles[name] = handle
        rs.bump()
        self._note("started", name, why)
        self._background(self._await_ready(rs, name, handle))

    async def _await_ready(self, rs: ReplicaSet, name: str, handle: Any) -> None:
        """Have the replica load its task and wait until it has, it fails,
        ``load_timeout_s`` passes, or :meth:`_check_placed` gives up on placing it
        (``rs.give_up``)."""
        ping = asyncio.ensure_future(handle.load.remote())
        gave_up = asyncio.ensure_future(rs.give_up[name].wait())
        try:
            done, _ = await asyncio.wait(
                {ping, gave_up}, timeout=self.cfg.load_timeout_s, return_when="FIRST_COMPLETED"
            )
            if ping not in done:
                ping.cancel()
                why = rs.last_error if gave_up in done else None
                raise ReplicaUnavailable(why or f"not ready within {self.cfg.load_timeout_s:g}s")
            ping.result()
        except Exception as e:  # noqa: BLE001 - could not be placed, or died loading
            log.error("replica %s did not start: %s", name, e)
            why = str(e) if isinstance(e, ReplicaUnavailable) else f"{type(e).__name__}: {e}"
            rs.last_error = why[:300]
            await self._kill(handle)
            await self._mark_worker(name, WorkerState.DEAD)
            self._note("stopped", name, Why("failed", f"did not start: {rs.last_error}"), warn=True)
            rs.starting.discard(name)
            rs.loading.discard(name)
            rs.bump()
            return
        finally:
            gave_up.cancel()
            rs.started_at.pop(name, None)
            rs.give_up.pop(name, None)
            rs.handles.pop(name, None)
        rs.starting.discard(name)
        rs.loading.discard(name)
        if self.sets.get(rs.key) is rs:
            rs.ready[name] = handle
        else:  # the set was stopped while this replica loaded: it must not linger
            await self._kill(handle)
            await self._forget_worker(name)
            self._note("stopped", name, Why("stopped", "its set was stopped while it started"))
        rs.bump()
        await self._scale()  # what placing it took is free again: another may start now

    def _note(self, event: str, name: str, why: Why, warn: bool = False) -> None:
        """A replica started, is stopping, or stopped, and why: logged, counted in the
        metrics (starts and stops), and added to ``wtm:replica-events`` for
        `wtm worker status`."""
        (log.warning if warn else log.info)("replica %s %s: %s", name, event, why.text)
        task_id, version = keys.replica_set_of(name)
        if event != "stopping":
            metrics.replica_event(task_id, event, why.kind)
        if self.redis is not None:
            entry = {
                "at": time.time(),
                "replica": name,
                "task_id": task_id,
                "version": version,
                "event": event,
                "kind": why.kind,
                "reason": why.text,
            }
            self._background(self._append_event(entry))

    async def _append_event(self, entry: dict[str, Any]) -> None:
        assert self.redis is not None
        try:
            await self.redis.xadd(
                keys.REPLICA_EVENTS,
                {"event": json.dumps(entry)},
                maxlen=keys.REPLICA_EVENTS_KEPT,
                approximate=True,
            )
        except Exception as e:  # noqa: BLE001 - Redis restarting: the log line stays
            log.info("replica event not recorded: %s", e)

    async def _kill(self, handle: Any, wait_s: float = 10.0) -> None:
        """Kill a replica and wait until it is gone, so no heartbeat of its lands after
        its worker record is updated or forgotten."""
        with contextlib.suppress(Exception):
            ray.kill(handle, no_restart=True)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if await self._probe(handle, "ping") is _DEAD:
                return
            await asyncio.sleep(0.05)

    async def _probe(self, handle: Any, method: str) -> Any:
        try:
            return await asyncio.wait_for(
                getattr(handle, method).remote(), self.cfg.probe_timeout_s
            )
        except ray.exceptions.RayActorError:
            return _DEAD
        except (asyncio.TimeoutError, ray.exceptions.RayError):
            return None

    def _demand(self, rs: ReplicaSet) -> int:
        """Calls waiting, running or planned for the set, as dispatchers last reported
        (a report counts for ``report_ttl_s``); at least one while a dispatcher's ask
        for its replicas is that fresh, and what `warm` asked for until it is ready."""
        return self._reported(rs)[0]

    def _reported(self, rs: ReplicaSet) -> tuple[int, int]:
        """(demand, width): see :meth:`_demand`; width is the most slots one execution
        needs at once, or what `warm` asked for."""
        now = time.monotonic()
        ttl = self.cfg.report_ttl_s
        fresh = [d[rs.key] for t, d in self.reports.values() if now - t < ttl and rs.key in d]
        asked = 1 if now - rs.asked_at < ttl else 0
        demand = max(sum(n for n, _ in fresh), asked, rs.warm)
        width = max([w for _, w in fresh] + [asked, rs.warm])
        return demand, width

    def _high(self, rs: ReplicaSet) -> int:
        """The most replicas a set may have: its task's ``replicas.max``, else what the
        cluster holds (see :func:`~orchestrator.policy.cluster_fit`)."""
        high = rs.spec.replicas.max
        if high is None:
            totals = self._cluster_totals()
            r = rs.spec.resources
            high = cluster_fit(
                totals.get("CPU", 1.0), totals.get("GPU", 0.0), r.num_cpus, r.num_gpus
            )
        return max(high, rs.low)

    def _cluster_totals(self) -> dict[str, float]:
        """The live cluster's resources, read again every ``CLUSTER_READ_S``."""
        self._read_cluster()
        return self._totals

    def _nodes(self) -> list[dict]:
        """The cluster's nodes (Ray's node table), read again every ``CLUSTER_READ_S``."""
        self._read_cluster()
        return self._node_table

    def _read_cluster(self) -> None:
        now = time.monotonic()
        if now - self._totals_at > CLUSTER_READ_S:
            self._totals = dict(ray.cluster_resources())
            self._node_table = ray.nodes()
            self._totals_at = now

    async def _mark_worker(self, name: str, state: WorkerState) -> None:
        async with self._workers_lock:
            if state == WorkerState.DEAD:
                self._retired.add(name)
            workers = await asyncio.to_thread(self.records.list_workers)
            for w in workers:
                if w.worker_id == name:
                    await asyncio.to_thread(
                        self.records.put_worker, w.model_copy(update={"state": state})
                    )

    async def _forget_worker(self, name: str) -> None:
        async with self._workers_lock:
            self._retired.add(name)
            await asyncio.to_thread(self.records.delete_worker, name)

    def _background(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _failure_kind(reason: str) -> str:
    """The metrics' word for why a dispatcher had a replica replaced."""
    for word, kind in _FAILURES:
        if word in reason:
            return kind
    return "died"


_FAILURES = (
    ("cancel", "cancelled"),
    ("timeout", "hung"),
    ("hung", "hung"),
    ("memory", "memory"),
    ("load", "broken"),
)
_DEAD = object()
HUNG_AFTER_PROBES = 3  # a replica that misses this many probes in a row is replaced
CLUSTER_READ_S = 10.0  # how often the controller reads the cluster's size again
PLACEMENT_GRACE_S = 2.0  # a replica Ray has not placed after this long is shown waiting for room
WARM_CHECK_S = 0.1  # `warm` checks this often whether its sets are ready


class ControllerActor(Controller):
    """The controller as a Ray actor: it starts itself, so one that Ray restarts
    after its process died adopts the live replicas and serves again."""

    def __init__(self, settings: Settings):
        logs.configure_actor(settings, keys.CONTROLLER)
        super().__init__(settings)
        actors.start_itself()


def deploy(settings: Settings, replace: bool = True) -> Any:
    """Start the controller and return its handle.

    Idempotent: a running controller is kept, unless ``replace`` and it runs
    with other settings (the replicas outlive the swap; the new one adopts them).
    Calls made while Ray restarts it wait for the new one (``max_task_retries``).
    """
    return actors.deploy(
        ControllerActor, keys.CONTROLLER, settings, (settings,), replace, max_task_retries=-1
    )
