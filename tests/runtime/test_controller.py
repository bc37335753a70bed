"""The controller: the Ray options a task's resources become, what no node can place, and
how one sizing pass starts, keeps and stops replicas."""

from __future__ import annotations

import asyncio
import time

from orchestrator.models import ExecutionStatus, TaskRecord
from orchestrator.runtime import controller as controller_module
from orchestrator.runtime.controller import Controller
from orchestrator.runtime.replica_set import ReplicaSet, actor_options, unplaceable
from orchestrator.settings import Settings
from orchestrator.taskspec import TaskSpec
from tests.conftest import make_task


def test_resources_become_ray_actor_options():
    spec = TaskSpec.model_validate(
        {
            "task_id": "t",
            "name": "t",
            "version": "1",
            "entry_point": "task.Task",
            "resources": {
                "num_cpus": 2,
                "num_gpus": 0.25,
                "memory": 2**30,
                "custom": {"special_hw": 1},
            },
            "replicas": {"max_concurrency": 4},
            "batch": {"max_size": 16},
            "runtime_env": {"env_vars": {"A": "1"}},
        }
    )
    options = actor_options(spec)
    assert options == {
        "max_concurrency": 16,
        "num_cpus": 2,
        "num_gpus": 0.25,
        "memory": 2**30,
        "resources": {"special_hw": 1},
        "runtime_env": {"env_vars": {"A": "1"}},
    }


NODES = [
    {"Alive": True, "Resources": {"CPU": 2.0, "memory": 8e9}},
    {"Alive": True, "Resources": {"CPU": 1.0, "GPU": 1.0}},
    {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0, "tpu": 4.0}},  # gone
]


def test_a_replica_no_live_node_can_hold_is_refused_naming_the_resource():
    assert unplaceable("t", {"num_cpus": 1, "num_gpus": 1}, NODES) is None  # node 2
    assert unplaceable("t", {"max_concurrency": 4}, NODES) is None  # asks for nothing
    assert unplaceable("t", {"num_gpus": 2}, NODES) == (
        "task t needs num_gpus 2 (the most a node has: 1): no node of the cluster can place it"
    )
    assert "tpu 1 (the most a node has: 0)" in unplaceable("t", {"resources": {"tpu": 1}}, NODES)
    both = unplaceable("t", {"num_cpus": 2, "num_gpus": 1}, NODES)  # each exists, not together
    assert (
        both
        == "task t needs num_cpus 2, num_gpus 1 on one node: no node of the cluster can place it"
    )


def test_a_task_asking_for_a_gpu_on_a_cpu_only_stack_fails_at_once_naming_it(client, tmp_path):
    client.register_task(make_task(tmp_path, "wants_gpu", "return {}", resources={"num_gpus": 1}))
    record = client.run("wants_gpu", {}, timeout=60)  # not the 600 s load timeout
    assert record.status == ExecutionStatus.FAILED
    assert "needs num_gpus 1 (the most a node has: 0)" in record.error.message


# Sizing: every set in one pass, first replicas first, idle ones giving way ------


def replica_set(
    task_id: str, num_cpus: float | None, ready: int = 0, **replicas: int
) -> ReplicaSet:
    record = TaskRecord(
        task_id=task_id,
        version="1",
        sha256="sha",
        size=1,
        object_key="k",
        registered_at=0.0,
        spec={
            "task_id": task_id,
            "name": task_id,
            "version": "1",
            "entry_point": "task.Task",
            "resources": {"num_cpus": num_cpus} if num_cpus is not None else {},
            "replicas": replicas,
        },
    )
    rs = ReplicaSet(record)
    rs.ready = {f"wtm:{task_id}@1#{n}": object() for n in range(ready)}
    rs.next_index = ready
    return rs


