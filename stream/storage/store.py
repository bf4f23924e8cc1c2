"""Redis I/O: one round trip to load a batch's users, one atomic script to write them.

The write script checks every user's state version first (compare-and-set) and writes nothing if
any changed since it was read, so two workers briefly owning the same partition during a
rebalance cannot interleave updates: the loser re-reads and recomputes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from stream.core.writes import UserWrite
from stream.settings import Settings
from stream.storage.keys import Keys, erased_token
from stream.tagging.engine import RfmThresholds
from stream.tagging.state import UserState

WRITE_SCRIPT = """
local base = ARGV[1]
local meta = cjson.decode(ARGV[2])
local conflicts = {}
for i, u in ipairs(meta.users) do
  local cur = redis.call('HGET', base .. ':{' .. u.u .. '}:state', 'ver')
  local curv = 0
  if cur then curv = tonumber(cur) end
  -- an erasure since the read counts as a change: the retry sees the user erased, writes nothing
  if curv ~= u.v or redis.call('SISMEMBER', base .. ':privacy:erased', u.h) == 1 then
    table.insert(conflicts, u.u)
  elseif u.a and not u.del and redis.call('EXISTS', base .. ':{' .. u.u .. '}:alias') == 1 then
    -- merged into a known user since the read: its events now belong there
    table.insert(conflicts, u.u)
  end
end
if #conflicts > 0 then return conflicts end
local due = base .. ':due'
local inflight = base .. ':due:inflight'
for i, u in ipairs(meta.users) do
  local skey = base .. ':{' .. u.u .. '}:state'
  local pkey = base .. ':{' .. u.u .. '}:profile'
  redis.call('ZREM', inflight, u.u)
  if u.del then
    redis.call('DEL', skey, pkey)
    redis.call('ZREM', due, u.u)
    if u.al then
      redis.call('SET', base .. ':{' .. u.u .. '}:alias', u.al, 'EX', meta.aud_ttl)
    end
  else
    redis.call('HSET', skey, 'ver', u.v + 1, 'blob', ARGV[2 + i])
    redis.call('EXPIRE', skey, u.ttl)
    redis.call('DEL', pkey)
    if #u.p > 0 then
      redis.call('HSET', pkey, unpack(u.p))
      redis.call('EXPIRE', pkey, u.ttl)
    end
    redis.call('ZADD', due, u.due, u.u)
  end
  for _, tv in ipairs(u.ar) do
    redis.call('SREM', base .. ':aud:' .. tv[1] .. ':' .. tv[2], u.u)
  end
  for _, tv in ipairs(u.aa) do
    local akey = base .. ':aud:' .. tv[1] .. ':' .. tv[2]
    redis.call('SADD', akey, u.u)
    redis.call('EXPIRE', akey, meta.aud_ttl)
  end
  for _, tr in ipairs(u.tr) do
    redis.call('XADD', base .. ':outbox', '*', 't', tr[1], 'k', u.u, 'v', tr[2])
  end
  for _, item in ipairs(u.ln) do
    redis.call('XADD', base .. ':models:examples', '*', 'i', item)
  end
  local metrics = {'r', 'f', 'm'}
  for j, m in ipairs(metrics) do
    local rkey = base .. ':rank:' .. m
    if type(u.rk) == 'table' then
      redis.call('ZADD', rkey, u.rk[j], u.u)
      redis.call('EXPIRE', rkey, meta.aud_ttl)
    else
      redis.call('ZREM', rkey, u.u)
    end
  end
end
-- Per input partition progress for the event-time watermark: the highest event time applied from a
-- partition that still has unconsumed messages, or 'caught' when its last batch reached the end.
local pkey = base .. ':clock:parts'
for _, p in ipairs(meta.parts or {}) do
  local cur = redis.call('HGET', pkey, p.k)
  local curt = tonumber(cur)
  if p.c then
    redis.call('HSET', pkey, p.k, 'caught')
  elseif type(p.ts) == 'number' and (curt == nil or p.ts > curt) then
    redis.call('HSET', pkey, p.k, string.format('%.6f', p.ts))
  elseif curt == nil then
    redis.call('HSET', pkey, p.k, '0')
  end
end
if type(meta.clock) == 'number' then
  local ckey = base .. ':clock'
  local cur = tonumber(redis.call('GET', ckey) or '0')
  if meta.clock > cur then redis.call('SET', ckey, string.format('%.6f', meta.clock)) end
end
for k, n in pairs(meta.stats) do
  redis.call('HINCRBY', base .. ':stats', k, n)
