"""Issue 12, item 4 (real Valkey): a Redis that lost its data is repaired where it can be, and detected.

* The trigger outbox's consumer group vanished with the data: reading the outbox re-creates it in
  place (it used to fail with NOGROUP on every batch that fired, dead-lettering valid events).
* The store epoch written at first use is checked on every batch read: when it is gone, the store
  says so (``data_lost``) so the worker can alert.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.helpers import store_for

pytestmark = pytest.mark.integration


def test_the_outbox_group_is_recreated_after_redis_lost_it(make_settings) -> None:
    settings = make_settings()

    async def run() -> list[str]:
        store = store_for(settings)
        try:
            await store.ensure_outbox()
            outbox = store.keys.outbox(store.keys.shard("alice"))
            await store.client.delete(outbox)  # what an emptied Redis looks like
            await store.client.xadd(outbox, {"t": "topic", "k": "alice", "v": b"{}"})
            entries = await store.read_outbox("sender-1", 10, 30_000)
            return [e.key for e in entries]
        finally:
            await store.close()

    assert asyncio.run(run()) == ["alice"]


def test_a_vanished_store_epoch_is_detected_on_the_next_load(make_settings) -> None:
    settings = make_settings()

    async def run() -> tuple[bool, bool, bool, bool]:
        store = store_for(settings)
        try:
            created, again = await store.ensure_epoch(), await store.ensure_epoch()
            await store.load(["alice"])
            before = store.data_lost
            await store.client.delete(store.keys.epoch)  # Redis came back empty
            await store.load(["alice"])
            return created, again, before, store.data_lost
        finally:
            await store.close()

    assert asyncio.run(run()) == (True, False, False, True)


def test_the_runbook_rebuild_yields_the_oracle_tags_again(make_settings, tmp_path) -> None:
    """docs/runbook.md 'PortraitRedisLostData': empty store + a new consumer group = the same tags."""
    from portrait_dev import synth
    from portrait_dev.infra import free_port

    from stream.kafka import replay
    from tests.integration.helpers import (
        assert_profiles_match,
        flush_store,
        processed_and_settled,
        read_profiles,
        worker,
    )

    settings = make_settings(clock="event", web_port=free_port())
    events = synth.generate(users=60, events=1500, seed=5, days=60)
    asyncio.run(replay.replay(settings, events, progress=False))
    with worker(settings, tmp_path / "first.log"):
        asyncio.run(processed_and_settled(settings, len(events), counter="events_applied"))

    asyncio.run(flush_store(settings))  # Redis lost everything
    rebuilt = settings.model_copy(update={"app_id": f"{settings.app_id}-rebuild"})
    with worker(rebuilt, tmp_path / "rebuild.log"):
        asyncio.run(processed_and_settled(rebuilt, len(events), counter="events_applied"))
        actual, now = asyncio.run(read_profiles(rebuilt))
    assert_profiles_match(events, actual, now)
