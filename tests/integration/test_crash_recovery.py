"""SIGKILL the worker several times mid-replay; nothing may be lost or double-counted."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from portrait_dev import synth
from portrait_dev.infra import free_port

from stream.kafka import replay
from tests.integration.helpers import assert_profiles_match, processed_and_settled, read_profiles, read_stats, worker
from tests.integration.triggers import RULES, expected_triggers, read_triggers

pytestmark = pytest.mark.integration


def test_sigkill_three_times_loses_and_duplicates_nothing(make_settings, tmp_path: Path) -> None:
    # small batches and a slow commit interval make each kill land with uncommitted work in flight
    settings = make_settings(
        clock="event",
        web_port=free_port(),
        batch_size=100,
        commit_interval_s=3.0,
        rules_file=RULES,
        delivery_horizon_s=0,  # triggers of a history are sent (the horizon: test_backfill.py)
    )
    # (make chaos runs the long version: 100k events, 20 kills across 2 workers)
    events = synth.generate(users=300, events=10000, seed=23, days=85)
    rng = random.Random(99)
    asyncio.run(replay.replay(settings, events, progress=False))
    with worker(settings, tmp_path / "worker.log") as running:
        for kill in range(3):
            # kill at a random point while the worker is still consuming
            running.kill_when_processed(rng.randint(1000, 7000) + kill * 800)
        asyncio.run(processed_and_settled(settings, len(events), timeout=300, counter="events_applied"))
        actual, now = asyncio.run(read_profiles(settings))
        triggers = asyncio.run(read_triggers(settings))
    assert_profiles_match(events, actual, now)
    store_stats = asyncio.run(read_stats(settings))
    # every event applied exactly once; redelivered ones were recognised and skipped
    assert store_stats["events_applied"] == len(events)
    print(f"redelivered after kills: {store_stats.get('events_redelivered', 0)}")
    # no trigger lost between deciding and sending, and a restart never mints a new id
    for suffix, ids in expected_triggers(events).items():
        seen = [t["trigger_id"] for t in triggers.get(suffix, [])]
        assert set(seen) == ids, f"{suffix}: missing {len(ids - set(seen))}, unexpected {len(set(seen) - ids)}"
        print(f"{suffix}: {len(ids)} triggers, {len(seen) - len(ids)} duplicate deliveries after kills")
