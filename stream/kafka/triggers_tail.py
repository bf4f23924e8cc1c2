"""``portrait triggers tail``: read trigger topics the way a marketing-automation consumer would,
deduplicating by ``trigger_id`` (delivery is at least once)."""

from __future__ import annotations

import time

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.contracts.topics import Topics
from stream.settings import Settings


async def tail(settings: Settings, topic: str | None = None, follow: bool = False, idle_s: float = 2.0) -> int:
    topics = Topics(settings.topic_prefix)
    names = [topics.trigger(topic)] if topic else list(topics.triggers)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers(), enable_auto_commit=False, **settings.kafka_client_kwargs()
    )
    await consumer.start()
    seen: set[str] = set()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(n, p) for n in names for p in sorted(consumer.partitions_for_topic(n) or [])]
        if not tps:
            print("no trigger topics yet")
            return 0
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while True:
            batch = await consumer.getmany(timeout_ms=int(idle_s * 1000))
            if not batch and not follow:
                break
            for records in batch.values():
                for record in records:
                    trigger = orjson.loads(record.value)
                    duplicate = trigger["trigger_id"] in seen
                    seen.add(trigger["trigger_id"])
                    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(trigger["event_time"]))
                    fired = trigger["explanation"].get("fired_by") or trigger["explanation"].get("condition")
                    print(
                        f"{when}Z {record.topic:<28} {trigger['user_id']:<12} {trigger['rule_id']}"
                        f" v{trigger['rule_version']} {trigger['trigger_id'][:8]}{' (dup)' if duplicate else ''}"
                        f"  {fired}"
                    )
    finally:
        await consumer.stop()
    print(f"{len(seen)} distinct triggers")
    return 0
