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
from dataclasses import dataclass, field
from typing import Any

import ray

from orchestrator import keys, logs, metrics, retention
from orchestrator.errors import NotFoundError, ReplicaUnavailable
from orchestrator.models import TaskRecord, WorkerRecord, WorkerState
from orchestrator.objects import open_objects
from orchestrator.policy import cluster_fit, desired_replicas, replicas_for
from orchestrator.records import open_records
from orchestrator.resilience import async_redis, redis_client
from orchestrator.runtime import actors
from orchestrator.runtime.replica import Replica
from orchestrator.runtime.router import ReplicaView
from orchestrator.secrets import for_replicas
from orchestrator.settings import Settings
from orchestrator.taskspec import TaskSpec

log = logging.getLogger("wtm.controller")

# Control calls (ping, stats) have their own threads, so they are answered
# while every task thread is busy.
ReplicaActor = ray.remote(concurrency_groups={"control": 2})(Replica)


def actor_options(spec: TaskSpec) -> dict[str, Any]:
    """Ray actor options from a task's resources and replica settings."""
    r = spec.resources
    options: dict[str, Any] = {"max_concurrency": spec.calls_at_once}
    if r.num_cpus is not None:
        options["num_cpus"] = r.num_cpus
    if r.num_gpus is not None:
        options["num_gpus"] = r.num_gpus
    if r.memory is not None:
        options["memory"] = r.memory
    if r.custom:
        options["resources"] = dict(r.custom)
    if spec.runtime_env:
        options["runtime_env"] = spec.runtime_env
    return options


_RESOURCE_NAMES = {"num_cpus": "CPU", "num_gpus": "GPU", "memory": "memory"}


def placement_needs(spec: TaskSpec) -> dict[str, float]:
    """What a node must have free to place a replica (Ray's names). An actor that
    names no ``num_cpus`` needs one CPU to be placed, and holds none once running."""
    r = spec.resources
    needs = {"CPU": r.num_cpus if r.num_cpus is not None else 1.0, **r.custom}
    if r.num_gpus:
        needs["GPU"] = r.num_gpus
    if r.memory:
        needs["memory"] = float(r.memory)
    return {k: v for k, v in needs.items() if v}


def held_by(spec: TaskSpec) -> dict[str, float]:
    """What one running replica of a task holds (freed when it is killed)."""
    r = spec.resources
    held = {"CPU": r.num_cpus or 0.0, "GPU": r.num_gpus or 0.0, **r.custom}
    if r.memory:
        held["memory"] = float(r.memory)
    return {k: v for k, v in held.items() if v}


def _pending(handle: Any) -> bool:
    """Whether Ray still waits to create this actor (not placed, or its process not up),
    as the GCS says; False when it cannot tell."""
    try:
        from ray._private import state  # the GCS's actor table: no dashboard needed

        info = state.actors(actor_id=handle._actor_id.hex())
    except Exception:  # noqa: BLE001 - an API Ray may change: then do nothing rash
        return False
    return info.get("State") in ("PENDING_CREATION", "DEPENDENCIES_UNREADY")


def _shortfall(needs: dict[str, float], free: dict[str, float]) -> dict[str, float]:
    """How much of each resource is missing (needs minus free, where positive)."""
    return {r: n - free.get(r, 0.0) for r, n in needs.items() if n - free.get(r, 0.0) > 1e-9}


