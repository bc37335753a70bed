"""Every Redis key, stream, channel, bucket, object key and collection name."""

from __future__ import annotations

# Redis -------------------------------------------------------------------
PREFIX = "wtm"
CONSUMER_GROUP = "wtm-dispatchers"
QUEUES_SET = f"{PREFIX}:queues"  # every queue name a job was ever sent to
DEAD_LETTERS = f"{PREFIX}:dead"  # stream of jobs that kept failing delivery

#: Lanes in the order a dispatcher serves them.
LANES = ("high", "normal", "low")


def lane_for(priority: int) -> str:
    """Priority 1..10 (the seed's scale) to a lane: 7+ high, 4..6 normal."""
    if priority >= 7:
        return "high"
    if priority >= 4:
        return "normal"
    return "low"


def stream(queue: str, lane: str) -> str:
    """The stream one queue's lane lives in."""
    return f"{PREFIX}:q:{queue}:{lane}"


def events(execution_id: str) -> str:
    """The pub/sub channel an execution's state changes are published on."""
    return f"{PREFIX}:events:{execution_id}"


def cancel_flag(execution_id: str) -> str:
    """Set when a user cancels a queued or running execution."""
    return f"{PREFIX}:cancel:{execution_id}"


# Ray ---------------------------------------------------------------------
def dispatcher_name(n: int) -> str:
    return f"{PREFIX}:dispatcher#{n}"


CONTROLLER = f"{PREFIX}:controller"


def set_key(task_id: str, version: str) -> str:
    """How a replica set (one task version) is named between components."""
    return f"{task_id}@{version}"


def replica_name(task_id: str, version: str, n: int) -> str:
    """Named detached actor of one replica, as the dashboard shows it."""
    return f"{PREFIX}:{task_id}@{version}#{n}"


# Object store --------------------------------------------------------------
TASKS_BUCKET = "ai-tasks"
PIPELINES_BUCKET = "ai-pipelines"
DATA_BUCKET = "ai-data"
BUCKETS = (TASKS_BUCKET, PIPELINES_BUCKET, DATA_BUCKET)


def package_key(task_id: str, version: str, sha256: str) -> str:
    return f"tasks/{task_id}/{version}/{sha256}.tar.gz"


def input_key(sha256: str, filename: str) -> str:
    """A file from an execution's input, content-addressed so uploads dedupe."""
    return f"inputs/{sha256}/{filename}"


def cache_key(task_id: str, digest: str) -> str:
    """A cached step output: the digest covers the package sha256 and the input."""
    return f"cache/{task_id}/{digest}.json"


def step_output_key(execution_id: str, step_id: str) -> str:
    """A finished pipeline step's output, kept so a claimed job resumes after it."""
    return f"steps/{execution_id}/{step_id}.json"


def result_key(execution_id: str) -> str:
    return f"results/{execution_id}.json"


# Records -------------------------------------------------------------------
TASKS = "tasks"
PIPELINES = "pipelines"
EXECUTIONS = "executions"
WORKERS = "workers"


def dispatcher_alive(consumer: str) -> str:
    """Expiring key a live dispatcher refreshes; `wtm health` counts them."""
    return f"{PREFIX}:alive:dispatcher:{consumer}"
