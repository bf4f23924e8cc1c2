"""Redis reads of the read API (``portrait api``) and the worker's ``/profiles``: the one module that
reads published data outside the write path, built on ``Keys``.

Every read here is O(1) or O(size of the answer) except the two marked *scan* (``audience_pairs``
and ``scan_users``), which the API only runs in its background refresher, never per request
(docs/api.md, "How insights stay fast"). The only writes are the API's own trend snapshots
(``record_trend``): one field per hour, idempotent, bounded in time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from stream.settings import Settings
from stream.storage.keys import Keys, erased_token

Pair = tuple[str, str]  # (tag, value) of an audience


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decoded(raw: Any) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}


@dataclass(frozen=True)
class UserRecord:
    """One user as the background pass reads it: fields of the published profile, the state blob."""

    uid: str
    profile: dict[str, str]
    state: bytes | None


class Reads:
    """Read access to the published profiles, audience sets, counters and trend snapshots."""

    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        head, _, tail = keys.profile("\0").partition("\0")
        self._profile_head, self._profile_tail = head, tail

    @classmethod
    def from_settings(cls, settings: Settings) -> Reads:
        client = aioredis.Redis.from_url(
            settings.resolved_redis_url(), decode_responses=False, **settings.redis_client_kwargs()
        )
        return cls(client, Keys(settings.key_prefix))

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings) -> AsyncIterator[Reads]:
        reads = cls.from_settings(settings)
        try:
            yield reads
        finally:
            await reads.close()

    async def close(self) -> None:
        await self.client.aclose()

    async def ping(self) -> bool:
        return bool(await self.client.ping())

    # -- profiles --------------------------------------------------------------------------
    async def profile(self, uid: str) -> dict[str, str]:
        """The published profile hash of ``uid`` (empty when unknown, expired or erased)."""
        return _decoded(await self.client.hgetall(self.keys.profile(uid)))

    async def profiles(self, uids: Sequence[str]) -> list[dict[str, str]]:
        """Published profiles of ``uids``, in order, in one round trip."""
        if not uids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for uid in uids:
            pipe.hgetall(self.keys.profile(uid))
        return [_decoded(raw) for raw in await pipe.execute()]

    async def profile_fields(self, uids: Sequence[str], fields: Sequence[str]) -> list[list[str | None]]:
        """The values of ``fields`` of each of ``uids`` (None where absent), in one round trip."""
        if not uids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for uid in uids:
            pipe.hmget(self.keys.profile(uid), list(fields))
        return [[_text(v) if v is not None else None for v in row] for row in await pipe.execute()]

    async def aliases(self, subjects: Sequence[str]) -> dict[str, str]:
        """Merged anonymous subjects (``anon:<id>``) -> the user they were merged into."""
        if not subjects:
            return {}
        values = await self.client.mget([self.keys.alias(s) for s in subjects])
        return {s: _text(v) for s, v in zip(subjects, values, strict=True) if v is not None}

    async def state(self, uid: str) -> bytes | None:
        """The stored state blob of ``uid`` (decode with ``UserState.from_bytes``)."""
        blob: Any = await self.client.hget(self.keys.state(uid), "blob")
        return bytes(blob) if blob is not None else None

    async def erased(self, uid: str) -> bool:
        return bool(await self.client.sismember(self.keys.erased, erased_token(uid)))

    # -- audiences -------------------------------------------------------------------------
    async def audience_size(self, pair: Pair) -> int:
        """Members of one audience: ``SCARD``, O(1)."""
        return int(await self.client.scard(self.keys.audience(*pair)))

    async def audience_sizes(self, pairs: Sequence[Pair]) -> list[int]:
        """Members of each audience (``SCARD`` each, one round trip)."""
        if not pairs:
            return []
        pipe = self.client.pipeline(transaction=False)
        for pair in pairs:
            pipe.scard(self.keys.audience(*pair))
        return [int(n) for n in await pipe.execute()]

    async def intersection_size(self, pairs: Sequence[Pair]) -> int:
        """Users in every one of ``pairs`` (``SINTERCARD``: O(smallest set x sets))."""
        return (await self.intersection_sizes([pairs]))[0]

    async def intersection_sizes(self, groups: Sequence[Sequence[Pair]]) -> list[int]:
        """``intersection_size`` of each group, in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for pairs in groups:
            pipe.sintercard(len(pairs), [self.keys.audience(*p) for p in pairs])
        return [int(n) for n in await pipe.execute()]

    async def scan_audience(self, pair: Pair, cursor: int, count: int) -> tuple[int, list[str]]:
        """One ``SSCAN`` step over an audience: (next cursor, 0 at the end; members).

        SSCAN returns every member present for the whole iteration at least once; a member may
        come twice when the set is resized in between (callers that need uniqueness dedupe)."""
        nxt, members = await self.client.sscan(self.keys.audience(*pair), cursor=cursor, count=count)
        return int(nxt), [_text(m) for m in members]

    async def memberships(self, uids: Sequence[str], pairs: Sequence[Pair]) -> list[list[bool]]:
        """For each of ``pairs``, whether each of ``uids`` is a member (``SMISMEMBER``, one round trip)."""
        if not uids or not pairs:
            return [[] for _ in pairs]
        pipe = self.client.pipeline(transaction=False)
        for pair in pairs:
            pipe.smismember(self.keys.audience(*pair), list(uids))
        return [[bool(flag) for flag in row] for row in await pipe.execute()]

    async def audience_pairs(self) -> list[Pair]:
        """*Scan*: every audience set that exists, as (tag, value). Cost O(keys in the database):
        for the background refresher only."""
        prefix = self.keys.audience_prefix
        out: list[Pair] = []
        async for key in self.client.scan_iter(match=prefix + "*", count=1000):
            tag, _, value = _text(key)[len(prefix) :].partition(":")
            out.append((tag, value))
        return sorted(set(out))

    # -- the background pass -------------------------------------------------------------------
    async def scan_users(
        self, fields: Sequence[str], batch: int = 500, with_state: bool = True
    ) -> AsyncIterator[list[UserRecord]]:
        """*Scan*: every user with a published profile, in batches: the profile's ``fields``
        (absent ones left out) and the state blob, one round trip per batch. Cost O(keys in the
        database): for the background refresher only. Reading only the fields needed keeps the
        reply small (parsing it is most of a pass's cost)."""
        pattern = self.keys.profile("*")
        head, tail = self._profile_head, self._profile_tail
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
                profile = {name: _text(v) for name, v in zip(names, values, strict=True) if v is not None}
                if profile:  # expired or deleted between the scan and the read
                    blob = replies[i * step + 1] if with_state else None
                    out.append(UserRecord(uid, profile, bytes(blob) if blob is not None else None))
            return out

        async for key in self.client.scan_iter(match=pattern, count=1000):
            name = _text(key)
            if name.startswith(head) and name.endswith(tail):
                pending.append(name[len(head) : len(name) - len(tail)])
            if len(pending) >= batch:
                yield await fetch(pending)
                pending = []
        if pending:
            yield await fetch(pending)

    # -- counters, clock, models -------------------------------------------------------------
    async def stats(self) -> dict[str, int]:
        raw = await self.client.hgetall(self.keys.stats)
        return {_text(k): int(v) for k, v in raw.items() if k != b"_"}

    async def clock(self) -> float | None:
        raw = await self.client.get(self.keys.clock)
        return float(raw) if raw else None

    async def model_status(self) -> dict[str, Any]:
        raw = await self.client.hget(self.keys.model_meta, "status")
        status: dict[str, Any] = orjson.loads(raw) if raw else {}
        return status

    async def rfm_thresholds(self) -> dict[str, str]:
        return _decoded(await self.client.hgetall(self.keys.rfm_thresholds))

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
