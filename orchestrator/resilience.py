"""Riding out faults of the stores: what counts as transient, and how to wait it out.

Redis restarting, a MongoDB failover or a locked SQLite file are transient:
the dispatcher retries the operation in place, with backoff, for as long as it
takes (:func:`persist`), rather than abandon the job it holds. Redis clients
made here check a pooled connection before reusing it after a pause, and retry
a command once on a fresh connection, so connections left stale by a restart
never fail a command.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from orchestrator.errors import StoreUnavailable

T = TypeVar("T")

#: Errors that say "not now" rather than "never": the same call may succeed later.
TRANSIENT: tuple[type[BaseException], ...] = (
    redis.ConnectionError,  # includes BusyLoadingError: Redis reading its AOF back
    redis.TimeoutError,
    StoreUnavailable,
)

HEALTH_CHECK_S = 5  # a connection idle this long is PINGed before it is used again


def transient(error: BaseException) -> bool:
    return isinstance(error, TRANSIENT)


async def persist(
    op: Callable[[], Awaitable[T]],
    what: str,
    log: logging.Logger,
    *,
    base_s: float = 0.1,
    cap_s: float = 5.0,
) -> T:
    """Run ``op`` until it succeeds, backing off while its errors are transient.

    Any other error is raised at once. There is no deadline: the caller holds a
    job that must reach its record, and gives up only by being cancelled.
    """
    failures = 0
    while True:
        try:
            result = await op()
        except TRANSIENT as e:
            failures += 1
            if failures == 1:
                log.warning(
                    "%s failed (%s: %s); retrying until it succeeds", what, type(e).__name__, e
                )
            delay = min(cap_s, base_s * 2 ** min(failures, 16))
            await asyncio.sleep(delay / 2 + random.uniform(0, delay / 2))
            continue
        if failures:
            log.warning("%s succeeded after %d failed tries", what, failures)
        return result


def _retry() -> Retry:
    return Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3)


def _async_retry() -> AsyncRetry:
    return AsyncRetry(ExponentialBackoff(cap=1.0, base=0.05), retries=3)


def redis_client(url: str) -> redis.Redis:
    """A Redis client whose pooled connections survive a server restart."""
    return redis.Redis.from_url(
        url,
        health_check_interval=HEALTH_CHECK_S,
        retry=_retry(),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


def async_redis(
    url: str, max_connections: int | None = None, timeout_s: float | None = None
) -> aioredis.Redis:
    """The asyncio twin; with ``max_connections`` callers wait for a free connection,
    with ``timeout_s`` a command that gets no answer in time fails (and is retried)."""
    options = dict(
        health_check_interval=HEALTH_CHECK_S,
        retry=_async_retry(),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
    )
    if max_connections is None:
        return aioredis.from_url(url, **options)
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=None, **options
    )
    return aioredis.Redis(connection_pool=pool)
