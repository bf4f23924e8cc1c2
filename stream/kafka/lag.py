"""Consumer lag of a consumer group, per input partition, for the ``portrait_consumer_lag`` gauge.

``lag = log end offset - committed offset``. A partition the group has never committed on counts
its whole log (``end - earliest``) as lag, since a new group starts from the earliest offset
(``consumer_auto_offset_reset="earliest"``). Only Kafka metadata is read; no message is fetched
and the group's membership is not touched (the clients used here have no group id).

Usage from a timer (every worker may report: dashboards and alerts take ``max by (topic,
partition)`` so replicas reporting the same group do not double-count)::

    reader = LagReader(settings.bootstrap_servers(), settings.app_id, Topics(settings.topic_prefix).inputs)
    await reader.start()
    ...
    record_lag(metrics, await reader.read())
    ...
    await reader.close()

or one-shot: ``await consumer_lag(bootstrap, group_id, topics)``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from stream.metrics import Metrics

Lag = dict[tuple[str, int], int]


class LagReader:
    """Long-lived admin + metadata clients so a timer does not reconnect every tick."""

    def __init__(
        self,
        bootstrap_servers: str,
        group_id: str,
        topics: Iterable[str],
        timeout_s: float = 10.0,
        client_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.client_kwargs = client_kwargs or {}
        self.bootstrap_servers = bootstrap_servers
        self.group_id = group_id
        self.topics = tuple(dict.fromkeys(topics))
        self.timeout_ms = int(timeout_s * 1000)
        self._admin: Any = None
        self._consumer: Any = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers, request_timeout_ms=self.timeout_ms, **self.client_kwargs
        )
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            request_timeout_ms=self.timeout_ms,
            **self.client_kwargs,
        )
        try:
            await admin.start()
            await consumer.start()
        except BaseException:
            # a client that failed to start still holds sockets (and warns "Unclosed" when collected)
            await consumer.stop()
            await admin.close()
            raise
        self._admin, self._consumer = admin, consumer

    async def close(self) -> None:
        admin, consumer, self._admin, self._consumer = self._admin, self._consumer, None, None
        try:
            if consumer is not None:
                await consumer.stop()
        finally:
            if admin is not None:
                await admin.close()

    @property
    def started(self) -> bool:
        return self._admin is not None and self._consumer is not None

    async def read(self) -> Lag:
        """``{(topic, partition): lag}`` for every partition of ``topics`` (missing topics are skipped)."""
        from aiokafka import TopicPartition

        if self._admin is None or self._consumer is None:
            raise RuntimeError("LagReader.read() before start()")
        partitions = [TopicPartition(t, p) for t, p in await self._partitions()]
        if not partitions:
            return {}
        committed = await self._admin.list_consumer_group_offsets(self.group_id, partitions=partitions)
        # end_offsets/beginning_offsets can block while a partition has no leader: bound them.
        ends = await asyncio.wait_for(self._consumer.end_offsets(partitions), self.timeout_ms / 1000)
        uncommitted = [
            tp for tp in partitions if tp not in committed or committed[tp] is None or committed[tp].offset < 0
        ]
        starts = (
            await asyncio.wait_for(self._consumer.beginning_offsets(uncommitted), self.timeout_ms / 1000)
            if uncommitted
            else {}
        )
        lag: Lag = {}
        for tp in partitions:
            end = int(ends[tp])
            done = int(starts[tp]) if tp in starts else int(committed[tp].offset)
            lag[(tp.topic, tp.partition)] = max(0, end - done)
        return lag

    async def _partitions(self) -> list[tuple[str, int]]:
        described = await self._admin.describe_topics(list(self.topics))
        found: list[tuple[str, int]] = []
        for topic in described:
            if topic.get("error_code"):  # e.g. unknown topic: nothing to report yet
                continue
            for part in topic.get("partitions", ()):
                found.append((topic["topic"], int(part["partition"])))
        return sorted(found)


async def consumer_lag(bootstrap_servers: str, group_id: str, topics: Iterable[str], timeout_s: float = 10.0) -> Lag:
    """One-shot :meth:`LagReader.read` (connects, reads, disconnects)."""
    reader = LagReader(bootstrap_servers, group_id, topics, timeout_s)
    await reader.start()
    try:
        return await reader.read()
    finally:
        await reader.close()


def record_lag(metrics: Metrics, lag: Lag) -> None:
    """Set ``portrait_consumer_lag{topic, partition}`` (labels bounded by topics x partitions)."""
    for (topic, partition), value in lag.items():
        metrics.consumer_lag.labels(topic, str(partition)).set(value)
