"""Errors of the store."""

from __future__ import annotations

from redis.exceptions import RedisError


class ReplicationLag(RedisError):
    """A batch's writes did not reach ``PORTRAIT_REDIS_WAIT_REPLICAS`` replicas in time (``WAIT``):
    the batch must not be acknowledged yet; retrying it re-checks (its write is then a no-op)."""
