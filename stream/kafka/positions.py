"""Where a tail starts reading, as kcat's ``-o beginning|end|N`` and ``-p P``.

``Start`` says which partitions a tail reads (all of each topic, or ``partition`` only) and from
where (the beginning, the end, or ``offset`` of each chosen partition); ``assign`` applies it to a
consumer. End offsets are the broker's own (Tansu under-reports them: ``from_end`` may then show
some older records).
"""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition


class UnknownPartition(ValueError):
    """``--partition`` names a partition the topic does not have."""


@dataclass(frozen=True)
class Start:
    offset: int | None = None  # this offset of each chosen partition (wins over from_end)
    partition: int | None = None  # only this partition (of each topic read)
    from_end: bool = False  # only records written after the tail started

    def __post_init__(self) -> None:
        if self.offset is not None and self.offset < 0:
            raise ValueError("offset must be >= 0")
        if self.partition is not None and self.partition < 0:
            raise ValueError("partition must be >= 0")


FROM_BEGINNING = Start()


async def assign(consumer: AIOKafkaConsumer, topics: list[str], start: Start) -> list[TopicPartition]:
    """Assign ``consumer`` the partitions of ``topics`` that ``start`` chooses and seek them; the
    partitions, in (topic, partition) order (none when no topic exists yet)."""
    await consumer._client.force_metadata_update()
    tps: list[TopicPartition] = []
    for topic in topics:
        partitions = sorted(consumer.partitions_for_topic(topic) or [])
        if start.partition is None:
            tps.extend(TopicPartition(topic, p) for p in partitions)
        elif start.partition in partitions:
            tps.append(TopicPartition(topic, start.partition))
        elif partitions:
            raise UnknownPartition(f"topic {topic} has no partition {start.partition} (it has 0..{partitions[-1]})")
    if not tps:
        return []
    consumer.assign(tps)
    if start.offset is not None:
        for tp in tps:
            consumer.seek(tp, start.offset)
    elif start.from_end:
        await consumer.seek_to_end(*tps)
    else:
        await consumer.seek_to_beginning(*tps)
    return tps
