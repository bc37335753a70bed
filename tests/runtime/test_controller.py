"""The controller's pure parts: the Ray options a task's resources become."""

from __future__ import annotations

from orchestrator.runtime.controller import actor_options
from orchestrator.taskspec import TaskSpec


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
