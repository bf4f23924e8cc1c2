"""Malformed messages land in the dead-letter topic with the right reason; valid neighbours are
processed; dead letters can be re-submitted."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import orjson
import pytest
from portrait_dev import synth
from portrait_dev.infra import free_port

from stream.contracts.events import EVENT_TYPES
from stream.contracts.topics import Topics
from stream.kafka import dlq
from tests.integration.helpers import processed, producer, worker

pytestmark = pytest.mark.integration


async def _send_interleaved(settings, valid: list[dict], bad: list[tuple[str, bytes, str]]) -> int:
    topics = Topics(settings.topic_prefix)
    sent = 0
    async with producer(settings, acks="all") as kafka:
        for i, event in enumerate(valid):
            await kafka.send(topics.for_event_type(event["type"]), orjson.dumps(event), key=event["user_id"].encode())
            sent += 1
            if i < len(bad):
                hint, raw, _ = bad[i]
                topic = topics.for_event_type(hint) if hint in EVENT_TYPES else topics.clickstream
                await kafka.send(topic, raw, key=event["user_id"].encode())
                sent += 1
    return sent


def test_malformed_messages_are_dead_lettered_with_reasons(make_settings, tmp_path: Path) -> None:
    settings = make_settings(clock="wall", web_port=free_port())
    bad = synth.malformed_messages(seed=3, end=_today())
    # valid events near the wall clock so none of them is "too old" or "in the future"
    valid = [e for e in synth.generate(users=30, events=400, seed=3, days=20, end=_today())]
    with worker(settings, tmp_path / "worker.log"):
        sent = asyncio.run(_send_interleaved(settings, valid, bad))
        stats = asyncio.run(processed(settings, sent))
        letters = asyncio.run(dlq.read(settings, idle_s=2.0))
        assert stats["events_applied"] == len(valid)
        assert Counter(d.reason for d in letters) == Counter(reason for _, _, reason in bad)
        originals = Counter(d.original for d in letters)
        assert originals == Counter(raw for _, raw, _ in bad)
        for letter in letters:
            assert letter.source_topic.startswith(settings.topic_prefix) and letter.source_offset >= 0
            assert letter.processor_version and letter.error

        # re-submitting sends the original bytes back; unchanged, they are dead-lettered again
        count = asyncio.run(dlq.resubmit(settings, reason="invalid_json"))
        expected_again = sum(1 for _, _, r in bad if r == "invalid_json")
        assert count == expected_again
        asyncio.run(processed(settings, sent + count))
        again = asyncio.run(dlq.read(settings, idle_s=2.0))
        assert Counter(d.reason for d in again)["invalid_json"] == 2 * expected_again


def _today():
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    return now.replace(minute=0, second=0, microsecond=0)
