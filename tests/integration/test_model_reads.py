"""The trainer's reads of the model-item streams (``Store.read_model_items``) on real Valkey: read
in rounds, with items arriving between rounds, they give every item once, in entry-id order
(checked against the items the test itself wrote), also when a round starts somewhere other than
where the previous one ended (the read-ahead the store keeps is then not used)."""

from __future__ import annotations

import asyncio
import random

import pytest

from stream.storage.store import Store

pytestmark = pytest.mark.integration


async def _rounds(store: Store, rng: random.Random) -> tuple[list[bytes], list[bytes], int]:
    """(items read, items written in id order, rounds): 300 items first (200 of them in shard 3,
    so its reads fill their share), then 20 more after each of the first 30 rounds."""
    shards = store.keys.shards
    written: list[bytes] = []
    millis = 1_000

    async def write(n: int, shard: int | None = None) -> None:
        nonlocal millis
        for _ in range(n):
            millis += 1
            item = f"item-{millis}".encode()
            target = rng.randrange(shards) if shard is None else shard
            await store.client.xadd(store.keys.model_examples(target), {"i": item}, id=f"{millis}-0")
            written.append(item)

    await write(200, shard=3)
    await write(100)
    read: list[bytes] = []
    position, rounds = "0-0", 0
    while True:
        batch = await store.read_model_items(position, 50)
        rounds += 1
        if rounds % 7 == 0 and len(batch.items) > 1:
            # learn only part of the round (as a trainer cancelled mid-slice would keep)
            n = len(batch.items) // 2
            read.extend(item for _, _, item in batch.items[:n])
            position = batch.position_after(n)
        else:
            read.extend(item for _, _, item in batch.items)
            position = batch.position_after(len(batch.items))
        if rounds <= 30:
            await write(20)
        elif not batch.more and not batch.items:
            return read, written, rounds


def test_rounds_of_reads_give_every_item_once_in_entry_id_order(make_settings) -> None:
    async def run() -> tuple[list[bytes], list[bytes], int]:
        async with Store.open(make_settings()) as store:
            return await _rounds(store, random.Random(5))

    read, written, rounds = asyncio.run(run())
    assert len(written) == 900
    assert read == written  # ids rise in write order: the merged order is the write order
    assert rounds >= 900 // 50
