"""Reading audiences and profiles across state shards: the functions the CLI, the offline driver
and the API use (docs/redis-keys.md 'Reading'). Each takes a client (``Store.client`` or any
redis-py client of the same Redis) and the store's ``Keys`` (after ``Store.adopt_layout``).

An audience ``TAG = VALUE`` is one set per shard (``Keys.audience(shard, tag, value)``). Its
size is the sum of the shards' ``SCARD`` (one pipelined round trip); its members are streamed
shard by shard (``SSCAN``), never gathered into one reply; a profile is one ``HGETALL`` on the
user's shard.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from stream.storage.client import Client
from stream.storage.keys import Keys


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def audience_size(client: Client, keys: Keys, tag: str, value: str) -> int:
    """Members of ``tag = value`` (the shards' SCARD summed)."""
    pipe = client.pipeline(transaction=False)
    for shard in range(keys.shards):
        pipe.scard(keys.audience(shard, tag, value))
    return sum(int(n) for n in await pipe.execute())


async def audience_members(
    client: Client, keys: Keys, tag: str, value: str, count: int = 1000
) -> AsyncIterator[list[str]]:
    """The members of ``tag = value``, a chunk at a time (``SSCAN`` of each shard in turn)."""
    for shard in range(keys.shards):
        key = keys.audience(shard, tag, value)
        cursor: int = 0
        while True:
            cursor, chunk = await client.sscan(key, cursor, count=count)
            if chunk:
                yield sorted(_text(m) for m in chunk)
            if not cursor:
                break


async def audience_sizes(client: Client, keys: Keys) -> dict[tuple[str, str], int]:
    """(tag, value) -> members, for every audience set (found by one SCAN, sizes summed over shards)."""
    found = [k async for k in client.scan_iter(match=keys.audience_pattern, count=1000)]
    pipe = client.pipeline(transaction=False)
    for key in found:
        pipe.scard(key)
    sizes: dict[tuple[str, str], int] = {}
    for key, size in zip(found, await pipe.execute() if found else [], strict=True):
        pair = keys.parse_audience(_text(key))
        sizes[pair] = sizes.get(pair, 0) + int(size)
    return sizes


async def profiles(client: Client, keys: Keys, uids: Iterable[str]) -> dict[str, dict[str, str]]:
    """The stored profiles of ``uids`` (one pipelined HGETALL each; absent users are left out)."""
    ids = list(uids)
    pipe = client.pipeline(transaction=False)
    for uid in ids:
        pipe.hgetall(keys.profile(uid))
    out: dict[str, dict[str, str]] = {}
    for uid, raw in zip(ids, await pipe.execute(), strict=True):
        if raw:
            out[uid] = {_text(k): _text(v) for k, v in raw.items()}
    return out


async def stored_users(client: Client, keys: Keys) -> AsyncIterator[str]:
    """The id of every user with a stored state (one SCAN over every primary)."""
    async for key in client.scan_iter(match=keys.state_pattern, count=1000):
        yield keys.parse_state(_text(key))
