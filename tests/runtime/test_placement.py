"""Placement on its own: which sets start replicas now, and which idle ones give way."""

from __future__ import annotations

from orchestrator.runtime.placement import (
    SetSnapshot,
    could_ever_fit,
    free_resources,
    grants,
    make_room,
    waiting_for_room,
)

ONE_CPU = {"CPU": 1.0}  # a task that names no num_cpus: placed on one CPU, then holds none


def face_sets(**overrides) -> list[SetSnapshot]:
    """The face pipeline's four sets as their task.json files size them, all needed."""
    sets = {
        "detect": SetSnapshot("detect", 0, 0, want=1, demand=1, needs=ONE_CPU, holds={}),
        "attrs": SetSnapshot(
            "attrs", 0, 0, want=1, demand=1, needs={"CPU": 0.5}, holds={"CPU": 0.5}
        ),
        "feats": SetSnapshot(
            "feats", 0, 0, want=1, demand=1, needs={"CPU": 0.5}, holds={"CPU": 0.5}
        ),
        "merge": SetSnapshot(
            "merge", 0, 0, want=1, demand=1, needs={"CPU": 0.1}, holds={"CPU": 0.1}
        ),
    }
    for key, changes in overrides.items():
        sets[key] = SetSnapshot(**{**sets[key].__dict__, **changes})
    return list(sets.values())


def test_what_placing_takes_is_reserved_until_ready_so_starts_never_wait_on_each_other():
    sets = face_sets()
    granted = grants(sets, free_resources({"CPU": 2.0}, sets))
    # detect (1 CPU to place) + attrs + feats fill the 2 CPUs; merge waits for detect to
    # be ready (it then holds nothing) rather than for Ray to place it behind the others.
    assert granted == {"detect": 1, "attrs": 1, "feats": 1}

    starting = face_sets(detect={"starting": 1}, attrs={"starting": 1}, feats={"starting": 1})
    assert grants(starting, free_resources({"CPU": 2.0}, starting)) == {}
    ready = face_sets(detect={"ready": 1}, attrs={"ready": 1}, feats={"ready": 1})
    assert grants(ready, free_resources({"CPU": 2.0}, ready)) == {"merge": 1}


def test_every_needed_set_gets_its_first_replica_before_any_gets_a_second():
    sets = face_sets(
        attrs={"want": 2, "demand": 5}, feats={"want": 2, "demand": 5}, detect={"want": 2}
    )
    granted = grants(sets, free_resources({"CPU": 3.0}, sets))
    assert all(granted.get(k) for k in ("detect", "attrs", "feats", "merge"))
    # A second replica only from what is left (3 - 1 - 0.5 - 0.5 - 0.1 = 0.9): attrs or feats.
    assert sum(granted.values()) == 5


def test_while_a_needed_first_replica_has_no_room_no_set_grows_past_it():
    big = SetSnapshot("big", 0, 0, want=1, demand=1, needs={"CPU": 2.0}, holds={"CPU": 2.0})
    grower = SetSnapshot("grower", 1, 0, want=3, demand=9, needs={"CPU": 0.5}, holds={"CPU": 0.5})
    sets = [big, grower]
    assert grants(sets, free_resources({"CPU": 2.0}, sets)) == {}


def test_room_is_made_from_idle_sets_nothing_needs_least_recently_needed_first():
    old = SetSnapshot("old", 2, 0, want=2, needs={"CPU": 0.5}, holds={"CPU": 0.5}, last_needed=1)
    recent = SetSnapshot(
        "recent", 2, 0, want=2, needs={"CPU": 0.5}, holds={"CPU": 0.5}, last_needed=9
    )
    new = SetSnapshot("new", 0, 0, want=1, demand=1, needs=ONE_CPU, holds={})
    sets = [recent, old, new]
    free = free_resources({"CPU": 2.0}, sets)
    granted = grants(sets, free)
    assert granted == {} and [s.key for s in waiting_for_room(sets, granted)] == ["new"]
    assert make_room(sets, free, granted) == {"new": [("old", 2)]}


