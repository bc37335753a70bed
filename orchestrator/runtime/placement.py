"""Placement: which replica sets may start replicas now, and which idle replicas give way.

Pure functions over a snapshot of the replica sets and of what the cluster
has free, so the controller's choices are tested like :mod:`orchestrator.policy`:

1. **Only what fits starts.** A replica is started only when what placing it
   takes is free. A replica still starting keeps that much reserved until its
   process is up and loading its task (Ray places a replica that names no
   ``num_cpus`` on one CPU, and gives the CPU back once it is created), so
   replicas started together never wait on each other for room.
2. **Fair rounds.** Every set's n-th replica goes before any set's (n+1)-th:
   each set an execution needs gets its first replica before any set gets a
   second. In a round, a set that calls wait on now goes before one that plans
   will need later, then the set with the most demand per replica.
   While a needed set's first replica has no room, no set grows further.
3. **Room is made only for a first replica**, and only from replicas that are
   not the last one of a set an execution needs: idle replicas of sets that
   nothing needs (least recently needed first), then the extra replicas of
   needed sets (least loaded first); never below a set's ``min``, never from a
   pinned set, and nothing at all unless what it frees is enough. So two sets
   that executions need never take turns evicting each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Resources = dict[str, float]

EPSILON = 1e-9


@dataclass(frozen=True)
class SetSnapshot:
    """One replica set as the controller sees it at one moment."""

    key: str
    ready: int  # routable replicas: each holds ``holds``
    starting: int  # started, not yet up: each reserves ``needs``
    want: int  # how many scaling policy asks for now (within min..max, or pinned)
    demand: int = 0  # calls waiting or running, and those that running plans will make
    low: int = 0  # its ``min``: never stopped below
    pinned: bool = False  # `wtm worker scale`: never stopped to make room
    needs: Resources = field(default_factory=dict)  # free resources placing one replica takes
    holds: Resources = field(default_factory=dict)  # what one running replica holds
    draining: int = 0  # stopping: what they hold is about to be free
    last_needed: float = 0.0  # when demand last needed its replicas (a monotonic clock)
    urgent: bool = False  # a call waits for it now (not only a plan that will need it)
    loading: int = 0  # up and loading their task: each holds ``holds``

    @property
    def needed(self) -> bool:
        """An execution waits for this set, or a running plan will soon."""
        return self.demand > 0

    @property
    def count(self) -> int:
        return self.ready + self.starting + self.loading


def fits(needs: Resources, free: Resources) -> bool:
    """Whether ``free`` covers ``needs``."""
    return all(free.get(r, 0.0) + EPSILON >= n for r, n in needs.items())


def shortfall(needs: Resources, free: Resources) -> Resources:
    """How much of each resource is missing (needs minus free, where positive)."""
    return {r: n - free.get(r, 0.0) for r, n in needs.items() if n - free.get(r, 0.0) > EPSILON}


def free_resources(totals: Resources, sets: list[SetSnapshot]) -> Resources:
    """The cluster's totals less what the sets' replicas hold or reserve."""
    free = dict(totals)
    for s in sets:
        for r, n in s.holds.items():
            free[r] = free.get(r, 0.0) - n * (s.ready + s.loading + s.draining)
        for r, n in s.needs.items():
            free[r] = free.get(r, 0.0) - n * s.starting
    return free


def grants(sets: list[SetSnapshot], free: Resources) -> dict[str, int]:
    """How many replicas each set may start now, within ``free`` (rules 1 and 2)."""
    left = dict(free)
    count = {s.key: s.count for s in sets}
    granted: dict[str, int] = {}
    open_ = [s for s in sets if s.count < s.want]
    firsts_only = False
    while open_:
        s = min(
            open_, key=lambda s: (count[s.key], not s.urgent, -s.demand / (count[s.key] + 1), s.key)
        )
        if firsts_only and count[s.key] > 0:
            break  # a needed set's first replica waits for room: nothing grows past it
        if fits(s.needs, left):
            left = {r: left.get(r, 0.0) - s.needs.get(r, 0.0) for r in {*left, *s.needs}}
            count[s.key] += 1
            granted[s.key] = granted.get(s.key, 0) + 1
            if count[s.key] >= s.want:
                open_.remove(s)
            continue
        open_.remove(s)  # no room for it now
        if count[s.key] == 0 and s.needed:
            firsts_only = True
    return granted


def waiting_for_room(sets: list[SetSnapshot], granted: dict[str, int]) -> list[SetSnapshot]:
    """Needed sets with no replica, none granted: their first replica waits for room."""
    blocked = [s for s in sets if s.needed and s.count == 0 and not granted.get(s.key)]
    return sorted(blocked, key=lambda s: (-s.demand, s.key))


def make_room(
    sets: list[SetSnapshot], free: Resources, granted: dict[str, int]
) -> dict[str, list[tuple[str, int]]]:
    """Replicas to stop so that waiting first replicas fit (rule 3).

    Returns, for each set whose first replica gets room, the ``(key, n)`` of
    the replicas to stop for it. ``free`` is what was free before ``granted``.
    """
    left = dict(free)
    for s in sets:  # what the grants took, and what draining replicas will give back
        for r, n in s.needs.items():
            left[r] = left.get(r, 0.0) - n * granted.get(s.key, 0)
        for r, n in s.holds.items():
            left[r] = left.get(r, 0.0) + n * s.draining
    spare = {s.key: _spare(s) for s in sets}
    plans: dict[str, list[tuple[str, int]]] = {}
    for target in waiting_for_room(sets, granted):
        short = shortfall(target.needs, left)
        if not short:  # what is draining now will make room for it
            left = {r: left.get(r, 0.0) - target.needs.get(r, 0.0) for r in {*left, *target.needs}}
            continue
        stops, gained = _victims(target, sets, spare, short)
        if stops is None:
            continue  # stopping every replica that may go would not be enough: stop none
        for key, n in stops:
            spare[key] -= n
        left = {r: left.get(r, 0.0) + gained.get(r, 0.0) for r in {*left, *gained}}
        left = {r: left.get(r, 0.0) - target.needs.get(r, 0.0) for r in {*left, *target.needs}}
        plans[target.key] = stops
    return plans


def _spare(s: SetSnapshot) -> int:
    """Ready replicas of a set that may stop to make room."""
    if s.pinned:
        return 0
    keep = max(s.low, 1) if s.needed else s.low
    return max(s.ready - keep, 0)


def _victims(
    target: SetSnapshot, sets: list[SetSnapshot], spare: dict[str, int], short: Resources
) -> tuple[list[tuple[str, int]] | None, Resources]:
    """Replicas whose stopping covers ``short``: idle sets first, then extras."""
    idle = sorted((s for s in sets if not s.needed), key=lambda s: (s.last_needed, s.key))
    extras = sorted(
        (s for s in sets if s.needed), key=lambda s: (s.demand / max(s.ready, 1), s.key)
    )
    stops: list[tuple[str, int]] = []
    gained: Resources = {}
    for s in [*idle, *extras]:
        if s.key == target.key or not any(s.holds.get(r, 0.0) > 0 for r in short):
            continue
        n = 0
        while n < spare[s.key] and shortfall(short, gained):
            n += 1
            gained = {r: gained.get(r, 0.0) + s.holds.get(r, 0.0) for r in {*gained, *s.holds}}
        if n:
            stops.append((s.key, n))
        if not shortfall(short, gained):
            return stops, gained
    return None, {}


def could_ever_fit(target: SetSnapshot, sets: list[SetSnapshot], totals: Resources) -> bool:
    """Whether the target's first replica fits once every replica that may ever give
    way has: all but the pinned sets' replicas and each set's ``min``."""
    free = dict(totals)
    for s in sets:
        if s.key == target.key:
            continue
        kept = s.count + s.draining if s.pinned else min(s.low, s.count)
        for r, n in s.holds.items():
            free[r] = free.get(r, 0.0) - n * kept
    return fits(target.needs, free)
