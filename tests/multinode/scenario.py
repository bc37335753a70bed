"""Two-node scenario, run in its own process (a process is a driver of one cluster).

Starts a head and a worker node with ``ray.cluster_utils.Cluster``, puts our
stack on it (redis-server, controller, dispatcher), and prints what a test
asserts on as one JSON line.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from orchestrator import Client, stack
from orchestrator.settings import Settings

TASK = """
import ray
from orchestrator import SimpleTask
from orchestrator.images import image_from_input


class Task(SimpleTask):
    def process(self, input_data):
        image = image_from_input(input_data, self.objects)
        return {"node": ray.get_runtime_context().get_node_id(), "shape": list(image.shape)}
"""


def main(home: Path, image: Path) -> None:
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 2, "resources": {"head_only": 1}}
    )
    special = cluster.add_node(num_cpus=1, resources={"special_hw": 1})
    cluster.wait_for_nodes()
    settings = Settings(home=home, ray={"address": cluster.address})
    try:
        stack.up(settings)
        client = Client(stack.resolve(settings))
        folder = home / "pkg" / "on_special"
        folder.mkdir(parents=True)
        (folder / "task.py").write_text(TASK)
        spec = {
            "task_id": "on_special",
            "name": "on special",
            "version": "1",
            "entry_point": "task.Task",
            "resources": {"custom": {"special_hw": 0.5}},
        }
        (folder / "task.json").write_text(json.dumps(spec))
        client.register_task(folder)
        # The client's copy of the file is gone before the replica runs: only
        # the object store has it.
        local = home / "submitted.jpg"
        shutil.copy(image, local)
        execution_id = client.submit("on_special", {"image_path": str(local)})
        local.unlink()
        record = client.wait(execution_id, timeout=120)
        print(
            json.dumps(
                {
                    "status": record.status.value,
                    "error": record.error.model_dump() if record.error else None,
                    "ran_on": (record.result or {}).get("node"),
                    "special_node": special.node_id,
                    "head_node": cluster.head_node.node_id,
                    "input": record.input,
                    "shape": (record.result or {}).get("shape"),
                }
            )
        )
    finally:
        stack.down(settings)
        ray.shutdown()  # a driver may not remove the node it is connected to
        cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