def unplaceable(task_id: str, options: dict[str, Any], nodes: list[dict]) -> str | None:
    """Why no live node of the cluster can hold a replica with these options, or None.

    Checked against each node's total resources (what it has, busy or not), so
    a replica that only waits for others to free up is not refused. A cluster
    that adds nodes on demand is not foreseen: a resource no node has yet is refused.
    """
    wanted = {_RESOURCE_NAMES[k]: v for k, v in options.items() if k in _RESOURCE_NAMES and v}
    wanted.update(options.get("resources") or {})
    if not wanted:
        return None
    totals = [n.get("Resources", {}) for n in nodes if n.get("Alive")]
    if any(all(t.get(r, 0) >= amount for r, amount in wanted.items()) for t in totals):
        return None
    names = {v: k for k, v in _RESOURCE_NAMES.items()}

    def most(r: str) -> float:
        return max((t.get(r, 0) for t in totals), default=0)

    short = [
        f"{names.get(r, r)} {amount:g} (the most a node has: {most(r):g})"
        for r, amount in wanted.items()
        if most(r) < amount
    ] or [", ".join(f"{names.get(r, r)} {a:g}" for r, a in wanted.items()) + " on one node"]
    return f"task {task_id} needs {'; '.join(short)}: no node of the cluster can place it"


@dataclass
class ReplicaSet:
    """One task version's replicas, as the controller sees them."""

    record: TaskRecord
    ready: dict[str, Any] = field(default_factory=dict)  # routable replicas
    starting: set[str] = field(default_factory=set)
    started_at: dict[str, float] = field(default_factory=dict)  # starting replica -> when (epoch)
    give_up: dict[str, asyncio.Event] = field(default_factory=dict)  # set: stop waiting for it
    handles: dict[str, Any] = field(default_factory=dict)  # starting replica -> its handle
    draining: dict[str, Any] = field(default_factory=dict)
    next_index: int = 0
    generation: int = 0
    pinned: int | None = None
    min_override: int | None = None
    last_error: str | None = None
    last_needed: float = field(default_factory=time.monotonic)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    silent: dict[str, int] = field(default_factory=dict)  # replica -> probes unanswered in a row

    @property
    def key(self) -> str:
        return keys.set_key(self.record.task_id, self.record.version)

    @property
    def spec(self) -> TaskSpec:
        return self.record.spec

    @property
    def low(self) -> int:
        return max(self.spec.replicas.min, self.min_override or 0)

    def bump(self) -> None:
        self.generation += 1
        self.changed.set()
        self.changed = asyncio.Event()


