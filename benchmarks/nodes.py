"""Bench case 5, nodes: the same CPU-bound burst on a one-node and a two-node
local Ray cluster, with the task's default replica settings.

Run by ``workloads.py`` in its own process (a process is the driver of one
cluster), once per cluster shape:

    .venv/bin/python benchmarks/nodes.py NODES CPUS_PER_NODE SPIN_MS JOBS

Each node is a real raylet started by ``ray.cluster_utils.Cluster``; our stack
(redis-server, controller, dispatcher) runs on the head. The task reserves one
CPU per replica and says nothing about replicas, so the controller scales it to
what the cluster holds: one replica per node here. Prints one JSON line: jobs/s
and the nodes the jobs ran on.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator import Client, stack  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402
from orchestrator.testing import write_task  # noqa: E402


def spin_body(spin_ms: int) -> str:
    return f"""
import time
import ray
end = time.process_time() + {spin_ms / 1000}
while time.process_time() < end:
    pass
return {{"node": ray.get_runtime_context().get_node_id()}}
"""


def measure(nodes: int, cpus: int, spin_ms: int, jobs: int) -> dict:
    home = Path(tempfile.mkdtemp(prefix="wtmn-", dir="/tmp"))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=cpus)
    cluster.wait_for_nodes()
    settings = Settings(home=home / "wtm", ray={"address": cluster.address})
    try:
        stack.up(settings)
        client = Client(stack.resolve(settings))
        folder = write_task(home, "spin", spin_body(spin_ms), resources={"num_cpus": 1})
        client.register_task(folder)
        # Warm up: a burst that makes the controller scale out to every node.
        for execution_id in [client.submit("spin", {}) for _ in range(jobs)]:
            client.wait(execution_id, timeout=300)
        started = time.perf_counter()
        ids = [client.submit("spin", {}) for _ in range(jobs)]
        records = [client.wait(execution_id, timeout=300) for execution_id in ids]
        seconds = time.perf_counter() - started
        failed = [r.execution_id for r in records if r.status.value != "succeeded"]
        if failed:
            raise SystemExit(f"{len(failed)} jobs did not succeed, e.g. {failed[0]}")
        ran_on = Counter((r.result or {}).get("node") for r in records)
        client.close()
        return {"nodes": nodes, "jobs_per_s": jobs / seconds, "ran_on": sorted(ran_on.values())}
    finally:
        stack.down(settings)
        ray.shutdown()  # a driver may not remove the node it is connected to
        cluster.shutdown()


if __name__ == "__main__":
    nodes, cpus, spin_ms, jobs = (int(a) for a in sys.argv[1:5])
    print(json.dumps(measure(nodes, cpus, spin_ms, jobs)))