def scale_once(tmp_path, monkeypatch, sets, demand: dict[str, int], cpus: float = 2.0):
    """One sizing pass on these sets, with this demand reported; returns the started
    replicas' names (nothing is started on Ray: the start is recorded)."""
    monkeypatch.setattr(controller_module.ray, "cluster_resources", lambda: {"CPU": cpus})
    node = {"Alive": True, "Resources": {"CPU": cpus}}
    monkeypatch.setattr(controller_module.ray, "nodes", lambda: [node])
    controller = Controller(Settings(home=tmp_path))  # no Redis: only its records are read
    controller.sets = {rs.key: rs for rs in sets}
    started: list[str] = []

    def start(rs, why):
        name = f"wtm:{rs.key}#{rs.next_index}"
        rs.next_index += 1
        rs.starting.add(name)
        started.append(name)

    monkeypatch.setattr(controller, "_start_replica", start)

    async def once() -> None:
        for rs in sets:
            rs.changed = asyncio.Event()
        # Each set's demand, and the most of its slots one execution needs at once.
        controller.reports["d"] = (time.monotonic(), {k: (n, n) for k, n in demand.items()})
        await controller._scale()

    asyncio.run(once())
    return started


def test_a_plan_taken_up_starts_every_stage_at_once_within_the_cluster(tmp_path, monkeypatch):
    sets = [
        replica_set("detect", None),
        replica_set("attrs", 0.5),
        replica_set("feats", 0.5),
        replica_set("merge", 0.1),
    ]
    demand = {rs.key: 1 for rs in sets}  # one execution's plan: one slot of each

    started = scale_once(tmp_path, monkeypatch, sets, demand)

    # Three at once on 2 CPUs (detect needs a whole CPU to be placed); merge follows
    # once detect is up, instead of waiting behind the others in Ray's queue.
    assert sorted(started) == ["wtm:attrs@1#0", "wtm:detect@1#0", "wtm:feats@1#0"]


def test_idle_replicas_nothing_needs_make_room_for_a_needed_set(tmp_path, monkeypatch):
    hog = replica_set("hog", num_cpus=0.5, ready=4)  # the node's 2 CPUs, idle
    light = replica_set("light", num_cpus=None, ready=2)  # holds no CPU once placed
    detect = replica_set("detect", num_cpus=None)  # needs 1 CPU to be placed

    started = scale_once(tmp_path, monkeypatch, [hog, light, detect], {detect.key: 1})

    assert started == []  # no room yet: it starts once the drained replicas are gone
    assert len(hog.draining) == 2 and len(hog.ready) == 2  # 2 x 0.5 frees the 1 CPU
    assert light.draining == {}  # draining it would free nothing
    assert detect.blocked and detect.phase() == "placing"
    assert {w.kind for w in hog.stopping_for.values()} == {"room"}


def test_a_needed_set_keeps_its_last_replica_while_another_waits(tmp_path, monkeypatch):
    one = replica_set("one", num_cpus=1.0, ready=1)
    two = replica_set("two", num_cpus=1.0, ready=1)
    three = replica_set("three", num_cpus=1.0)
    demand = {one.key: 1, two.key: 1, three.key: 1}

    started = scale_once(tmp_path, monkeypatch, [one, two, three], demand)

    assert started == [] and one.draining == {} and two.draining == {}
    assert three.blocked and three.last_error is None  # they give way once not needed


def test_a_replica_nothing_can_give_way_to_fails_at_once_naming_the_resource(tmp_path, monkeypatch):
    pinned = replica_set("pinned", num_cpus=1.0, ready=2)
    pinned.pinned = 2  # an operator's choice: never drained for another set
    detect = replica_set("detect", num_cpus=None)

    scale_once(tmp_path, monkeypatch, [pinned, detect], {detect.key: 1})

    assert pinned.draining == {}
    assert detect.last_error == (
        "task detect needs CPU 1 to start a replica; the cluster has too little CPU free "
        "and no replica can give way"
    )


def test_a_parallel_group_of_one_task_gets_a_replica_per_step(tmp_path, monkeypatch):
    pair = replica_set("pair", num_cpus=0.5, max=4)
    started = scale_once(tmp_path, monkeypatch, [pair], {pair.key: 2})
    assert len(started) == 2
