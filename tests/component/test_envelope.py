"""Batch envelopes (one Kafka message carrying many events of many users) on the real broker and
Valkey: exact tags, per-event idempotence under redelivery, per-event dead letters."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import orjson
import pytest
from portrait_dev import synth
from portrait_dev.infra import free_port

from stream.contracts.deadletter import DeadLetter
from stream.contracts.topics import Topics
from stream.core.pipeline import Message
from stream.metrics import Metrics
from stream.service.processor import Processor
from stream.settings import Settings
from stream.storage.store import Store
from stream.tagging.definitions import load_catalogue
from tests.integration.helpers import (
    assert_profiles_match,
    processed_and_settled,
    producer,
    read_profiles,
    read_stats,
    worker,
)

pytestmark = pytest.mark.integration


def _envelopes(events: list[dict], seed: int) -> list[list[dict]]:
    """Consecutive events cut into envelopes of 1 to 60 (a size-1 envelope is sent as a plain event)."""
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(events):
        size = rng.randint(1, 60)
        out.append(events[i : i + size])
        i += size
    return out


async def _send(settings: Settings, envelopes: list[list[dict]]) -> None:
    topic = Topics(settings.topic_prefix).clickstream
    async with producer(settings, acks="all", linger_ms=5) as kafka:
        for n, batch in enumerate(envelopes):
            value = orjson.dumps(batch[0]) if len(batch) == 1 else orjson.dumps({"batch": batch})
            # a collector keys by its own session, not by user: users spread over partitions
            await kafka.send(topic, value, key=f"collector-{n % 5}".encode())


def test_envelopes_give_exact_tags(make_settings, tmp_path: Path) -> None:
    settings = make_settings(clock="event", web_port=free_port())
    events = synth.generate(users=200, events=5000, seed=53, days=85)
    envelopes = _envelopes(events, seed=5)
    with worker(settings, tmp_path / "worker.log"):
        asyncio.run(_send(settings, envelopes))
        asyncio.run(processed_and_settled(settings, len(envelopes)))
        actual, now = asyncio.run(read_profiles(settings))
        stats = asyncio.run(read_stats(settings))
    assert_profiles_match(events, actual, now)
    assert stats["events_applied"] == len(events) and stats["messages"] == len(envelopes)


@pytest.mark.both_stores
def test_a_redelivered_envelope_applies_each_event_once(make_settings) -> None:
    settings = make_settings(clock="event")
    topic = Topics(settings.topic_prefix).clickstream
    letters: list[DeadLetter] = []

    async def collect(batch: list[DeadLetter]) -> None:
        letters.extend(batch)

    def event(n: int, user: str) -> dict:
        return {"event_id": f"e{n}", "type": "page_view", "user_id": user, "ts": f"2026-11-01T10:0{n}:00+00:00"}

    batch = [event(0, "a"), event(1, "b"), event(2, "a"), {"type": "page_view"}, event(4, "a")]
    envelope = Message(topic, 0, 5, b"c", orjson.dumps({"batch": batch}))

    async def run() -> tuple[list[int], dict[str, str], dict[str, str]]:
        async with Store.open(settings) as store:
            proc = Processor(settings, load_catalogue(), store, collect, Metrics())
            first = await proc.process([envelope])
            again = await proc.process([envelope])  # redelivered after a crash before the commit
            return [first.applied, again.applied, again.redelivered], await store.profile("a"), await store.profile("b")

    counts, a, b = asyncio.run(run())
    assert counts == [4, 0, 4]
    assert a["events_7d"] == "3" and b["events_7d"] == "1"
    assert [(d.reason, d.source_offset, d.error.split("]")[0]) for d in letters] == [
        ("schema_violation", 5, "[batch item 3")
    ] * 2
