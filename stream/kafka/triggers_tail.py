"""``portrait triggers tail``: read trigger topics the way a marketing-automation consumer would.

Delivery is at least once, so a consumer deduplicates by ``trigger_id``; ``read_triggers`` yields
every record with a flag saying whether its id was seen before, and leaves presentation to the CLI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from stream.contracts.topics import Topics
from stream.kafka.positions import FROM_BEGINNING, Start, assign
from stream.settings import Settings


@dataclass(frozen=True)
class TriggerRecord:
    topic: str
    partition: int
    offset: int
    trigger: dict[str, Any]
    duplicate: bool  # the same trigger_id was read before (a redelivery or a replay)


async def read_triggers(
    settings: Settings,
    topic: str | None = None,
    follow: bool = False,
    idle_s: float = 2.0,
    start: Start = FROM_BEGINNING,
) -> AsyncIterator[list[TriggerRecord]]:
    """Batches of trigger records of the trigger topics (all, or ``topic`` suffix), from where
    ``start`` says (default: the start of every partition; ``UnknownPartition`` for a
    ``start.partition`` that a topic does not have).

    The first batch is the whole backlog (read until ``idle_s`` pass without a message); with
    ``follow`` every later poll that returns records is one more batch, until cancelled.
    """
    topics = Topics(settings.topic_prefix)
    names = [topics.trigger(topic)] if topic else list(topics.triggers)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers(), enable_auto_commit=False, **settings.kafka_client_kwargs()
    )
    try:
        await consumer.start()
    except BaseException:
        await consumer.stop()
        raise
    seen: set[str] = set()

    def records_of(batch: dict[Any, list[Any]]) -> list[TriggerRecord]:
        out = []
        for records in batch.values():
            for record in records:
                trigger = orjson.loads(record.value)
                tid = str(trigger.get("trigger_id"))
                out.append(TriggerRecord(record.topic, record.partition, record.offset, trigger, tid in seen))
                seen.add(tid)
        return out

    try:
        if not await assign(consumer, names, start):
            return
        backlog: list[TriggerRecord] = []
        while batch := await consumer.getmany(timeout_ms=int(idle_s * 1000)):
            backlog.extend(records_of(batch))
        yield backlog
        while follow:
            if batch := await consumer.getmany(timeout_ms=int(idle_s * 1000)):
                yield records_of(batch)
    finally:
        await consumer.stop()