class Controller:
    """Owns the replica sets; dispatchers ask it for replicas and report demand."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.cfg = settings.controller
        self.records = open_records(settings)
        self.sets: dict[str, ReplicaSet] = {}
        self.reports: dict[str, tuple[float, dict[str, int]]] = {}
        self.redis = async_redis(settings.redis.url) if settings.redis.url else None
        self._loop_task: asyncio.Task | None = None
        self._prober: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._totals, self._totals_at = (1.0, 0.0), -CLUSTER_READ_S  # cluster CPUs, GPUs
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
    async def replicas(self, task_id: str, version: str, sha256: str | None = None) -> ReplicaView:
        """The routable replicas of a set, starting one (and waiting) if none is.

        ``sha256`` is the package the caller expects: if the version was
        re-registered (``--force``) the set's replicas are retired and new ones
        load the new code.
        """
        rs = await self._set(task_id, version)
        if sha256 and rs.record.sha256 != sha256:
            await self._renew(rs)
        rs.last_error = None
        while not rs.ready:
            if rs.last_error:
                raise ReplicaUnavailable(f"no replica of {rs.key} could start: {rs.last_error}")
            if not rs.starting:
                self._start_replica(rs)
                if rs.last_error:  # it cannot be placed: said at once, not after a timeout
                    continue
            await asyncio.wait_for(rs.changed.wait(), self.cfg.load_timeout_s)
        return ReplicaView(rs.generation, dict(rs.ready), rs.spec.calls_at_once)

    async def worker_beat(self, worker: dict[str, Any]) -> None:
        """A replica's heartbeat: its worker record, written here for it (a replica,
        where task code runs, holds no records credentials). A replica this
        controller does not keep, or already retired, is not written."""
        record = WorkerRecord.model_validate(worker)
        async with self._workers_lock:
            if record.worker_id in self._retired or not self._keeps(record.worker_id):
                return
            await asyncio.to_thread(self.records.put_worker, record)

    def _keeps(self, name: str) -> bool:
        return any(
            name in rs.ready or name in rs.starting or name in rs.draining
            for rs in self.sets.values()
        )

    async def report(self, dispatcher: str, demand: dict[str, int]) -> dict[str, int]:
        """A dispatcher's calls waiting or running per set; returns set generations."""
        self.reports[dispatcher] = (time.monotonic(), demand)
        return {key: rs.generation for key, rs in self.sets.items()}

    async def replica_failed(self, key: str, name: str, reason: str) -> None:
        """A dispatcher saw a replica die or hang: kill it and replace it."""
        rs = self.sets.get(key)
        if rs is None or (name not in rs.ready and name not in rs.draining):
            return
        handle = rs.ready.pop(name, None) or rs.draining.pop(name)
        rs.bump()
        await self._kill(handle)
        await self._mark_worker(name, WorkerState.DEAD)
        log.warning("replica %s removed: %s", name, reason)
        await self._reconcile(rs)

    async def scale(self, task_id: str, version: str, count: int) -> int:
        """Pin a set to ``count`` replicas (`wtm worker scale`)."""
        rs = await self._set(task_id, version)
        # Zero unpins: the set drains now and jobs start replicas on demand again.
        rs.pinned = count or None
        rs.min_override = count
        if count == 0:
            rs.last_needed = 0.0
        await self._reconcile(rs)
        return count

    async def ensure(self, task_id: str, version: str, min_replicas: int) -> list[str]:
        """Keep at least ``min_replicas`` running and wait for them (`wtm worker start`)."""
        rs = await self._set(task_id, version)
        rs.min_override = min_replicas
        await self._reconcile(rs)
        deadline = time.monotonic() + self.cfg.load_timeout_s
        while len(rs.ready) < min(min_replicas, self._high(rs)) and time.monotonic() < deadline:
            await asyncio.wait_for(rs.changed.wait(), self.cfg.load_timeout_s)
        return sorted(rs.ready)

    async def stop(self, task_id: str | None = None) -> list[str]:
        """Stop every replica of a task (or of all tasks) and forget the sets."""
        stopped = []
        for key, rs in list(self.sets.items()):
            if task_id is None or rs.record.task_id == task_id:
                for name, handle in [*rs.ready.items(), *rs.draining.items()]:
                    await self._kill(handle)
                    await self._forget_worker(name)
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
                "demand": self._demand(k),
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
                    await self._reconcile(rs)
                    await self._finish_draining(rs)
                except Exception:
                    log.exception("reconciling %s failed", rs.key)
            try:
                await self._make_room()
            except Exception:
                log.exception("making room for unplaced replicas failed")
            if self._prober is None or self._prober.done():  # one sweep at a time
                self._prober = self._background(self._probe_all())

    async def _reconcile(self, rs: ReplicaSet) -> None:
        """Start or drain replicas until the set has the size policy wants."""
        now = time.monotonic()
        current = len(rs.ready) + len(rs.starting)
        demand = self._demand(rs.key)
        per_replica = rs.spec.calls_at_once
        if replicas_for(demand, per_replica) >= len(rs.ready):  # every ready replica is needed
            rs.last_needed = now
        target = desired_replicas(
            current=current,
            demand=demand,
            low=rs.low,
            high=self._high(rs),
            per_replica=per_replica,
            idle_for=now - rs.last_needed,
            idle_timeout=self.cfg.idle_timeout_s,
            pinned=rs.pinned,
        )
        for _ in range(target - current):
            self._start_replica(rs)
        surplus = len(rs.ready) - target
        for name in sorted(rs.ready, key=keys.replica_index, reverse=True)[: max(surplus, 0)]:
            rs.draining[name] = rs.ready.pop(name)
            rs.bump()

    async def _finish_draining(self, rs: ReplicaSet) -> None:
        """Kill drained replicas once they have nothing in flight."""
        for name, handle in list(rs.draining.items()):
            stats = await self._probe(handle, "stats")
            if stats is None or stats.get("in_flight", 0) == 0:
                rs.draining.pop(name, None)
                await self._kill(handle)
                await self._forget_worker(name)

    async def _make_room(self) -> None:
        """Replicas waiting for placement take the place of idle replicas of other sets.

        A replica still starting after ``PLACEMENT_GRACE_S`` while the cluster
        lacks what it needs to place it (Ray's available resources), and that
        has not written its first worker record (so it is not loading), has idle
        replicas of other sets drained for it, least recently needed first,
        never below their ``min`` nor from a pinned set, until what they free
        covers the shortfall. Ray's actor table must say it is still pending
        creation. If it is the one replica its set's steps wait on and nothing
        holding that resource could ever give way, it is given up at once,
        naming the resource, instead of after ``load_timeout_s``.
        """
        now = time.time()
        late = {
            name: (rs, since)
            for rs in self.sets.values()
            for name, since in rs.started_at.items()
            if now - since > PLACEMENT_GRACE_S
        }
        if not late:
            return
        workers = await asyncio.to_thread(self.records.list_workers)
        placed = {
            w.worker_id
            for w in workers
            if w.worker_id in late and (w.started_at or 0) >= late[w.worker_id][1] - 1
        }
        unplaced = [
            (rs, name)
            for name, (rs, _) in late.items()
            if name not in placed
            and name in rs.handles
            and await asyncio.to_thread(_pending, rs.handles[name])
        ]
        if not unplaced:
            return
        free = await asyncio.to_thread(self._free_but_for_starting)
        for rs, name in unplaced:
            short = _shortfall(placement_needs(rs.spec), free)
            if not short:  # it can be placed: it is loading
                continue
            for other in self.sets.values():  # what is draining already will free its part
                for _ in other.draining:
                    short = _shortfall(short, held_by(other.spec))
            for other in sorted(self.sets.values(), key=lambda o: o.last_needed):
                frees = held_by(other.spec)
                while any(frees.get(r, 0) > 0 for r in short) and self._idle_above_min(
                    other, exclude=rs
                ):
                    victim = max(other.ready, key=keys.replica_index)
                    other.draining[victim] = other.ready.pop(victim)
                    other.bump()
                    log.info("draining idle %s to make room for %s", victim, name)
                    short = _shortfall(short, frees)
            alone = not rs.ready and len(rs.starting) == 1  # its steps wait on this one
            if short and alone and not self._could_give_way(rs, short):
                needs = ", ".join(f"{r} {n:g}" for r, n in sorted(placement_needs(rs.spec).items()))
                rs.last_error = (
                    f"task {rs.record.task_id} needs {needs} to start a replica; the cluster "
                    f"has too little {', '.join(sorted(short))} free and no replica can give way"
                )
                if name in rs.give_up:  # still starting (its wait may have ended meanwhile)
                    rs.give_up[name].set()

    def _free_but_for_starting(self) -> dict[str, float]:
        """The cluster's resources less what running replicas hold: what starting ones
        can have. (Ray's available resources would count a replica that was placed
        and is still starting as holding its share, and so as short of it.)"""
        free = dict(ray.cluster_resources())
        for rs in self.sets.values():
            for _ in [*rs.ready, *rs.draining]:
                for r, n in held_by(rs.spec).items():
                    free[r] = free.get(r, 0.0) - n
        return free

    def _idle_above_min(self, rs: ReplicaSet, exclude: ReplicaSet) -> bool:
        """Whether a set has a ready replica it could spare now."""
        return (
            rs is not exclude
            and rs.pinned is None
            and self._demand(rs.key) == 0
            and len(rs.ready) > rs.low
            and bool(rs.ready)
        )

    def _could_give_way(self, rs: ReplicaSet, short: dict[str, float]) -> bool:
        """Whether some other set holds a short resource in replicas above its min
        (busy now, they give way once idle), or is draining some."""
        for other in self.sets.values():
            holds = held_by(other.spec)
            if other is rs or not any(holds.get(r, 0) > 0 for r in short):
                continue
            if other.draining or (other.pinned is None and len(other.ready) > other.low):
                return True
        return False

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
            rs = self.sets.setdefault(key, ReplicaSet(record=record))
            await self._adopt(rs)
        return rs

    async def _renew(self, rs: ReplicaSet) -> None:
        """Reload a set's task record; if its code changed, drain the old replicas."""
        record = await asyncio.to_thread(
            self.records.get_task, rs.record.task_id, rs.record.version
        )
        if record is None or record.sha256 == rs.record.sha256:
            return
        rs.record = record
        rs.draining.update(rs.ready)
        rs.ready.clear()
        rs.bump()

    async def _adopt(self, rs: ReplicaSet) -> None:
        """Take over replicas a previous controller started (they are detached)."""
        prefix = keys.replica_prefix(rs.record.task_id, rs.record.version)
        names = [
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == self.settings.ray.namespace and a["name"].startswith(prefix)
        ]
        for name in names:
            with contextlib.suppress(Exception):
                rs.ready[name] = ray.get_actor(name, namespace=self.settings.ray.namespace)
                rs.next_index = max(rs.next_index, keys.replica_index(name) + 1)
        if names:
            rs.bump()

    def _start_replica(self, rs: ReplicaSet) -> None:
        options = actor_options(rs.spec)
        why = unplaceable(rs.record.task_id, options, ray.nodes())
        if why:  # no node could ever hold it: waiting for placement would wait forever
            rs.last_error = why
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
        self._background(self._await_ready(rs, name, handle))

    async def _await_ready(self, rs: ReplicaSet, name: str, handle: Any) -> None:
        """Wait until the replica answers, it fails, ``load_timeout_s`` passes, or
        :meth:`_make_room` gives up on placing it (``rs.give_up``)."""
        ping = asyncio.ensure_future(handle.ping.remote())
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
            rs.starting.discard(name)
            rs.bump()
            return
        finally:
            gave_up.cancel()
            rs.started_at.pop(name, None)
            rs.give_up.pop(name, None)
            rs.handles.pop(name, None)
        rs.starting.discard(name)
        if self.sets.get(rs.key) is rs:
            rs.ready[name] = handle
        else:  # the set was stopped while this replica loaded: it must not linger
            await self._kill(handle)
            await self._forget_worker(name)
        rs.bump()

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

    def _demand(self, key: str) -> int:
        now = time.monotonic()
        ttl = self.cfg.report_ttl_s
        return sum(d.get(key, 0) for t, d in self.reports.values() if now - t < ttl)

    def _high(self, rs: ReplicaSet) -> int:
        """The most replicas a set may have: its task's ``replicas.max``, else what the
        cluster holds (see :func:`~orchestrator.policy.cluster_fit`)."""
        high = rs.spec.replicas.max
        if high is None:
            cpus, gpus = self._cluster_totals()
            r = rs.spec.resources
            high = cluster_fit(cpus, gpus, r.num_cpus, r.num_gpus)
        return max(high, rs.low)

    def _cluster_totals(self) -> tuple[float, float]:
        """The live cluster's CPUs and GPUs, read again every ``CLUSTER_READ_S``."""
        now = time.monotonic()
        if now - self._totals_at > CLUSTER_READ_S:
            totals = ray.cluster_resources()
            self._totals = (totals.get("CPU", 1.0), totals.get("GPU", 0.0))
            self._totals_at = now
        return self._totals

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


_DEAD = object()
HUNG_AFTER_PROBES = 3  # a replica that misses this many probes in a row is replaced
CLUSTER_READ_S = 10.0  # how often the controller reads the cluster's size again
PLACEMENT_GRACE_S = 2.0  # a replica not placed after this long may take idle replicas' place


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
