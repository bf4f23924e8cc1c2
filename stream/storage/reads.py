"""Redis reads outside the write path: the one module that reads published data across state
shards, built on ``Keys`` (layout v2, docs/redis-keys.md 'Reading'). The read API (``portrait
api``), the worker's ``/profiles`` and metrics, the CLI, the offline driver, the demo and the
tests all read through ``Reads`` (a ``Store`` carries one as ``store.reads``, on the layout it
adopted). An audience is one set per shard: sizes are the shards' SCARD summed, an intersection
the shards' SINTERCARD summed (a user is in one shard), members are scanned shard by shard.

Every read here is O(1) or O(size of the answer) except those marked *scan* (``audience_pairs``,
``all_audience_sizes``, ``stored_users`` and ``scan_users``), which the API only runs in its
background refresher, never per request (docs/api.md, "How insights stay fast"). The only writes
are the API's own trend snapshots (``record_trend``): one field per hour, idempotent, bounded in
time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import orjson

from stream.settings import Settings
from stream.storage.client import Client, connect_settings, decode_hash, decode_text
from stream.storage.keys import Keys, layout_shards

Pair = tuple[str, str]  # (tag, value) of an audience


@dataclass(frozen=True)
class UserRecord:
    """One user as the background pass reads it: fields of the published profile, the state blob."""

    uid: str
    profile: dict[str, str]
    state: bytes | None


class Reads:
    """Read access to the published profiles, audience sets, counters and trend snapshots.

    ``keys``: the store's ``Keys``, or a callable returning them (the worker passes its store's,
    which adopt the layout the store records)."""

    def __init__(self, client: Client, keys: Keys | Callable[[], Keys]) -> None:
        self.client = client
        self._keys = keys

    @property
    def keys(self) -> Keys:
        return self._keys() if callable(self._keys) else self._keys

    @classmethod
    def from_settings(cls, settings: Settings) -> Reads:
        return cls(connect_settings(settings), Keys(settings.key_prefix, settings.redis_shards))

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings) -> AsyncIterator[Reads]:
        reads = cls.from_settings(settings)
        try:
            await reads.adopt_layout()
            yield reads
        finally:
            await reads.close()

    async def adopt_layout(self) -> int:
        """Read the shard count the store recorded (``Store.adopt_layout`` writes it); a store not
        created yet keeps the settings' count."""
        raw = await self.client.get(self.keys.layout)
        shards = layout_shards(decode_text(raw) if raw else "")
        if shards and not callable(self._keys):
            self._keys = replace(self._keys, shards=shards)
        return self.keys.shards

    async def close(self) -> None:
        await self.client.aclose()

    async def ping(self) -> bool:
        return bool(await self.client.ping())

    # -- profiles --------------------------------------------------------------------------
    async def profile(self, uid: str) -> dict[str, str]:
        """The published profile hash of ``uid`` (empty when unknown, expired or erased)."""
        return decode_hash(await self.client.hgetall(self.keys.profile(uid)))

    async def profiles(self, uids: Sequence[str]) -> list[dict[str, str]]:
        """Published profiles of ``uids``, in order, in one round trip."""
        if not uids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for uid in uids:
            pipe.hgetall(self.keys.profile(uid))
        return [decode_hash(raw) for raw in await pipe.execute()]

    async def profile_fields(self, uids: Sequence[str], fields: Sequence[str]) -> list[list[str | None]]:
        """The values of ``fields`` of each of ``uids`` (None where absent), in one round trip."""
        if not uids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for uid in uids:
            pipe.hmget(self.keys.profile(uid), list(fields))
        return [[decode_text(v) if v is not None else None for v in row] for row in await pipe.execute()]

    async def aliases(self, subjects: Sequence[str]) -> dict[str, str]:
        """Merged anonymous subjects (``anon:<id>``) -> the user they were merged into."""
        if not subjects:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for s in subjects:  # one GET each: the aliases live in their subjects' shards
            pipe.get(self.keys.alias(s))
        values = await pipe.execute()
        return {s: decode_text(v) for s, v in zip(subjects, values, strict=True) if v is not None}

    async def state(self, uid: str) -> bytes | None:
        """The stored state blob of ``uid`` (decode with ``UserState.from_bytes``)."""
        blob: Any = await self.client.hget(self.keys.state(uid), "blob")
        return bytes(blob) if blob is not None else None

    # -- audiences (one set per shard) ---------------------------------------------------------
    async def audience_size(self, pair: Pair) -> int:
        """Members of one audience: the shards' ``SCARD`` summed (one round trip)."""
        return (await self.audience_sizes([pair]))[0]

    async def audience_sizes(self, pairs: Sequence[Pair]) -> list[int]:
        """Members of each audience (``SCARD`` of each shard's set, one round trip)."""
        if not pairs:
            return []
        shards = self.keys.shards
        pipe = self.client.pipeline(transaction=False)
        for pair in pairs:
            for shard in range(shards):
                pipe.scard(self.keys.audience(shard, *pair))
        counts = [int(n) for n in await pipe.execute()]
        return [sum(counts[i * shards : (i + 1) * shards]) for i in range(len(pairs))]

    async def intersection_sizes(self, groups: Sequence[Sequence[Pair]]) -> list[int]:
        """Users in every one of each group's pairs, in one round trip: per group, the shards'
        ``SINTERCARD`` summed (a user is in one shard, so the shards' intersections are disjoint)."""
        shards = self.keys.shards
        pipe = self.client.pipeline(transaction=False)
        for pairs in groups:
            for shard in range(shards):
                pipe.sintercard(len(pairs), [self.keys.audience(shard, *p) for p in pairs])
        counts = [int(n) for n in await pipe.execute()]
        return [sum(counts[i * shards : (i + 1) * shards]) for i in range(len(groups))]

    async def scan_audience(self, pair: Pair, cursor: int, count: int) -> tuple[int, list[str]]:
        """One ``SSCAN`` step over an audience, shard after shard: (next cursor, 0 at the end;
        members). The cursor is ``shard + shards * (that shard's SSCAN cursor)``.

        SSCAN returns every member present for the whole iteration at least once; a member may
        come twice when the set is resized in between (callers that need uniqueness dedupe)."""
        shards = self.keys.shards
        shard, inner = cursor % shards, cursor // shards
        nxt, members = await self.client.sscan(self.keys.audience(shard, *pair), cursor=inner, count=count)
        if int(nxt):
            return shard + shards * int(nxt), [decode_text(m) for m in members]
        return (shard + 1 if shard + 1 < shards else 0), [decode_text(m) for m in members]

    async def memberships(self, uids: Sequence[str], pairs: Sequence[Pair]) -> list[list[bool]]:
        """For each of ``pairs``, whether each of ``uids`` is a member (``SMISMEMBER`` per pair and
        shard, one round trip)."""
        if not uids or not pairs:
            return [[] for _ in pairs]
        by_shard: dict[int, list[int]] = {}
        for i, uid in enumerate(uids):
            by_shard.setdefault(self.keys.shard(uid), []).append(i)
        pipe = self.client.pipeline(transaction=False)
        for pair in pairs:
            for shard, idx in by_shard.items():
                pipe.smismember(self.keys.audience(shard, *pair), [uids[i] for i in idx])
        replies = iter(await pipe.execute())
        out: list[list[bool]] = []
        for _ in pairs:
            row = [False] * len(uids)
            for idx in by_shard.values():
                for i, flag in zip(idx, next(replies), strict=True):
                    row[i] = bool(flag)
            out.append(row)
        return out

    async def audience_pairs(self) -> list[Pair]:
        """*Scan*: every audience set that exists, as (tag, value). Cost O(keys in the database):
        for the background refresher only."""
        out: set[Pair] = set()
        async for key in self.client.scan_iter(match=self.keys.audience_pattern, count=1000):
            out.add(self.keys.parse_audience(decode_text(key)))
        return sorted(out)

    async def all_audience_sizes(self) -> dict[Pair, int]:
        """*Scan*: (tag, value) -> members, for every audience that exists: ``SCARD`` of each
        shard's set the scan found (not of every (audience, shard) pair: most shards of a small
        audience hold no set), summed per audience."""
        found: list[tuple[Pair, bytes | str]] = []
        async for key in self.client.scan_iter(match=self.keys.audience_pattern, count=1000):
            found.append((self.keys.parse_audience(decode_text(key)), key))
        pipe = self.client.pipeline(transaction=False)
        for _, key in found:
            pipe.scard(key)
        out: dict[Pair, int] = {}
        for (pair, _), n in zip(found, await pipe.execute() if found else [], strict=True):
            out[pair] = out.get(pair, 0) + int(n)
        return dict(sorted(out.items()))

    async def audience_members(self, pair: Pair, count: int = 1000) -> AsyncIterator[list[str]]:
        """The members of one audience, a sorted chunk per ``scan_audience`` step, until the last
        shard's set is scanned: never gathered into one reply."""
        cursor = 0
        while True:
            cursor, members = await self.scan_audience(pair, cursor, count)
            if members:
                yield sorted(members)
            if not cursor:
                return

    # -- the background pass -------------------------------------------------------------------
    async def stored_users(self) -> AsyncIterator[str]:
        """*Scan*: the id of every user with a stored state (published profile or not)."""
        async for key in self.client.scan_iter(match=self.keys.state_pattern, count=1000):
            yield self.keys.parse_state(decode_text(key))

    async def scan_users(
        self, fields: Sequence[str], batch: int = 500, with_state: bool = True
    ) -> AsyncIterator[list[UserRecord]]:
        """*Scan*: every user with a published profile, in batches: the profile's ``fields``
        (absent ones left out) and the state blob, one round trip per batch. Cost O(keys in the
        database): for the background refresher only. Reading only the fields needed keeps the
        reply small (parsing it is most of a pass's cost)."""
        names = list(fields)
        pending: list[str] = []

        async def fetch(uids: list[str]) -> list[UserRecord]:
            pipe = self.client.pipeline(transaction=False)
            for uid in uids:
                pipe.hmget(self.keys.profile(uid), names)
                if with_state:
                    pipe.hget(self.keys.state(uid), "blob")
            replies = await pipe.execute()
            step = 2 if with_state else 1
            out = []
            for i, uid in enumerate(uids):
                values = replies[i * step]
                profile = {name: decode_text(v) for name, v in zip(names, values, strict=True) if v is not None}
                if profile:  # expired or deleted between the scan and the read
                    blob = replies[i * step + 1] if with_state else None
                    out.append(UserRecord(uid, profile, bytes(blob) if blob is not None else None))
            return out

        async for key in self.client.scan_iter(match=self.keys.profile_pattern, count=1000):
            pending.append(self.keys.parse_profile(decode_text(key)))
            if len(pending) >= batch:
                yield await fetch(pending)
                pending = []
        if pending:
            yield await fetch(pending)

    # -- counters, clock, models -------------------------------------------------------------
    async def stats(self) -> dict[str, int]:
        """The counters: the batch-level hash plus every shard's."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.keys.stats)
        for shard in range(self.keys.shards):
            pipe.hgetall(self.keys.shard_stats(shard))
        out: dict[str, int] = {}
        for raw in await pipe.execute():
            for k, v in raw.items():
                if k != b"_":
                    out[decode_text(k)] = out.get(decode_text(k), 0) + int(v)
        return out

    async def clock(self) -> float | None:
        raw = await self.client.get(self.keys.clock)
        return float(raw) if raw else None

    async def model_status(self) -> dict[str, Any]:
        raw = await self.client.hget(self.keys.model_meta, "status")
        status: dict[str, Any] = orjson.loads(raw) if raw else {}
        return status

    # -- trend snapshots (the API's own keys) ----------------------------------------------------
    async def record_trend(self, hour: int, doc: dict[str, Any], keep_from: int) -> bool:
        """Store ``doc`` as the snapshot of ``hour`` (epoch s, a multiple of 3600), replacing an
        earlier one of the same hour, and drop snapshots older than ``keep_from``. True when the
        hour had none yet. Idempotent: the same call again changes nothing."""
        key = self.keys.trends
        created = bool(await self.client.hset(key, str(hour), orjson.dumps(doc)))
        if created:  # a new hour: the moment to drop what left the retention
            old = [h for h in await self.client.hkeys(key) if int(h) < keep_from]
            if old:
                await self.client.hdel(key, *old)
        return created

    async def trends(self, since: float, until: float) -> dict[int, dict[str, Any]]:
        """Snapshots with ``since <= hour <= until``, by hour."""
        key = self.keys.trends
        hours = sorted(int(h) for h in await self.client.hkeys(key) if since <= int(h) <= until)
        if not hours:
            return {}
        docs = await self.client.hmget(key, [str(h) for h in hours])
        return {h: orjson.loads(d) for h, d in zip(hours, docs, strict=True) if d is not None}