end
return {}
"""

# Erase one user everywhere the worker keeps them, and remember the erasure (a hash of the id) so
# late or replayed events cannot bring the profile back. The caller read the state (compressed,
# so opaque here) at version ARGV[4] and passes its audience keys and merged anonymous ids; a write
# since then makes the script answer false and the caller reads again.
ERASE_SCRIPT = """
local base, uid, token, ver = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local skey = base .. ':{' .. uid .. '}:state'
if (redis.call('HGET', skey, 'ver') or '') ~= ver then return false end
local audiences, merged = cjson.decode(ARGV[5]), cjson.decode(ARGV[6])
local removed = {}
local doomed = {skey, base .. ':{' .. uid .. '}:profile', base .. ':{' .. uid .. '}:alias'}
for _, akey in ipairs(audiences) do
  if redis.call('SREM', akey, uid) == 1 then table.insert(removed, akey) end
end
-- anonymous ids merged into the user: their aliases go, and they are suppressed too
for _, anon in ipairs(merged) do
  table.insert(doomed, base .. ':{' .. anon .. '}:alias')
  redis.call('SADD', base .. ':privacy:erased', redis.sha1hex(anon))
end
for _, key in ipairs(doomed) do
  if redis.call('DEL', key) == 1 then table.insert(removed, key) end
end
local zkeys = {base .. ':due', base .. ':due:inflight', base .. ':rank:r', base .. ':rank:f', base .. ':rank:m'}
for _, zkey in ipairs(zkeys) do
  if redis.call('ZREM', zkey, uid) == 1 then table.insert(removed, zkey .. ' member') end
end
redis.call('SADD', base .. ':privacy:erased', token)
return removed
"""

# Claimed users move from the due set to an in-flight set with a wall-clock lease; every write of
# the user removes it from there. A worker that dies mid-evaluation leaves its lease to expire,
# and the next claim puts those users back at the head of the due set.
CLAIM_SCRIPT = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
for _, u in ipairs(expired) do
  redis.call('ZREM', KEYS[2], u)
  redis.call('ZADD', KEYS[1], 0, u)
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
for i = 1, #due, 2 do
  redis.call('ZREM', KEYS[1], due[i])
  redis.call('ZADD', KEYS[2], ARGV[4], due[i])
end
return due
"""

REFRESH_RFM_SCRIPT = """
local base = ARGV[1]
local out = {}
for _, m in ipairs({'r', 'f', 'm'}) do
  local key = base .. ':rank:' .. m
  local n = redis.call('ZCARD', key)
  local ts = {}
  if n > 0 then
    for k = 1, 4 do
      local idx = math.ceil(k * n / 5) - 1
      local r = redis.call('ZRANGE', key, idx, idx, 'WITHSCORES')
      table.insert(ts, r[2])
    end
  end
  out[m] = table.concat(ts, ',')
end
local tkey = base .. ':rfm:thresholds'
local old = redis.call('HMGET', tkey, 'r', 'f', 'm')
if old[1] ~= out.r or old[2] ~= out.f or old[3] ~= out.m then
  redis.call('HSET', tkey, 'r', out.r, 'f', out.f, 'm', out.m, 'computed_at', ARGV[2])
  redis.call('HINCRBY', tkey, 'version', 1)
end
return redis.call('HGET', tkey, 'version')
"""

