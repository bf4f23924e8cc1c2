"""Trigger delivery: outbox entries (written atomically with the state that decided them) are
produced to their topics, then removed.

At least once: entries of a sender that died unacknowledged are claimed by another after
``OUTBOX_STALE_MS``; consumers dedupe by the deterministic ``trigger_id``. A trigger decided before
its user was erased is never sent (counted as suppressed, reason ``erased``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable

import orjson

from stream.metrics import Metrics
from stream.service.retry import RedisRetry
from stream.storage.store import OutboxEntry, Store

SendTriggers = Callable[[list[OutboxEntry]], Awaitable[None]]
OUTBOX_BATCH = 500
OUTBOX_STALE_MS = 30_000


class Outbox:
    def __init__(
        self,
        store: Store,
        retry: RedisRetry,
        metrics: Metrics,
        send: SendTriggers | None,
        wall_clock: Callable[[], float],
        measure_latency: bool,
    ) -> None:
        """``measure_latency``: observe event-to-trigger latency (wall-clock mode only: in event
        time the events' timestamps are not comparable with the wall clock)."""
        self.store, self.retry, self.metrics, self.send = store, retry, metrics, send
        self.wall_clock = wall_clock
        self.measure_latency = measure_latency
        self.sender_id = f"{socket.gethostname()}-{os.getpid()}"

    async def deliver(self) -> int:
        """Deliver everything pending for this sender (and stale entries of others); returns how many."""
        if self.send is None:
            return 0
        delivered = 0
        while True:
            entries = await self.retry("outbox", self.store.read_outbox, self.sender_id, OUTBOX_BATCH, OUTBOX_STALE_MS)
            if not entries:
                break
            erased = await self.retry("outbox", self.store.erased, list({e.key for e in entries}))
            if erased:  # decided before the user was erased: never sent after it
                for e in entries:
                    if e.key in erased:
                        rule = str(orjson.loads(e.value).get("rule_id", "unknown"))
                        self.metrics.triggers_suppressed.labels(rule, "erased").inc()
            await self.send([e for e in entries if e.key not in erased])
            await self.retry("outbox", self.store.ack_outbox, [e.id for e in entries])
            wall = self.wall_clock()
            for entry in entries:
                self.metrics.triggers_delivered.labels(entry.topic).inc()
                if self.measure_latency:
                    event_time = float(orjson.loads(entry.value).get("event_time", wall))
                    self.metrics.trigger_latency.observe(max(0.0, wall - event_time))
            delivered += len(entries)
            if len(entries) < OUTBOX_BATCH:
                break
        return delivered

    async def pending(self) -> int:
        return await self.retry("outbox", self.store.outbox_pending)
