"""Redis calls are retried through outages (stream.service.retry): backoff, health, metrics."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError, TimeoutError as RedisTimeoutError

from stream.metrics import Metrics
from stream.service.retry import RedisRetry


def _sample(metrics: Metrics, name: str, op: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"op": op})


def test_an_outage_is_retried_with_capped_backoff_and_health_red_until_it_ends() -> None:
    metrics = Metrics()
    waits: list[float] = []
    health: list[tuple[bool, str | None]] = []
    retry: RedisRetry

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        health.append((retry.healthy, retry.last_error))

    retry = RedisRetry(metrics, sleep=sleep)
    failures = [RedisConnectionError("refused"), RedisTimeoutError("slow"), OSError("reset")] + [
        RedisConnectionError("refused")
    ] * 5

    async def load(uid: str) -> str:
        if failures:
            raise failures.pop(0)
        return f"state of {uid}"

    assert asyncio.run(retry("load", load, "u1")) == "state of u1"
    # 0.2 s doubling: 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, then capped at 10 s
    assert waits == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0])
    assert health[0] == (False, "load: refused") and health[2] == (False, "load: reset")
    assert (retry.healthy, retry.last_error) == (True, None)
    assert _sample(metrics, "portrait_redis_errors_total", "load") == 8
    assert _sample(metrics, "portrait_redis_command_seconds_count", "load") == 1


def test_anything_but_an_outage_propagates_at_once() -> None:
    metrics = Metrics()
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async def write() -> None:
        raise ValueError("script error")

    retry = RedisRetry(metrics, sleep=sleep)
    with pytest.raises(ValueError, match="script error"):
        asyncio.run(retry("write", write))
    assert waits == [] and retry.healthy
    assert _sample(metrics, "portrait_redis_errors_total", "write") is None