# Take or renew a lease: succeeds when free or already ours.
LEASE_SCRIPT = """
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

AUDIENCE_TTL_S = 92 * 86400
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


def _thresholds(raw: Any) -> RfmThresholds:
    if not raw:
        return RfmThresholds()

    def parse(name: bytes) -> tuple[float, ...]:
        return tuple(float(x) for x in _text(raw.get(name, b"")).split(",") if x)

    return RfmThresholds(int(raw.get(b"version", b"0")), parse(b"r"), parse(b"f"), parse(b"m"))


Progress = dict[str, tuple[float | None, bool]]  # partition -> (highest event time applied, read to end)


def watermark(clock: float, parts: Mapping[bytes, bytes], progress: Progress | None = None) -> float:
    """The clock held back to the slowest input partition with messages still waiting.

    ``parts`` is the stored progress hash; ``progress`` a batch's update not written yet (the
    same rules as the write script)."""
    values = {k.decode(): v.decode() for k, v in parts.items()}
    for key, (ts, caught) in (progress or {}).items():
        current = values.get(key)
        if caught:
            values[key] = "caught"
        elif ts is not None and (current in (None, "caught") or ts > float(current or 0)):
            values[key] = repr(ts)
        elif current in (None, "caught"):
            values[key] = "0"
    return min([clock, *(float(v) for v in values.values() if v != "caught")])


@dataclass
class LoadedUser:
    version: int
    state: UserState | None
    erased: bool = False  # on the suppression list: nothing of this user may be written again


class Store:
    """Async Redis access for the worker. All writes go through ``write``."""

    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._write = client.register_script(WRITE_SCRIPT)
        self._claim = client.register_script(CLAIM_SCRIPT)
        self._refresh = client.register_script(REFRESH_RFM_SCRIPT)
        self._lease = client.register_script(LEASE_SCRIPT)
        self._erase = client.register_script(ERASE_SCRIPT)
        self.models_version_seen = 0  # model checkpoint version seen by the last ``load``
        self.parts_seen: dict[bytes, bytes] = {}  # partition progress seen by the last ``load`` (watermark)

    @classmethod
    def from_url(cls, url: str, keys: Keys, **kwargs: Any) -> Store:
        return cls(aioredis.Redis.from_url(url, decode_responses=False, **kwargs), keys)

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        return cls.from_url(settings.resolved_redis_url(), Keys(settings.key_prefix), **settings.redis_client_kwargs())

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
        replies = await pipe.execute()
        self.parts_seen = replies.pop()
        self.models_version_seen = int(replies.pop() or 0)
        thresholds, clock = replies.pop(), replies.pop()
        erased = replies.pop()
        loaded: dict[str, LoadedUser] = {}
        for uid, (ver, blob), gone in zip(uids, replies, erased, strict=False):
            state = UserState.from_bytes(blob) if blob else None
            loaded[uid] = LoadedUser(int(ver) if ver else 0, state, bool(gone))
        return loaded, float(clock) if clock else None, _thresholds(thresholds)

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
                    "aa": [list(p) for p in w.audience_add],
                    "ar": [list(p) for p in w.audience_remove],
                    "due": w.due,
                    "ttl": max(1, w.ttl_s),
                    "rk": list(w.ranks) if w.ranks else False,
                    "tr": [list(t) for t in w.triggers],
                    "ln": w.learn,
                }
            )
            blobs.append(w.state.to_bytes() if w.state is not None else b"")
        meta = {"users": users, "clock": clock if clock is not None else False, "stats": stats or {}}
        meta["aud_ttl"] = AUDIENCE_TTL_S
        if progress:
            meta["parts"] = [{"k": k, "ts": ts if ts is not None else False, "c": c} for k, (ts, c) in progress.items()]
        if not stats:
            meta["stats"] = {"_": 0}
        result = await self._write(args=[self.keys.base, orjson.dumps(meta), *blobs])
        return [_text(c) for c in result]

    # -- trigger outbox: a Redis stream consumed by the workers' "senders" group ----------------
    async def ensure_outbox(self) -> None:
        try:
            await self.client.xgroup_create(self.keys.outbox, OUTBOX_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read_outbox(self, consumer: str, count: int, stale_ms: int) -> list[OutboxEntry]:
        """New entries plus entries another sender claimed ``stale_ms`` ago without acking (it died)."""
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

    async def audience_sizes(self) -> dict[tuple[str, str], int]:
        """(tag, value) -> members, for every audience set."""
        prefix = f"{self.keys.base}:aud:"
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
        version = await self._refresh(args=[self.keys.base, repr(now)])
        return int(version or 0)

    async def rfm_thresholds(self) -> RfmThresholds:
        return _thresholds(await self.client.hgetall(self.keys.rfm_thresholds))

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
        script = (
            "local c = tonumber(redis.call('GET', KEYS[1]) or '0') if tonumber(ARGV[1]) > c then "
            "redis.call('SET', KEYS[1], ARGV[1]) return ARGV[1] end return tostring(c)"
        )
        return float(await self.client.eval(script, 1, self.keys.clock, f"{value:.6f}"))

    # -- privacy ----------------------------------------------------------------------------
    async def erase(self, uid: str) -> list[str]:
        """Remove every key and membership of ``uid`` and put it on the suppression list.

        Returns what was removed. Idempotent: erasing again removes nothing more."""
        for _attempt in range(MAX_ERASE_ATTEMPTS):
            ver, blob = await self.client.hmget(self.keys.state(uid), "ver", "blob")
            state = UserState.from_bytes(blob) if blob else None
            audiences = [self.keys.audience(t, v) for t, v in state.published.items()] if state else []
            merged = [str(m[0]) for m in state.merged] if state else []
            args = [self.keys.base, uid, erased_token(uid), ver or b"", orjson.dumps(audiences), orjson.dumps(merged)]
            removed = await self._erase(args=args)
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
