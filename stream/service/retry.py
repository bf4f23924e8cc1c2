"""Redis calls retried until they succeed: an outage turns health red but loses nothing.

Connection errors, timeouts, OS errors and a cluster's failover answers are retried forever with
exponential backoff (0.2 s, doubling, at most 10 s), by tenacity; anything else (a bug, a script
error) propagates at once.
While a call keeps failing the worker reports unhealthy (``/healthz`` answers 503 with the error);
each call's latency and errors are measured per operation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.exceptions import (
    ClusterError,
    ConnectionError as RedisConnectionError,
    ReadOnlyError,
    SlotNotCoveredError,
    TimeoutError as RedisTimeoutError,
    TryAgainError,
)
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_never, wait_exponential

from stream.metrics import Metrics
from stream.storage.exceptions import ReplicationLag

log = logging.getLogger(__name__)
T = TypeVar("T")

# a Redis Cluster failing over answers CLUSTERDOWN / TRYAGAIN, a demoted master READONLY, and a
# slot may be briefly unserved: all pass once the replica is promoted. MOVED/ASK are followed by
# the cluster client (and by stream.storage.client for the scripts); a slot that stays half-moved
# longer than the client follows it ends in TRYAGAIN or ClusterError "TTL exhausted" (ClusterError
# also covers CLUSTERDOWN). The store's ReplicationLag (WAIT not met) is retried the same way.
RETRIED = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ClusterError,
    TryAgainError,
    ReadOnlyError,
    SlotNotCoveredError,
    ReplicationLag,
)
FIRST_DELAY_S = 0.2
MAX_DELAY_S = 10.0


class RedisRetry:
    """Runs store calls until they succeed and keeps the worker's health."""

    def __init__(self, metrics: Metrics, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.metrics = metrics
        self.sleep = sleep  # how backoff waits (a test passes one that records instead)
        self.healthy = True
        self.last_error: str | None = None

    async def __call__(self, op: str, action: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await action(*args)``, retried through Redis outages; ``op`` labels the metrics."""

        def failed(attempt: RetryCallState) -> None:
            exc = attempt.outcome.exception() if attempt.outcome is not None else None
            self.metrics.redis_errors.labels(op).inc()
            self.healthy, self.last_error = False, f"{op}: {exc}"
            log.warning("redis %s failed (%s); retrying in %.1fs", op, exc, attempt.upcoming_sleep)

        async def timed() -> T:
            started = time.perf_counter()
            result = await action(*args)
            self.metrics.redis_latency.labels(op).observe(time.perf_counter() - started)
            return result

        # one retrying object per call: tenacity keeps its per-call state on it
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(RETRIED),
            wait=wait_exponential(multiplier=FIRST_DELAY_S, max=MAX_DELAY_S),
            stop=stop_never,
            before_sleep=failed,
            sleep=self.sleep,
            reraise=True,
        )
        result: T = await retrying(timed)
        if not self.healthy:
            log.info("redis reachable again")
        self.healthy, self.last_error = True, None
        return result
