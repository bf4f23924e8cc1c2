"""Time-driven path: re-evaluate due users and refresh population thresholds."""

from __future__ import annotations

import logging
import time
from typing import Any

from faust.types import TP

from stream.contracts.topics import Topics
from stream.service.processor import Processor
from stream.settings import Settings
from stream.storage.store import Ends

log = logging.getLogger(__name__)
# The due and outbox gauges read every shard (~4 commands per shard): at most this often, not
# every tick (an idle worker on 128 shards read ~500 commands a second for them).
OBSERVE_S = 5.0


def partition_counts(client: Any, topics: tuple[str, ...]) -> list[int | None]:
    """How many partitions each topic has, from the Kafka client's cluster metadata (None: not
    known yet). Not Faust's ``Consumer.topic_partitions``: it reads the group coordinator's
    metadata snapshot, which only the group's leader fills, so on every other worker the
    watermark never got end offsets and fell back to the stale CAUGHT flags (issue 11 §4)."""
    return [len(parts) if (parts := client.partitions_for_topic(t)) else None for t in topics]


async def input_ends(app: Any, topics: tuple[str, ...]) -> Ends | None:
    """(log start, end offset) of every partition of the input topics, asked of the broker now
    (not the consumer's last fetch); None while the consumer does not know the topics yet."""
    try:
        consumer = app.consumer
        counts = partition_counts(consumer._thread._ensure_consumer(), topics)
    except Exception:  # no consumer thread yet
        return None
    if not all(counts):
        return None
    tps = [TP(t, p) for t, n in zip(topics, counts, strict=True) for p in range(n or 0)]
    begins = await consumer.earliest_offsets(*tps)
    ends = await consumer.highwaters(*tps)
    return {f"{tp.topic}/{tp.partition}": (int(begins[tp]), int(ends[tp])) for tp in tps}


def register_timers(app: Any, processor: Processor, settings: Settings) -> None:
    inputs = Topics(settings.topic_prefix).inputs
    # the event-time watermark checks the stored progress against the broker's end offsets
    processor.input_ends = lambda: input_ends(app, inputs)
    observed_at = [float("-inf")]  # monotonic time of the last read of the gauges

    async def reevaluate() -> None:
        # Drain everything due now, a bounded batch at a time, so a clock jump catches up at once.
        try:
            mark: float | None = None  # wall clock: each claim reads the time itself
            if settings.clock == "event":
                # one watermark per tick (it stays safe while the drain runs)
                mark = await processor.now()
                # users whose scores the new thresholds move are made due, and re-scored below
                await processor.refresh_rfm_on_tick(mark)
            await processor.drain_due(mark)
            if mark is not None:
                await processor.freshen(await processor.now())
            if time.monotonic() - observed_at[0] >= OBSERVE_S:
                observed_at[0] = time.monotonic()
                await processor.observe_due()
        except Exception:  # a bug here must not kill the timer: log, count, try next tick
            processor.metrics.processing_errors.labels("reevaluate").inc()
            log.exception("time-driven re-evaluation failed")

    async def refresh_rfm() -> None:
        try:
            now = await processor.now()
            await processor.store.refresh_rfm(now, processor.rescored_cuts())
        except Exception:
            processor.metrics.processing_errors.labels("rfm_refresh").inc()
            log.exception("RFM threshold refresh failed")

    async def deliver_triggers() -> None:
        # Normally the batch that decided a trigger delivers it at once; this catches a sender that
        # died between its Redis write and Kafka (its entries are claimed after a lease).
        try:
            await processor.deliver_triggers()
        except Exception:
            processor.metrics.processing_errors.labels("outbox").inc()
            log.exception("trigger delivery failed")

    app.timer(settings.timer_interval_s, name="portrait-reevaluate")(reevaluate)
    app.timer(settings.timer_interval_s, name="portrait-outbox")(deliver_triggers)
    app.timer(settings.rfm_refresh_interval_s, name="portrait-rfm-refresh")(refresh_rfm)
