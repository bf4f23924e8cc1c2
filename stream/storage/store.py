"""Redis I/O: one round trip to load a batch's users, one atomic script to write them.

The scripts are ``stream/storage/scripts/*.lua``; every key they touch is built by ``Keys`` and
passed in ``KEYS`` (each file's header states its KEYS/ARGV contract).

The write script checks every user's state version first (compare-and-set) and writes nothing if
any changed since it was read, so two workers briefly owning the same partition during a
rebalance cannot interleave updates: the loser re-reads and recomputes.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

# re-exported: the types of Store.load and Store.write (defined in the pure core)
from stream.core.progress import Progress as Progress
from stream.core.writes import LoadedUser as LoadedUser, UserWrite
from stream.settings import Settings
from stream.storage.keys import Keys, erased_token
from stream.tagging.engine import RfmThresholds
from stream.tagging.state import UserState

log = logging.getLogger(__name__)

SCRIPT_NAMES = ("write", "erase", "claim", "refresh_rfm", "lease", "advance_clock")


@functools.cache
def script_source(name: str) -> str:
    """The Lua source of ``stream/storage/scripts/<name>.lua`` (package data), read once."""
    return (resources.files("stream.storage") / "scripts" / f"{name}.lua").read_text()


AUDIENCE_TTL_S = 92 * 86400
RANK_METRICS = ("r", "f", "m")  # the population rank sets behind the RFM thresholds, in script order
OUTBOX_GROUP = "senders"
MAX_ERASE_ATTEMPTS = 20  # erase re-reads the state when a write moved its version in between


@dataclass(frozen=True)
class OutboxEntry:
    id: str
    topic: str
    key: str
    value: bytes


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decoded(raw: Mapping[bytes, bytes]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}


def _thresholds(raw: Any) -> RfmThresholds:
    if not raw:
        return RfmThresholds()

    def parse(name: bytes) -> tuple[float, ...]:
        return tuple(float(x) for x in _text(raw.get(name, b"")).split(",") if x)

    return RfmThresholds(int(raw.get(b"version", b"0")), parse(b"r"), parse(b"f"), parse(b"m"))


CAUGHT = "caught"  # progress of a partition whose last batch read it to its end: holds nothing back
UNSTARTED = "0"  # progress of a partition with messages waiting and none applied yet


def progress_updates(stored: Mapping[str, str], progress: Progress | None) -> dict[str, float | str]:
    """The watermark rule (its one implementation): what a batch's ``progress`` changes in the
    stored progress hash ``stored`` (partition -> value).

    Per partition: read to its end -> ``CAUGHT``; else the highest event time applied from it,
    when higher than the stored one or nothing numeric is stored; else ``UNSTARTED`` when nothing
    numeric is stored; else unchanged (absent from the result). Event times are floats here; the
    store keeps them as ``%.6f``.
    """
    updates: dict[str, float | str] = {}
    for key, (ts, caught) in (progress or {}).items():
        current = stored.get(key)
        numeric = current not in (None, CAUGHT)
        value: float | str | None = None
        if caught:
            value = CAUGHT
        elif ts is not None and (not numeric or ts > float(current or 0)):
            value = ts
        elif not numeric:
            value = UNSTARTED
        if value is not None and value != current:
            updates[key] = value
    return updates


def watermark(clock: float, parts: Mapping[bytes, bytes], progress: Progress | None = None) -> float:
    """The clock held back to the slowest input partition with messages still waiting.

    ``parts`` is the stored progress hash; ``progress`` a batch's update not written yet (applied
    with ``progress_updates``, as ``Store.write`` stores it)."""
    stored = _decoded(parts)
    values: dict[str, float | str] = {**stored, **progress_updates(stored, progress)}
    return min([clock, *(float(v) for v in values.values() if v != CAUGHT)])


class Store:
    """Async Redis access for the worker. All writes go through ``write``."""

    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._write = client.register_script(script_source("write"))
        self._claim = client.register_script(script_source("claim"))
        self._refresh = client.register_script(script_source("refresh_rfm"))
        self._lease = client.register_script(script_source("lease"))
        self._erase = client.register_script(script_source("erase"))
        self._advance_clock = client.register_script(script_source("advance_clock"))
        self.models_version_seen = 0  # model checkpoint version seen by the last ``load``
        self.parts_seen: dict[bytes, bytes] = {}  # partition progress seen by the last ``load`` (watermark)
        self.epoch: bytes | None = None  # this store's epoch as first seen (``ensure_epoch``)
        self.data_lost = False  # the epoch vanished or changed under us: Redis lost its data

    @classmethod
    def from_url(cls, url: str, keys: Keys, **kwargs: Any) -> Store:
        return cls(aioredis.Redis.from_url(url, decode_responses=False, **kwargs), keys)

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        return cls.from_url(settings.resolved_redis_url(), Keys(settings.key_prefix), **settings.redis_client_kwargs())

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings) -> AsyncIterator[Store]:
        """``async with Store.open(settings) as store:`` a store that is closed on exit."""
        store = cls.from_settings(settings)
        try:
            yield store
        finally:
            await store.close()

    async def close(self) -> None:
        await self.client.aclose()

    async def load(self, uids: list[str]) -> tuple[dict[str, LoadedUser], float | None, RfmThresholds]:
        """States of ``uids``, the event-time clock and the RFM thresholds, in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for uid in uids:
            pipe.hmget(self.keys.state(uid), "ver", "blob")
        pipe.smismember(self.keys.erased, [erased_token(uid) for uid in uids] or ["-"])
        pipe.get(self.keys.clock)
        pipe.hgetall(self.keys.rfm_thresholds)
        pipe.hget(self.keys.model_meta, "version")
        pipe.hgetall(self.keys.clock_parts)
        pipe.get(self.keys.epoch)
        replies = await pipe.execute()
        self._check_epoch(replies.pop())
        self.parts_seen = replies.pop()
        self.models_version_seen = int(replies.pop() or 0)
        thresholds, clock = replies.pop(), replies.pop()
        erased = replies.pop()
        loaded: dict[str, LoadedUser] = {}
        for uid, (ver, blob), gone in zip(uids, replies, erased, strict=False):
            state = UserState.from_bytes(blob) if blob else None
            loaded[uid] = LoadedUser(int(ver) if ver else 0, state, bool(gone))
        return loaded, float(clock) if clock else None, _thresholds(thresholds)

    async def ensure_epoch(self) -> bool:
        """Write the store epoch if there is none; True when this call created it (a new or
        emptied store). Every ``load`` then checks that it is still there (``data_lost``)."""
        created = bool(await self.client.set(self.keys.epoch, f"{uuid.uuid4()}@{time.time():.0f}", nx=True))
        epoch = await self.client.get(self.keys.epoch)
        self.epoch = epoch.encode() if isinstance(epoch, str) else epoch
        return created

    def _check_epoch(self, current: bytes | None) -> None:
        if self.epoch is not None and current != self.epoch and not self.data_lost:
            self.data_lost = True
            log.error(
                "the store epoch %s is %s: Redis lost its data (restarted without persistence, flushed "
                "or failed over to an empty replica); see docs/runbook.md 'Redis lost its data'",
                self.keys.epoch,
                "gone" if current is None else "replaced",
            )

    async def write(
        self,
        writes: list[UserWrite],
        clock: float | None,
        stats: dict[str, int],
        progress: Progress | None = None,
    ) -> list[str]:
        """Apply all writes atomically. Returns the user ids whose version changed (nothing written).

        ``progress`` maps an input partition ("topic/partition") to (highest event time applied
        from it in this batch, whether the batch reached its end): see ``watermark``.
        """
        if not writes and clock is None and not stats and not progress:
            return []
        keys = [
            self.keys.due,
            self.keys.inflight,
            self.keys.outbox,
            self.keys.model_examples,
            *(self.keys.rank(m) for m in RANK_METRICS),
            self.keys.clock,
            self.keys.clock_parts,
            self.keys.stats,
            self.keys.erased,
        ]  # the global keys, in the order write.lua reads them
        for w in writes:
            keys.extend((self.keys.state(w.uid), self.keys.profile(w.uid), self.keys.alias(w.uid)))
        audiences: dict[tuple[str, str], int] = {}  # (tag, value) -> its index in KEYS (1-based)

        def audience(pair: tuple[str, str]) -> int:
            if pair not in audiences:
                keys.append(self.keys.audience(*pair))
                audiences[pair] = len(keys)
            return audiences[pair]

        users: list[dict[str, Any]] = []
        blobs: list[bytes] = []
        for w in writes:
            flat: list[str] = []
            for k, v in w.profile.items():
                flat.extend((k, v))
            users.append(
                {
                    "u": w.uid,
                    "h": erased_token(w.uid),
                    "a": w.uid.startswith("anon:"),
                    "al": w.alias_to or False,
                    "v": w.expected_version,
                    "del": w.state is None,
                    "p": flat,
                    "aa": [audience(p) for p in w.audience_add],
                    "ar": [audience(p) for p in w.audience_remove],
                    "due": w.due,
                    "ttl": max(1, w.ttl_s),
                    "rk": list(w.ranks) if w.ranks else False,
                    "tr": [list(t) for t in w.triggers],
                    "ln": w.learn,
                }
            )
            blobs.append(w.encode())
        # Partition progress is decided here (``progress_updates``, the one watermark rule) against
        # the hash the last ``load`` read, and the script only stores it. A worker's batches are
        # sequential (load, then write), so that read is current; only two owners of one partition
        # during a rebalance can interleave, and then the later write wins for that partition
        # until the owner's next batch, as it did when the script merged the values itself.
        parts: list[str] = []
        for key, value in progress_updates(_decoded(self.parts_seen), progress).items():
            parts.extend((key, value if isinstance(value, str) else f"{value:.6f}"))
        meta = {
            "users": users,
            "clock": clock if clock is not None else False,
            "stats": stats or {"_": 0},
            # at least as long as any member written here is kept (lifecycle retention)
            "aud_ttl": max([AUDIENCE_TTL_S, *(w.ttl_s for w in writes)]),
            "parts": parts,
        }
        result = await self._write(keys=keys, args=[orjson.dumps(meta), *blobs])
        return [_text(c) for c in result]

    # -- trigger outbox: a Redis stream consumed by the workers' "senders" group ----------------
    async def ensure_outbox(self) -> None:
        try:
            await self.client.xgroup_create(self.keys.outbox, OUTBOX_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read_outbox(self, consumer: str, count: int, stale_ms: int) -> list[OutboxEntry]:
        """New entries plus entries another sender claimed ``stale_ms`` ago without acking (it died).

        A Redis that lost its structures (restarted empty, flushed) has no consumer group any
        more: the group is created again in place instead of failing every batch that fires.
        """
        try:
            return await self._read_outbox(consumer, count, stale_ms)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            log.warning("the trigger outbox had no consumer group (Redis lost it): creating it again")
            await self.ensure_outbox()
            return await self._read_outbox(consumer, count, stale_ms)

    async def _read_outbox(self, consumer: str, count: int, stale_ms: int) -> list[OutboxEntry]:
        reply: Any = await self.client.xautoclaim(
            self.keys.outbox, OUTBOX_GROUP, consumer, min_idle_time=stale_ms, start_id="0-0", count=count
        )
        claimed = reply[1]
        fresh: Any = await self.client.xreadgroup(OUTBOX_GROUP, consumer, {self.keys.outbox: ">"}, count=count)
        entries = list(claimed) + [e for _, items in fresh for e in items]
        return [OutboxEntry(_text(eid), _text(f[b"t"]), _text(f[b"k"]), f[b"v"]) for eid, f in entries if f is not None]

    async def ack_outbox(self, ids: list[str]) -> None:
        if ids:
            pipe = self.client.pipeline(transaction=False)
            pipe.xack(self.keys.outbox, OUTBOX_GROUP, *ids)
            pipe.xdel(self.keys.outbox, *ids)
            await pipe.execute()

    async def outbox_pending(self) -> int:
        return int(await self.client.xlen(self.keys.outbox))

    # -- models: one trainer (lease) learns from the examples stream and publishes checkpoints ----
    async def acquire_trainer_lease(self, holder: str, lease_ms: int) -> bool:
        return bool(await self._lease(keys=[self.keys.model_trainer], args=[holder, lease_ms]))

    async def read_model_items(self, after: str, count: int) -> list[tuple[str, bytes]]:
        entries: Any = await self.client.xrange(self.keys.model_examples, min=f"({after}", max="+", count=count)
        return [(_text(eid), fields[b"i"]) for eid, fields in entries]

    async def publish_checkpoint(self, raw: bytes, position: str, status: dict[str, Any]) -> int:
        """Store a checkpoint atomically with the stream position it covers; drop learned items."""
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self.keys.model_checkpoint, raw)
        pipe.hset(self.keys.model_meta, mapping={"position": position, "status": orjson.dumps(status)})
        pipe.hincrby(self.keys.model_meta, "version", 1)
        pipe.xtrim(self.keys.model_examples, minid=position)
        replies = await pipe.execute()
        return int(replies[2])

    async def model_checkpoint(self) -> tuple[bytes | None, str, int]:
        """(checkpoint bytes, stream position it covers, version)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.get(self.keys.model_checkpoint)
        pipe.hmget(self.keys.model_meta, "position", "version")
        raw, (position, version) = await pipe.execute()
        return raw, _text(position) if position else "0-0", int(version or 0)

    async def model_status(self) -> dict[str, Any]:
        raw = await self.client.hget(self.keys.model_meta, "status")
        status: dict[str, Any] = orjson.loads(raw) if raw else {}
        return status

    async def save_model_evaluation(self, doc: dict[str, Any]) -> None:
        """Keep the latest offline cutoff evaluation (``portrait evaluate``) for ``models status``."""
        await self.client.hset(self.keys.model_meta, "evaluation", orjson.dumps(doc))

    async def model_evaluation(self) -> dict[str, Any] | None:
        raw = await self.client.hget(self.keys.model_meta, "evaluation")
        doc: dict[str, Any] | None = orjson.loads(raw) if raw else None
        return doc

    async def audience_sizes(self) -> dict[tuple[str, str], int]:
        """(tag, value) -> members, for every audience set."""
        prefix = self.keys.audience_prefix
        keys = [k async for k in self.client.scan_iter(match=prefix + "*", count=1000)]
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.scard(key)
        sizes = await pipe.execute()
        out: dict[tuple[str, str], int] = {}
        for key, size in zip(keys, sizes, strict=True):
            tag, value = _text(key)[len(prefix) :].split(":", 1)
            out[(tag, value)] = int(size)
        return out

    async def claim_due(self, now: float, limit: int, wall_now: float, lease_s: float) -> list[tuple[str, float]]:
        """Claim up to ``limit`` users due at ``now`` (event or wall time) for ``lease_s`` wall seconds.

        Returns (user, due time); a due time of 0 means "re-evaluate now" (forced)."""
        keys = [self.keys.due, self.keys.inflight]
        flat = await self._claim(keys=keys, args=[repr(now), limit, repr(wall_now), repr(wall_now + lease_s)])
        return [(_text(flat[i]), float(flat[i + 1])) for i in range(0, len(flat), 2)]

    async def due_stats(self, now: float) -> tuple[int, float | None]:
        """(users due now or being re-evaluated, score of the oldest due entry)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.zcount(self.keys.due, "-inf", repr(now))
        pipe.zcard(self.keys.inflight)
        pipe.zrange(self.keys.due, 0, 0, withscores=True)
        count, inflight, oldest = await pipe.execute()
        return int(count) + int(inflight), (float(oldest[0][1]) if oldest else None)

    async def refresh_rfm(self, now: float) -> int:
        """Recompute the RFM thresholds; users whose scores a changed threshold can move are made
        due now (re-scored by the time-driven path). Returns the thresholds version."""
        keys = [*(self.keys.rank(m) for m in RANK_METRICS), self.keys.rfm_thresholds, self.keys.due]
        version, _marked = await self._refresh(keys=keys, args=[repr(now)])
        return int(version or 0)

    async def rfm_thresholds(self) -> RfmThresholds:
        return _thresholds(await self.client.hgetall(self.keys.rfm_thresholds))

    async def mark_due_chunk(self, cursor: int, count: int) -> tuple[int, int]:
        """One step of a bounded pass over the due set (every live user): make about ``count``
        users due now (score 0, as ``mark_all_due``); returns (next cursor, 0 when done; users
        marked). ZSCAN returns every member present for the whole pass at least once."""
        cursor, items = await self.client.zscan(self.keys.due, cursor, count=count)
        if items:
            marks: dict[Any, float] = {member: 0.0 for member, _ in items}
            await self.client.zadd(self.keys.due, marks, xx=True, lt=True)
        return int(cursor), len(items)

    async def mark_all_due(self) -> None:
        """Make every live user due now (all scores -> 0) for a full re-evaluation."""
        await self.client.zunionstore(self.keys.due, {self.keys.due: 0})

    async def clock(self) -> float | None:
        raw = await self.client.get(self.keys.clock)
        return float(raw) if raw else None

    async def watermark(self) -> tuple[float, float]:
        """(clock, watermark) in event-time mode; the time-driven path evaluates up to the watermark.

        The clock is the largest event time any worker applied; partitions are consumed at
        different speeds, so a user on a partition that is behind may still have unconsumed events
        older than it. The watermark is the clock held back to the slowest partition that still has
        messages waiting; a partition whose last batch reached its end holds nothing back (a
        time-ordered producer only appends later events).
        """
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.keys.clock)
        pipe.hgetall(self.keys.clock_parts)
        raw, parts = await pipe.execute()
        clock = float(raw) if raw else 0.0
        return clock, watermark(clock, parts)

    async def advance_clock(self, value: float) -> float:
        """Move the event-time clock forward to ``value`` (never backwards); returns the clock."""
        return float(await self._advance_clock(keys=[self.keys.clock], args=[f"{value:.6f}"]))

    # -- privacy ----------------------------------------------------------------------------
    async def erase(self, uid: str) -> list[str]:
        """Remove every key and membership of ``uid`` and put it on the suppression list.

        Returns what was removed. Idempotent: erasing again removes nothing more."""
        for _attempt in range(MAX_ERASE_ATTEMPTS):
            ver, blob = await self.client.hmget(self.keys.state(uid), "ver", "blob")
            state = UserState.from_bytes(blob) if blob else None
            audiences = [self.keys.audience(t, v) for t, v in state.published.items()] if state else []
            merged = [m.subject for m in state.merged] if state else []
            keys = [
                self.keys.state(uid),
                self.keys.profile(uid),
                self.keys.alias(uid),
                self.keys.erased,
                self.keys.due,
                self.keys.inflight,
                *(self.keys.rank(m) for m in RANK_METRICS),
                *audiences,
                *(self.keys.alias(anon) for anon in merged),
            ]  # in the order erase.lua reads them
            args = [uid, erased_token(uid), ver or b"", len(audiences), *(erased_token(anon) for anon in merged)]
            removed = await self._erase(keys=keys, args=args)
            if removed is not None:
                return [_text(r) for r in removed]
        raise RuntimeError(f"erase of {uid}: the state kept changing during {MAX_ERASE_ATTEMPTS} attempts")

    async def aliases(self, subjects: list[str]) -> dict[str, str]:
        """Anonymous subjects already merged -> the user they were merged into."""
        values = await self.client.mget([self.keys.alias(s) for s in subjects])
        return {s: _text(v) for s, v in zip(subjects, values, strict=True) if v is not None}

    async def erased(self, uids: list[str]) -> set[str]:
        """Which of ``uids`` are on the suppression list."""
        if not uids:
            return set()
        flags = await self.client.smismember(self.keys.erased, [erased_token(u) for u in uids])
        return {u for u, flag in zip(uids, flags, strict=True) if flag}

    async def profile(self, uid: str) -> dict[str, str]:
        raw = await self.client.hgetall(self.keys.profile(uid))
        return {_text(k): _text(v) for k, v in raw.items()}

    async def stats(self) -> dict[str, int]:
        raw = await self.client.hgetall(self.keys.stats)
        return {_text(k): int(v) for k, v in raw.items() if k != b"_"}
