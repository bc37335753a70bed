"""One error tree for the whole system.

Every error a user can cause or meet derives from :class:`OrchestratorError`.
The CLI turns these into one-line messages and a non-zero exit code; anything
else that escapes is a bug.
"""

from __future__ import annotations


class OrchestratorError(Exception):
    """Root of every error this package raises on purpose."""

    exit_code = 1


class ConfigError(OrchestratorError):
    """Raised when settings or a config file are malformed."""

    exit_code = 2


class InputError(OrchestratorError):
    """Raised when user input (INPUT argument, file, JSON) is malformed."""

    exit_code = 2


class SpecError(OrchestratorError):
    """Raised when a task.json or pipeline file breaks its schema."""

    exit_code = 2


class NotFoundError(OrchestratorError):
    """Raised when a task, version, pipeline or execution does not exist."""

    exit_code = 3


class ConflictError(OrchestratorError):
    """Raised when a write would overwrite something that must not change."""

    exit_code = 4


class IllegalTransition(ConflictError):
    """Raised when a status change is not one the lifecycle allows (a bug, or a race lost)."""


class PackageError(OrchestratorError):
    """Raised when a task package cannot be built, verified, extracted or loaded."""


class StackError(OrchestratorError):
    """Raised when the embedded stack cannot start, stop or be reached."""


class EnqueueError(StackError):
    """Raised when an execution could not be added to its stream (Redis failed); nothing
    of it is kept."""


class StoreUnavailable(StackError):
    """Raised when Redis or the records store cannot be reached or is locked right now.

    Transient by nature: the dispatcher retries it in place; a client reports it.
    """


class ReplicaUnavailable(OrchestratorError):
    """Raised when no replica of a task could start (it cannot be placed, or failed to load)."""


class TaskError(OrchestratorError):
    """Base of errors raised by task code; carries whether a retry may help."""

    retryable = False


class RetryableError(TaskError):
    """Raised by a task when the same call may succeed if tried again."""

    retryable = True


class FatalError(TaskError):
    """Raised by a task when retrying cannot help."""


class ValidationError(FatalError):
    """Raised when a task's input or output breaks its JSON Schema."""

    exit_code = 2


class PathNotFound(FatalError):
    """Raised when a mapping's JSONPath names a field or index its document does not have."""


class TaskTimeoutError(RetryableError):
    """Raised when a call runs past its task's timeout (its replica is killed)."""


class MemoryLimitExceeded(FatalError):
    """Raised when a replica's memory passes its task's ``resources.memory`` during a call
    (the replica is replaced)."""


class Cancelled(OrchestratorError):
    """Raised where a cancelled execution would start a step; its type is recorded as the error."""


class EndedElsewhere(OrchestratorError):
    """Raised in a dispatcher when a record it writes was ended by someone else (a cancel
    while the execution was still queued): its run stops and writes nothing more."""


class DeadLettered(OrchestratorError):
    """Recorded as the error of a job that kept failing delivery and went to dead letters."""


class Interrupted(OrchestratorError):
    """Recorded as the error of an execution a backup caught queued or running: a backup
    holds no queue entries, so `wtm restore` restores it failed (retry runs it again)."""


class BackupError(InputError):
    """Raised when a backup folder cannot be written, or a folder to restore is not a whole,
    intact backup (no manifest, a file missing or changed, an unknown format version)."""


class ExecutionFailed(OrchestratorError):
    """Raised by a waiting client when the execution ended in failure."""

    def __init__(self, record):  # record: ExecutionRecord
        error = record.error
        said = f": {error.type}: {error.message}" if error else ""
        super().__init__(f"execution {record.execution_id} {record.status.value}{said}")
        self.record = record


class WaitTimeout(OrchestratorError, TimeoutError):
    """Raised when a wait's timeout runs out before the execution ended.

    Carries ``record``: the execution as it was when the wait gave up (or None
    when waiting on many).
    """

    def __init__(self, message: str, record=None):  # record: ExecutionRecord | None
        super().__init__(message)
        self.record = record


class Detached(KeyboardInterrupt):
    """Raised when a wait is interrupted (Ctrl-C): the execution goes on without the waiter.

    Carries ``execution_id``, so the caller can say how to follow or cancel it.
    """

    def __init__(self, execution_id: str):
        super().__init__(execution_id)
        self.execution_id = execution_id
