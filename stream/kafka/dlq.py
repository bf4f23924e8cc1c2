"""Reading and re-submitting dead letters."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stream.contracts.deadletter import DeadLetter
from stream.contracts.topics import Topics
from stream.settings import Settings


async def batches(
    settings: Settings, idle_s: float = 2.0, follow: bool = False
) -> AsyncGenerator[list[DeadLetter], None]:
    """Dead letters from the start of the topic: first the whole backlog (read until ``idle_s``
    pass without a message; end offsets are not trusted: Tansu under-reports them) as one batch,
    oldest first; with ``follow`` every later poll that returns letters is one more batch."""
    topic = Topics(settings.topic_prefix).dead_letters
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers(), enable_auto_commit=False, **settings.kafka_client_kwargs()
    )
    try:
        await consumer.start()
    except BaseException:  # a broker that does not answer: close the client, then fail
        await consumer.stop()
        raise

    def letters_of(batch: dict[Any, list[Any]]) -> list[DeadLetter]:
        letters = [DeadLetter.model_validate_json(r.value) for records in batch.values() for r in records]
        return sorted(letters, key=lambda d: d.dead_lettered_at)

    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            yield []
            return
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        backlog: list[DeadLetter] = []
        while batch := await consumer.getmany(timeout_ms=int(idle_s * 1000)):
            backlog.extend(letters_of(batch))
        yield sorted(backlog, key=lambda d: d.dead_lettered_at)
        while follow:
            if batch := await consumer.getmany(timeout_ms=int(idle_s * 1000)):
                yield letters_of(batch)
    finally:
        await consumer.stop()


async def read(settings: Settings, idle_s: float = 2.0) -> list[DeadLetter]:
    """Every dead letter on the topic, oldest first (the backlog of ``batches``)."""
    stream = batches(settings, idle_s)
    try:
        return await anext(stream, [])
    finally:
        await stream.aclose()  # stops the consumer now, not when the generator is collected


async def resubmit(settings: Settings, reason: str | None = None, idle_s: float = 2.0) -> int:
    """Send dead letters' original bytes back to their source topics (after a fix)."""
    # an erased user's dead letters carry no payload (re-submitting them would be refused anyway),
    # and a too-large message's dead letter only its first bytes: neither can be sent again
    letters = [
        d
        for d in await read(settings, idle_s)
        if (reason is None or d.reason == reason) and d.reason != "erased_user" and not d.truncated
    ]
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers(), acks="all", **settings.kafka_client_kwargs()
    )
    try:
        await producer.start()
    except BaseException:  # a broker that does not answer: close the client, then fail
        await producer.stop()
        raise
    try:
        futures = [await producer.send(d.source_topic, d.original, key=d.key) for d in letters]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(letters)
