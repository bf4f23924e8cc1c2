"""The time-driven path's claims on both stores: what ``claim_due`` visits without claiming on
every shard (the sweep reads two things per shard and claims only where a lease expired or a due
entry is missing from the due index), and the claim script's limit and earliest-left reply."""

from __future__ import annotations

import asyncio

import pytest

from stream.storage.store import Store

pytestmark = pytest.mark.integration


@pytest.mark.both_stores
def test_claims_return_expired_leases_and_due_entries_the_index_missed(make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()

    async def run() -> list[object]:
        async with Store.open(settings) as store:
            keys = store.keys
            try:
                seen: list[object] = []
                # a writer that died between its shard's script and ``finish``: due entries, no index
                for uid, due in (("u1", 100.0), ("u2", 200.0), ("u3", 900.0)):
                    await store.client.zadd(keys.due(keys.shard(uid)), {uid: due})
                # the first claim sweeps: u1 and u2 are due by 300, u3 (900) is not
                seen.append(sorted(await store.claim_due(300.0, 10, 1000.0, 10.0)))
                # no sweep (2 s later): the index now says u3's shard is due at 900
                seen.append(await store.claim_due(300.0, 10, 1002.0, 10.0))
                seen.append(await store.claim_due(950.0, 10, 1003.0, 10.0))
                # u1 and u2 were never written back (their claimer died): nothing before the lease
                # expires, even on a sweep ...
                seen.append(await store.claim_due(950.0, 10, 1006.0, 10.0))
                # ... then they come back, forced (due 0), on the next sweep
                seen.append(sorted(await store.claim_due(950.0, 10, 1012.0, 10.0)))
                # a shard with more due users than the limit: the earliest first, the rest next
                taken = {keys.shard(u) for u in ("u1", "u2", "u3")}  # their leases are running
                shard = next(keys.shard(f"a{i}") for i in range(1000) if keys.shard(f"a{i}") not in taken)
                batch = {f"a{i}": 10.0 + i for i in range(5000) if keys.shard(f"a{i}") == shard}
                await store.client.zadd(keys.due(shard), batch)
                await store.client.zadd(keys.due_index, {str(shard): 10.0}, lt=True)
                first = await store.claim_due(10_000.0, 2, 1013.0, 10.0)
                rest = await store.claim_due(10_000.0, 100, 1014.0, 10.0)
                ordered = sorted(batch, key=batch.__getitem__)
                seen.append(first == [(u, batch[u]) for u in ordered[:2]])
                seen.append(sorted(rest) == sorted((u, batch[u]) for u in ordered[2:]))
                return seen
            finally:
                await store.delete_namespace()

    seen = asyncio.run(run())
    assert seen[0] == [("u1", 100.0), ("u2", 200.0)]
    assert seen[1] == []
    assert seen[2] == [("u3", 900.0)]
    assert seen[3] == []
    assert seen[4] == [("u1", 0.0), ("u2", 0.0)]
    assert seen[5] is True and seen[6] is True  # (5000 ids over 128 shards: ~39 in it)
