"""The tests' one poll loop: wait for something a user would see, or fail naming it."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float = 30.0, what: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy, and return that.

    A wait, not a timing assertion: ``timeout`` only bounds how long a broken
    run hangs before it fails with ``what`` in the message.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


def ghost_takes(redis_url: str, job, deliveries: int = 1) -> str:
    """Add a job to its stream and let a consumer that then dies take it ``deliveries``
    times without acknowledging it; returns the entry id.

    The queue is announced to dispatchers only afterwards, so none reads it first.
    """
    import contextlib

    import redis

    from orchestrator import keys

    r = redis.Redis.from_url(redis_url)
    with contextlib.suppress(redis.ResponseError):  # a dispatcher made the group first
        r.xgroup_create(job.stream, keys.CONSUMER_GROUP, id="0", mkstream=True)
    entry = r.xadd(job.stream, job.encode())
    r.xreadgroup(keys.CONSUMER_GROUP, "ghost", {job.stream: ">"}, count=1)  # delivery 1
    for _ in range(deliveries - 1):
        r.xclaim(job.stream, keys.CONSUMER_GROUP, "ghost", 0, [entry])  # one more each
    r.sadd(keys.QUEUES_SET, job.queue)
    return entry.decode()


@contextlib.contextmanager
def private_redis(home: Path) -> Iterator[str]:
    """A redis-server of its own under ``home`` (its URL), stopped on exit: for tests
    whose streams the session's dispatchers must not see."""
    from orchestrator.settings import Settings
    from orchestrator.stack import services
    from orchestrator.stack.state import StackState

    st = StackState(home=str(home), started_at=time.time())
    services.start_redis(Settings(home=home), st)
    try:
        yield st.redis_url
    finally:
        services.stop(st)