def test_the_last_replica_of_a_needed_set_never_gives_way():
    # Two sets the running executions need, each holding one replica: a third needed
    # set waits, rather than have the two take turns evicting each other.
    a = SetSnapshot("a", 1, 0, want=1, demand=1, needs={"CPU": 1.0}, holds={"CPU": 1.0})
    b = SetSnapshot("b", 1, 0, want=1, demand=1, needs={"CPU": 1.0}, holds={"CPU": 1.0})
    c = SetSnapshot("c", 0, 0, want=1, demand=1, needs={"CPU": 1.0}, holds={"CPU": 1.0})
    sets = [a, b, c]
    free = free_resources({"CPU": 2.0}, sets)
    assert make_room(sets, free, grants(sets, free)) == {}
    # An extra replica of a needed set does give way, the least loaded set's first.
    a2 = SetSnapshot("a", 2, 0, want=2, demand=1, needs={"CPU": 0.5}, holds={"CPU": 0.5})
    b2 = SetSnapshot("b", 2, 0, want=2, demand=8, needs={"CPU": 0.5}, holds={"CPU": 0.5})
    c2 = SetSnapshot("c", 0, 0, want=1, demand=1, needs={"CPU": 0.5}, holds={"CPU": 0.5})
    sets = [a2, b2, c2]
    free = free_resources({"CPU": 2.0}, sets)
    assert make_room(sets, free, grants(sets, free)) == {"c": [("a", 1)]}


def test_nothing_is_stopped_when_all_that_may_stop_would_not_be_enough():
    spare = SetSnapshot("spare", 1, 0, want=1, needs={"CPU": 0.5}, holds={"CPU": 0.5})
    pinned = SetSnapshot(
        "pinned", 3, 0, want=3, pinned=True, needs={"CPU": 0.5}, holds={"CPU": 0.5}
    )
    kept = SetSnapshot("kept", 1, 0, want=1, low=1, needs={"CPU": 0.5}, holds={"CPU": 0.5})
    big = SetSnapshot("big", 0, 0, want=1, demand=1, needs={"CPU": 1.0}, holds={"CPU": 1.0})
    sets = [spare, pinned, kept, big]
    free = free_resources({"CPU": 2.5}, sets)
    assert make_room(sets, free, grants(sets, free)) == {}
    assert not could_ever_fit(big, sets, {"CPU": 2.5})  # pinned 1.5 and min 0.5 stay
    assert could_ever_fit(big, sets, {"CPU": 3.0})


def test_a_replica_that_holds_nothing_is_not_stopped_for_cpu():
    light = SetSnapshot("light", 2, 0, want=2, needs=ONE_CPU, holds={})
    hog = SetSnapshot("hog", 4, 0, want=4, needs={"CPU": 0.5}, holds={"CPU": 0.5})
    new = SetSnapshot("new", 0, 0, want=1, demand=1, needs=ONE_CPU, holds={})
    sets = [light, hog, new]
    free = free_resources({"CPU": 2.0}, sets)
    assert make_room(sets, free, grants(sets, free)) == {"new": [("hog", 2)]}


def test_what_is_draining_already_counts_as_room_on_its_way():
    going = SetSnapshot("going", 0, 0, want=0, draining=2, needs={"CPU": 0.5}, holds={"CPU": 0.5})
    idle = SetSnapshot("idle", 2, 0, want=2, needs={"CPU": 0.5}, holds={"CPU": 0.5})
    new = SetSnapshot("new", 0, 0, want=1, demand=1, needs=ONE_CPU, holds={})
    sets = [going, idle, new]
    free = free_resources({"CPU": 2.0}, sets)
    assert make_room(sets, free, grants(sets, free)) == {}  # the draining two make the room
