"""SIGKILL the worker several times mid-replay; nothing may be lost or double-counted."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from pathlib import Path

import pytest
from portrait_dev import synth
from portrait_dev.harness import start_worker, stop_worker, wait_healthy
from portrait_dev.infra import free_port

from stream.kafka import replay
from tests.integration.helpers import assert_profiles_match, processed_and_settled, read_profiles, store_for
from tests.integration.triggers import RULES, expected_triggers, read_triggers

pytestmark = pytest.mark.integration


async def _messages(settings) -> int:
    store = store_for(settings)
    try:
        return (await store.stats()).get("messages", 0)
    finally:
        await store.close()


def test_sigkill_three_times_loses_and_duplicates_nothing(make_settings, tmp_path: Path) -> None:
    # small batches and a slow commit interval make each kill land with uncommitted work in flight
    settings = make_settings(
        clock="event", web_port=free_port(), batch_size=100, commit_interval_s=3.0, rules_file=RULES
    )
    events = synth.generate(users=400, events=20000, seed=23, days=85)
    rng = random.Random(99)
    log = tmp_path / "worker.log"
    asyncio.run(replay.replay(settings, events, progress=False))
    kills = 0
    proc = start_worker(settings, log)
    try:
        wait_healthy(settings, proc)
        while kills < 3:
            # kill at a random point while the worker is still consuming
            target = rng.randint(2000, 15000) + kills * 1500
            deadline = time.monotonic() + 120
            while asyncio.run(_messages(settings)) < target and time.monotonic() < deadline:
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            kills += 1
            proc = start_worker(settings, log)
            wait_healthy(settings, proc)
        asyncio.run(processed_and_settled(settings, len(events), timeout=300, counter="events_applied"))
        actual, now = asyncio.run(read_profiles(settings, set()))
        triggers = asyncio.run(read_triggers(settings))
    finally:
        stop_worker(proc)
    assert kills == 3
    assert_profiles_match(events, actual, now)
    store_stats = asyncio.run(_stats(settings))
    # every event applied exactly once; redelivered ones were recognised and skipped
    assert store_stats["events_applied"] == len(events)
    print(f"redelivered after kills: {store_stats.get('events_redelivered', 0)}")
    # no trigger lost between deciding and sending, and a restart never mints a new id
    for suffix, ids in expected_triggers(events).items():
        seen = [t["trigger_id"] for t in triggers.get(suffix, [])]
        assert set(seen) == ids, f"{suffix}: missing {len(ids - set(seen))}, unexpected {len(set(seen) - ids)}"
        print(f"{suffix}: {len(ids)} triggers, {len(seen) - len(ids)} duplicate deliveries after kills")


async def _stats(settings) -> dict[str, int]:
    store = store_for(settings)
    try:
        return await store.stats()
    finally:
        await store.close()
