"""Every Redis key, stream, channel, bucket, object key and collection name."""

from __future__ import annotations

# Redis -------------------------------------------------------------------
PREFIX = "wtm"
CONSUMER_GROUP = f"{PREFIX}-dispatchers"
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


def idempotency(key: str) -> str:
    """Holds the execution id submitted under a caller's idempotency key (expiring)."""
    return f"{PREFIX}:key:{key}"


def dispatcher_alive(consumer: str) -> str:
    """Expiring key a live dispatcher refreshes; `wtm health` counts them."""
    return f"{PREFIX}:alive:dispatcher:{consumer}"


#: Expiring key the controller refreshes with its replica sets; `wtm health` reads it.
CONTROLLER_ALIVE = f"{PREFIX}:alive:controller"
# Every replica start and stop, with why (`wtm worker status`): the newest REPLICA_EVENTS_KEPT.
REPLICA_EVENTS = f"{PREFIX}:replica-events"
REPLICA_EVENTS_KEPT = 1000


# Ray (named actors, all in the settings' namespace) --------------------------
CONTROLLER = f"{PREFIX}:controller"
_DISPATCHER = f"{PREFIX}:dispatcher"


def dispatcher_name(n: int) -> str:
    """One of the stack's own dispatchers (``settings.dispatcher.count`` of them)."""
    return f"{_DISPATCHER}#{n}"


def worker_dispatcher_name(worker_id: str) -> str:
    """The dispatcher `wtm worker start --queues` adds, named by the seed's worker_id."""
    return f"{_DISPATCHER}@{worker_id}"


def is_worker_dispatcher(name: str) -> bool:
    return name.startswith(f"{_DISPATCHER}@")


def is_ours(actor_name: str) -> bool:
    """Whether a named actor is one of this system's (controller, dispatcher, replica)."""
    return actor_name.startswith(f"{PREFIX}:")


def set_key(task_id: str, version: str) -> str:
    """How a replica set (one task version) is named between components."""
    return f"{task_id}@{version}"


def parse_set_key(key: str) -> tuple[str, str]:
    """The (task_id, version) a set key names (task ids hold no ``@``)."""
    task_id, version = key.split("@", 1)
    return task_id, version


def replica_prefix(task_id: str, version: str) -> str:
    """What every replica name of one set starts with."""
    return f"{PREFIX}:{task_id}@{version}#"


def replica_name(task_id: str, version: str, n: int) -> str:
    """Named detached actor of one replica, as the dashboard shows it."""
    return f"{replica_prefix(task_id, version)}{n}"


def replica_index(name: str) -> int:
    """The ``n`` of ``wtm:<task>@<version>#<n>``."""
    return int(name.rsplit("#", 1)[1])


def is_replica(name: str) -> bool:
    """Whether a named actor is a replica (not the controller or a dispatcher)."""
    return is_ours(name) and "@" in name and "#" in name and not name.startswith(_DISPATCHER)


def replica_set_of(name: str) -> tuple[str, str]:
    """The (task_id, version) of a replica's name."""
    task_id, version = name.removeprefix(f"{PREFIX}:").rsplit("#", 1)[0].split("@", 1)
    return task_id, version


# Object store --------------------------------------------------------------
TASKS_BUCKET = "ai-tasks"
PIPELINES_BUCKET = "ai-pipelines"
DATA_BUCKET = "ai-data"
BUCKETS = (TASKS_BUCKET, PIPELINES_BUCKET, DATA_BUCKET)


def package_key(task_id: str, version: str, sha256: str) -> str:
    """A task package archive, content-addressed within its version."""
    return f"tasks/{task_id}/{version}/{sha256}.tar.gz"


def pipeline_key(pipeline_id: str, version: str, sha256: str) -> str:
    """A pipeline definition as registered, content-addressed within its version."""
    return f"pipelines/{pipeline_id}/{version}/{sha256}.json"


def input_key(sha256: str, filename: str) -> str:
    """A file from an execution's input, content-addressed so uploads dedupe."""
    return f"inputs/{sha256}/{filename}"


def input_document_key(sha256: str) -> str:
    """An input document too large to travel inline, content-addressed."""
    return f"inputs/{sha256}/input.json"


def data_uri(key: str) -> str:
    """How records and jobs name an object of the data bucket, on any store."""
    return f"s3://{DATA_BUCKET}/{key}"


def data_key(uri: str) -> str:
    """The key of a :func:`data_uri`."""
    return uri.removeprefix(f"s3://{DATA_BUCKET}/")


def cache_key(task_id: str, digest: str) -> str:
    """A cached step output: the digest covers the package sha256 and the input."""
    return f"cache/{task_id}/{digest}.json"


def step_output_key(execution_id: str, step_id: str) -> str:
    """A finished pipeline step's output, kept so a claimed job resumes after it."""
    return f"steps/{execution_id}/{step_id}.json"


def result_key(execution_id: str) -> str:
    return f"results/{execution_id}.json"


def result_key_of(result_ref: str) -> str:
    """The key of a stored result from the URI its record holds (``s3://`` or ``file://``)."""
    return "results/" + result_ref.rsplit("/results/", 1)[1]


# Records -------------------------------------------------------------------
TASKS = "tasks"
PIPELINES = "pipelines"
EXECUTIONS = "executions"
WORKERS = "workers"


# Backups (the folder `wtm backup` writes) ---------------------------------
BACKUP_MANIFEST = "manifest.json"  # written last: a folder without it is no backup


def backup_records_file(kind: str) -> str:
    """One record kind (``TASKS``...) as JSON lines, inside a backup folder."""
    return f"records/{kind}.jsonl"


def backup_object_file(bucket: str, key: str) -> str:
    """One object, byte for byte, inside a backup folder."""
    return f"objects/{bucket}/{key}"
