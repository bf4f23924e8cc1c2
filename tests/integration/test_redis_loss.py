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
            await store.client.delete(store.keys.outbox)  # what an emptied Redis looks like
            await store.client.xadd(store.keys.outbox, {"t": "topic", "k": "alice", "v": b"{}"})
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
