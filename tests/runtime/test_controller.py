"""The controller: the Ray options a task's resources become, what no node can place, and
how idle replicas make room for one that cannot be placed."""

from __future__ import annotations

import asyncio
import time

from orchestrator.models import ExecutionStatus, TaskRecord
from orchestrator.runtime import controller as controller_module
from orchestrator.runtime.controller import Controller, ReplicaSet, actor_options, unplaceable
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


# Making room: idle replicas give way to one that cannot be placed --------------


def replica_set(task_id: str, num_cpus: float | None, ready: int = 0) -> ReplicaSet:
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
        },
    )
    rs = ReplicaSet(record)
    rs.ready = {f"wtm:{task_id}@1#{n}": object() for n in range(ready)}
    return rs


def make_room(tmp_path, monkeypatch, sets: list[ReplicaSet], cluster_cpus: float) -> None:
    """Run one round of the controller's making room, the cluster's CPUs as given and
    Ray's actor table saying the starting replicas are not placed."""
    monkeypatch.setattr(controller_module.ray, "cluster_resources", lambda: {"CPU": cluster_cpus})
    monkeypatch.setattr(controller_module, "_pending", lambda handle: True)  # Ray: not placed
    controller = Controller(Settings(home=tmp_path))  # no Redis: only its records are read
    controller.sets = {rs.key: rs for rs in sets}

    async def once() -> None:
        for rs in sets:
            rs.changed = asyncio.Event()
        await controller._make_room()

    asyncio.run(once())


def waiting_to_be_placed(rs: ReplicaSet) -> str:
    name = f"wtm:{rs.record.task_id}@1#9"
    rs.starting.add(name)
    rs.started_at[name] = time.time() - 10  # well past the grace, and no worker record
    rs.give_up[name] = asyncio.Event()
    rs.handles[name] = object()
    return name


def test_idle_replicas_of_other_sets_are_drained_until_what_they_free_is_enough(
    tmp_path, monkeypatch
):
    hog = replica_set("hog", num_cpus=0.5, ready=4)  # the node's 2 CPUs, idle
    light = replica_set("light", num_cpus=None, ready=2)  # holds no CPU once placed
    detect = replica_set("detect", num_cpus=None)  # needs 1 CPU to be placed
    name = waiting_to_be_placed(detect)

    make_room(tmp_path, monkeypatch, [hog, light, detect], cluster_cpus=2.0)

    assert len(hog.draining) == 2 and len(hog.ready) == 2  # 2 x 0.5 frees the 1 CPU
    assert light.draining == {}  # draining it would free nothing
    assert not detect.give_up[name].is_set()


def test_a_replica_nothing_can_give_way_to_is_given_up_naming_the_resource(tmp_path, monkeypatch):
    pinned = replica_set("pinned", num_cpus=1.0, ready=2)
    pinned.pinned = 2  # an operator's choice: never drained for another set
    detect = replica_set("detect", num_cpus=None)
    name = waiting_to_be_placed(detect)

    make_room(tmp_path, monkeypatch, [pinned, detect], cluster_cpus=2.0)

    assert pinned.draining == {}
    assert detect.give_up[name].is_set()
    assert detect.last_error == (
        "task detect needs CPU 1 to start a replica; the cluster has too little CPU free "
        "and no replica can give way"
    )


def test_a_replica_placed_and_still_starting_is_left_to_start(tmp_path, monkeypatch):
    # One GPU, taken by this very replica while its process starts: nothing is short.
    gpu = replica_set("gpu_task", num_cpus=None)
    gpu.record.spec.resources.num_gpus = 1
    other = replica_set("other", num_cpus=0.5, ready=2)
    name = waiting_to_be_placed(gpu)
    monkeypatch.setattr(controller_module.ray, "cluster_resources", lambda: {"CPU": 2, "GPU": 1})
    monkeypatch.setattr(controller_module, "_pending", lambda handle: True)
    controller = Controller(Settings(home=tmp_path))
    controller.sets = {rs.key: rs for rs in (gpu, other)}

    async def once() -> None:
        for rs in (gpu, other):
            rs.changed = asyncio.Event()
        await controller._make_room()

    asyncio.run(once())

    assert not gpu.give_up[name].is_set() and gpu.last_error is None
    assert other.draining == {}
