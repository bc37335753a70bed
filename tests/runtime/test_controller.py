"""The controller: the Ray options a task's resources become, and what no node can place."""

from __future__ import annotations

from orchestrator.models import ExecutionStatus
from orchestrator.runtime.controller import actor_options, unplaceable
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
