"""Reading and re-submitting dead letters."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from stream.contracts.deadletter import DeadLetter
from stream.contracts.topics import Topics
from stream.kafka.positions import FROM_BEGINNING, Start, assign
from stream.settings import Settings


@dataclass(frozen=True)
class LetterRecord:
    """A dead letter and where it sits on the dead-letter topic."""

    partition: int
    offset: int
    letter: DeadLetter


async def records(
    settings: Settings, idle_s: float = 2.0, follow: bool = False, start: Start = FROM_BEGINNING
) -> AsyncGenerator[list[LetterRecord], None]:
    """Dead letters with their positions, from where ``start`` says (default: the start of every
    partition): first the whole backlog (read until ``idle_s`` pass without a message; end
    offsets are not trusted: Tansu under-reports them) as one batch, oldest first; with
    ``follow`` every later poll that returns letters is one more batch. Raises
    ``UnknownPartition`` for a ``start.partition`` the topic does not have."""
    topic = Topics(settings.topic_prefix).dead_letters
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers(), enable_auto_commit=False, **settings.kafka_client_kwargs()
    )
    try:
        await consumer.start()
    except BaseException:  # a broker that does not answer: close the client, then fail
        await consumer.stop()
        raise

    def oldest_first(found: list[LetterRecord]) -> list[LetterRecord]:
        return sorted(found, key=lambda r: (r.letter.dead_lettered_at, r.partition, r.offset))

    def letters_of(batch: dict[Any, list[Any]]) -> list[LetterRecord]:
        found = [
            LetterRecord(r.partition, r.offset, DeadLetter.model_validate_json(r.value))
            for records in batch.values()
            for r in records
        ]
        return oldest_first(found)

    try:
        if not await assign(consumer, [topic], start):
            yield []
            return
        backlog: list[LetterRecord] = []
        while batch := await consumer.getmany(timeout_ms=int(idle_s * 1000)):
            backlog.extend(letters_of(batch))
        yield oldest_first(backlog)
        while follow:
            if batch := await consumer.getmany(timeout_ms=int(idle_s * 1000)):
                yield letters_of(batch)
    finally:
        await consumer.stop()


async def batches(
    settings: Settings, idle_s: float = 2.0, follow: bool = False, start: Start = FROM_BEGINNING
) -> AsyncGenerator[list[DeadLetter], None]:
    """The dead letters of ``records``, without their positions."""
    stream = records(settings, idle_s, follow, start)
    try:
        async for batch in stream:
            yield [r.letter for r in batch]
    finally:
        await stream.aclose()


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
