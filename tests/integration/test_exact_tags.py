"""Replay a seeded dataset through the real broker and worker; every profile must equal the
offline recomputation in tests/oracle.py (written independently from docs/tags.md)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from portrait_dev import synth
from portrait_dev.infra import free_port

from stream.core.pipeline import MODEL_AUDIENCE_TAGS
from stream.storage.store import Store
from tests.integration.helpers import (
    assert_profiles_match,
    read_profiles,
    read_stats,
    replay_and_settle,
    worker,
)

pytestmark = pytest.mark.integration


def test_tags_equal_offline_recomputation(make_settings, tmp_path: Path) -> None:
    settings = make_settings(clock="event", web_port=free_port())
    events = synth.generate(users=300, events=8000, seed=11, days=85)
    # producer retries: the same event sent again a few messages after the original must not count
    # twice (the retry may land on a later offset of the same partition)
    rng = random.Random(1)
    stream = list(events)
    resent = rng.sample(events, 40)
    for event in resent:
        stream.insert(stream.index(event) + rng.randint(1, 5), event)
    with worker(settings, tmp_path / "worker.log"):
        replay_and_settle(settings, stream)
        actual, now = asyncio.run(read_profiles(settings))
    assert_profiles_match(stream, actual, now)
    stats = asyncio.run(read_stats(settings))
    assert stats["events_duplicate"] == len(resent)
    assert stats["events_applied"] == len(events)


def test_audience_sets_match_profiles(make_settings, tmp_path: Path) -> None:
    settings = make_settings(clock="event", web_port=free_port())
    events = synth.generate(users=120, events=3000, seed=5, days=85)
    with worker(settings, tmp_path / "worker.log"):
        replay_and_settle(settings, events)
        profiles, _ = asyncio.run(read_profiles(settings))
        members = asyncio.run(_audiences(settings))
    from stream.tagging.definitions import load_catalogue

    audience_tags = load_catalogue().audience_tags
    expected: dict[tuple[str, str], set[str]] = {}
    for uid, profile in profiles.items():
        for tag, value in profile.items():
            if tag in audience_tags:
                expected.setdefault((tag, value), set()).add(uid)
    assert members == expected


async def _audiences(settings) -> dict[tuple[str, str], set[str]]:
    async with Store.open(settings) as store:
        out: dict[tuple[str, str], set[str]] = {}
        for pair in await store.reads.audience_pairs():
            if pair[0] in MODEL_AUDIENCE_TAGS:
                continue  # model outputs: not part of the tag profile compared here
            users = {m async for chunk in store.reads.audience_members(pair) for m in chunk}
            if users:
                out[pair] = users
        return out
