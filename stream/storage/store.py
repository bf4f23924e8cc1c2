"""Redis I/O: one round trip to load a batch's users, one pipelined script per state shard to
write them, one small script for what a batch records once per store.

The scripts are ``stream/storage/scripts/*.lua``; every key they touch is built by ``Keys`` and
passed in ``KEYS`` (each file's header states its KEYS/ARGV contract). Standalone Redis and a
Redis Cluster run the same code (``stream.storage.client``); the layout is in docs/redis-keys.md.

The write script checks every user's state version first (compare-and-set) and writes nothing of
its shard if any changed since it was read, so two workers briefly owning the same partition
during a rebalance cannot interleave updates: the loser re-reads and recomputes. A batch spanning
shards is atomic per shard: on a conflict the other shards' users are written, and the retry
finds their events applied (redelivered). A merge across shards is ordered so that nothing is
lost whatever fails in between (``write``).
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import orjson
from redis.exceptions import ResponseError

# re-exported: the types of Store.load and Store.write (defined in the pure core)
from stream.core.progress import Ends as Ends, Progress as Progress
from stream.core.steps import Rescore
from stream.core.writes import LoadedUser as LoadedUser, UserWrite
from stream.errors import ConfigError
from stream.settings import Settings
from stream.storage.client import (
    SCRIPT_NAMES as SCRIPT_NAMES,
    Call,
    Client,
    connect,
    connect_settings,
    decode_hash,
    decode_text,
    run_script,
    run_scripts,
    script_source as script_source,
)
from stream.storage.keys import (
    PREVIOUS_SCHEMAS,
    SCHEMA,
    Keys,
    erased_token,
    layout_shards,
    layout_value,
    shard_of_token,
)
from stream.storage.quantiles import FETCH_ALL, Request, SetsChanged, score_text, select
from stream.storage.reads import Pair, Reads
from stream.tagging.engine import RfmThresholds, rfm_segment, score
from stream.tagging.state import UserState

log = logging.getLogger(__name__)

AUDIENCE_TTL_S = 92 * 86400
RANK_METRICS = ("r", "f", "m")  # the population rank sets behind the RFM thresholds, in script order
OUTBOX_GROUP = "senders"
MAX_ERASE_ATTEMPTS = 20  # erase re-reads the state when a write moved its version in between
MODEL_READ_MIN_SHARE = 64  # model items read per shard at least (read_model_items)
RFM_SELECT_ATTEMPTS = 5  # refresh_rfm starts over when batches changed the rank sets under its selection
# refresh_rfm's ``settle``: evaluates the given users' due points (shard -> users), says whether it deleted one
Settle = Callable[[dict[int, list[str]]], Awaitable[bool]]
# Every shard's due set and outbox are visited at least this often (wall seconds); in between,
# claims visit the shards the due index says are due and deliveries the shards this worker wrote
# triggers to. The sweep also returns expired claim leases and a dead sender's outbox entries.
SWEEP_S = 5.0


@dataclass(frozen=True)
class OutboxEntry:
    id: str  # "<shard>/<stream entry id>"
    topic: str
    key: str
    value: bytes


def _cuts(text: str) -> tuple[float, ...]:
    """The cut points of one metric as stored (comma-separated)."""
    return tuple(float(x) for x in text.split(",") if x)


def _segment_moved(
    before: RfmThresholds, after: RfmThresholds, segments: frozenset[str]
) -> Callable[[float, float], bool]:
    """Whether a user of R and F values changes ``rfm_segment`` from ``before``'s cut points to
    ``after``'s, into or out of one of ``segments`` (the only change a rule testing them sees)."""

    def moved(r: float, f: float) -> bool:
        was = rfm_segment(score(r, before.r), score(f, before.f))
        becomes = rfm_segment(score(r, after.r), score(f, after.f))
        return was != becomes and bool({was, becomes} & segments)

    return moved


def _thresholds(raw: Any) -> RfmThresholds:
    if not raw:
        return RfmThresholds()
    r, f, m = (_cuts(decode_text(raw.get(name, b""))) for name in (b"r", b"f", b"m"))
    return RfmThresholds(int(raw.get(b"version", b"0")), r, f, m)


CAUGHT = "caught"  # progress of a partition whose last batch read it to its end: holds nothing back
UNSTARTED = "0"  # progress of a partition with messages waiting and none applied yet
# Second field per partition ("<topic/partition>#"): "<next offset> <highest event time>" once a
# batch of it is written: every offset before it is handled, no later message is older than that
# time. Checked against fresh end offsets (``watermark`` with ``ends``), it tells exactly whether
# the partition still has messages waiting, where CAUGHT only says it had none at the consumer's
# last fetch.
POSITION = "#"


def _numeric(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # CAUGHT


def progress_updates(stored: Mapping[str, str], progress: Progress | None) -> dict[str, float | str]:
    """The watermark rule (its one implementation): what a batch's ``progress`` changes in the
    stored progress hash ``stored`` (partition -> value).

    Per partition: read to its end -> ``CAUGHT``; else the highest event time applied from it,
    when higher than the stored one or nothing numeric is stored; else ``UNSTARTED`` when nothing
    numeric is stored; else unchanged (absent from the result). Event times are floats here; the
    store keeps them as ``%.6f``. With a next offset, the partition's position field
    (``POSITION``) too: that offset and the highest event time applied from it so far (stored or
    now), as ``"<offset> <time>"`` (``"<offset>"`` while none is known).
    """
    updates: dict[str, float | str] = {}
    for key, entry in (progress or {}).items():
        ts, caught = entry[0], entry[1]
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
        if len(entry) > 2 and entry[2] is not None:
            _, reached = _position(stored.get(key + POSITION))
            highest = max([t for t in (ts, reached, _numeric(current)) if t is not None], default=None)
            updates[key + POSITION] = f"{entry[2]}" if highest is None else f"{entry[2]} {highest:.6f}"
    return updates


def _position(value: str | None) -> tuple[int | None, float | None]:
    """(next offset, highest event time) of a stored position field (None: not known)."""
    if not value:
        return None, None
    offset, _, ts = value.partition(" ")
    return int(offset), float(ts) if ts else None


def watermark(
    clock: float, parts: Mapping[bytes, bytes], progress: Progress | None = None, ends: Ends | None = None
) -> float:
    """The clock held back to the slowest input partition with messages still waiting.

    ``parts`` is the stored progress hash; ``progress`` a batch's update not written yet (applied
    with ``progress_updates``, as ``Store.write`` stores it).

    ``ends``: the log start and end offsets of every input partition, fetched after ``clock`` and
    ``parts`` were read. Then the rule is exact (a time-ordered producer only appends messages at
    least as late as everything appended before): a partition holds nothing back when its stored
    next offset reaches its end offset (or its log is empty); else it holds the watermark back to
    the highest event time applied from it (0 when none is known), whatever its CAUGHT flag says
    (that flag is as old as the consumer's last fetch, and a worker that has not yet reported a
    partition with messages waiting must hold the clock back too). Without ``ends`` the CAUGHT
    flags are trusted (callers that read a finite input to its end: the offline driver)."""
    stored = decode_hash(parts)
    if ends is not None:
        marks = [clock]
        for key, (begin, end) in ends.items():
            offset, reached = _position(stored.get(key + POSITION))
            if end <= begin or (offset is not None and offset >= end):
                continue
            held = [t for t in (reached, _numeric(stored.get(key))) if t is not None]
            marks.append(max(held, default=0.0))
        return min(marks)
    return min([clock, *partition_times(parts, progress).values()])


def partition_times(parts: Mapping[bytes, bytes], progress: Progress | None = None) -> dict[str, float]:
    """Per input partition in the stored progress hash ``parts`` (with a batch's ``progress`` not
    written yet): how far it is known to have been read, by its CAUGHT flag (``inf``: read to the
    end of its last fetch) or else the highest event time applied from it (0: none yet). The
    watermark without end offsets is the lowest of them (``watermark``)."""
    stored = decode_hash(parts)
    values: dict[str, float | str] = {**stored, **progress_updates(stored, progress)}
    return {k: math.inf if v == CAUGHT else float(v) for k, v in values.items() if not k.endswith(POSITION)}


def _by_shard(keys: Keys, subjects: Iterable[str]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = defaultdict(list)
    for s in subjects:
        out[keys.shard(s)].append(s)
    return out


def _ask_erased(pipe: Any, keys: Keys, by_shard: Mapping[int, list[str]]) -> None:
    """Queue on ``pipe`` one SMISMEMBER per shard of ``by_shard`` (``_by_shard``): which of its
    subjects are on the suppression list (``_erased_among`` reads the replies)."""
    for shard, members in by_shard.items():
        pipe.smismember(keys.erased(shard), [erased_token(u) for u in members])


def _erased_among(by_shard: Mapping[int, list[str]], replies: Iterable[list[Any]]) -> set[str]:
    return {
        u
        for members, flags in zip(by_shard.values(), replies, strict=True)
        for u, flag in zip(members, flags, strict=True)
        if flag
    }


def _examples_position(raw: str, shards: int) -> dict[int, str]:
    """The per-shard model-example positions a trainer position string stands for ("0-0": none)."""
    out: dict[int, str] = {}
    for part in raw.split(","):
        shard, sep, eid = part.partition("/")
        if sep and shard.isdigit() and int(shard) < shards:
            out[int(shard)] = eid
    return out


def _position_text(positions: Mapping[int, str]) -> str:
    return ",".join(f"{s}/{eid}" for s, eid in sorted(positions.items())) or "0-0"


@dataclass
class ModelItems:
    """Model items read in stream order (``Store.read_model_items``): (shard, entry id, item),
    and the trainer position after any prefix of them."""

    items: list[tuple[int, str, bytes]]
    positions: dict[int, str]  # per shard: the last entry id covered so far (advanced below)
    more: bool = False  # items are left after these
    covered: int = 0

    def position_after(self, n: int) -> str:
        """The position covering the first ``n`` items (``n`` never below an earlier call's)."""
        for shard, eid, _ in self.items[self.covered : n]:
            self.positions[shard] = eid
        self.covered = max(self.covered, n)
        return _position_text(self.positions)


def _entry_order(eid: str) -> tuple[int, int]:
    ms, _, seq = eid.partition("-")
    return int(ms), int(seq or 0)


def position_covers(position: str, head: str, shards: int) -> bool:
    """Whether the trainer position ``position`` covers every model item up to ``head`` (both
    as ``read_model_items`` / ``model_examples_head`` give them)."""
    have = _examples_position(position, shards)
    return all(
        s in have and _entry_order(have[s]) >= _entry_order(eid) for s, eid in _examples_position(head, shards).items()
    )


class Store:
    """Async Redis access for the worker. All writes go through ``write``; reads outside the
    batch path go through ``reads`` (the one reader, on this store's adopted layout), which the
    read methods below delegate to."""

    def __init__(self, client: Client, keys: Keys, wait_replicas: int = 0, wait_timeout_ms: int = 1000) -> None:
        self.client = client
        self.keys = keys
        self.reads = Reads(client, lambda: self.keys)  # the keys as adopted (``adopt_layout``)
        # a batch's write returns only once this many replicas of every master it wrote hold it
        self._wait = (wait_replicas, wait_timeout_ms) if wait_replicas else None
        self.models_version_seen = 0  # model checkpoint version seen by the last ``load``
        self.parts_seen: dict[bytes, bytes] = {}  # partition progress seen by the last ``load`` (watermark)
        self.epoch: bytes | None = None  # this store's epoch as first seen (``ensure_epoch``)
        self.data_lost = False  # the epoch vanished or changed under us: Redis lost its data
        self._adopted = False
        # read_model_items: per shard, (the position they follow, entries read and not yet returned)
        self._read_ahead: dict[int, tuple[str, list[tuple[tuple[int, int], int, str, bytes]]]] = {}
        self._due_swept_at = float("-inf")  # wall time of the last claim over every shard
        self._ranked: list[int] | None = None  # ranked users per metric at this store's last refresh
        self._outbox_swept_at = float("-inf")  # monotonic time of the last read of every outbox
        self._outbox_dirty: set[int] = set()  # shards this worker wrote triggers to since

    @classmethod
    def from_url(cls, url: str, keys: Keys, *, cluster: bool = False, **kwargs: Any) -> Store:
        return cls(connect(url, cluster, **kwargs), keys)

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        keys = Keys(settings.key_prefix, settings.redis_shards)
        return cls(connect_settings(settings), keys, settings.redis_wait_replicas, settings.redis_wait_timeout_ms)

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings) -> AsyncIterator[Store]:
        """``async with Store.open(settings) as store:`` a store on the recorded layout (refusing
        an older one), closed on exit."""
        store = cls.from_settings(settings)
        try:
            await store.adopt_layout()
            yield store
        finally:
            await store.close()

    async def close(self) -> None:
        await self.client.aclose()

    # -- layout and epoch ---------------------------------------------------------------
    async def adopt_layout(self, refuse_previous: bool = True) -> int:
        """Use the shard count this store was created with (recording ours if it is new); refuse a
        Redis that holds an older layout under the same prefix. Returns the shard count."""
        if self._adopted and refuse_previous:
            return self.keys.shards
        pipe = self.client.pipeline(transaction=False)
        for key in self.keys.previous_epochs():
            pipe.exists(key)
        pipe.set(self.keys.layout, layout_value(self.keys.shards), nx=True)
        pipe.get(self.keys.layout)
        *old, _, recorded = await pipe.execute()
        for schema_key, present in zip(self.keys.previous_epochs(), old, strict=True):
            if present and refuse_previous:
                schema = schema_key.split(":")[-3]
                raise ConfigError(
                    f"Redis holds a Portrait store of layout {schema} under prefix {self.keys.prefix!r}; this "
                    f"version uses layout {SCHEMA}, which is rebuilt by a replay: see docs/redis-keys.md "
                    f"'From v1' (`portrait migrate --drop-v1` removes the old keys)"
                )
        text = decode_text(recorded or b"")
        shards = layout_shards(text)
        if shards <= 0:
            raise ConfigError(f"the store layout {self.keys.layout} is {text!r}, not shards=N")
        if shards != self.keys.shards:
            log.info(
                "store %s has %d state shards (PORTRAIT_REDIS_SHARDS=%d applies to new stores)",
                self.keys.base,
                shards,
                self.keys.shards,
            )
            self.keys = replace(self.keys, shards=shards)
        self._adopted = refuse_previous
        return shards

    async def previous_layouts(self) -> dict[str, int]:
        """Older layouts under this prefix: schema -> how many of its keys are stored."""
        found: dict[str, int] = {}
        for schema in PREVIOUS_SCHEMAS:
            n = 0
            async for _ in self.client.scan_iter(match=self.keys.previous_pattern(schema), count=2000):
                n += 1
            if n:
                found[schema] = n
        return found

    async def drop_previous(self) -> int:
        """Delete every key of the older layouts under this prefix; returns how many. Their
        suppression lists (hashes of erased ids) are first carried into this layout's shards, so
        a replay cannot bring an erased user back."""
        await self.adopt_layout(refuse_previous=False)
        carry = self.client.pipeline(transaction=False)
        for schema in PREVIOUS_SCHEMAS:
            async for token in self.client.sscan_iter(self.keys.previous_erased(schema), count=1000):
                text = decode_text(token)
                carry.sadd(self.keys.erased(shard_of_token(text, self.keys.shards)), text)
        if len(carry):
            await carry.execute()
        return sum([await self._unlink_matching(self.keys.previous_pattern(schema)) for schema in PREVIOUS_SCHEMAS])

    async def ensure_epoch(self) -> bool:
        """Write the store epoch if there is none; True when this call created it (a new or
        emptied store). Every ``load`` then checks that it is still there (``data_lost``)."""
        await self.adopt_layout()
        created = bool(await self.client.set(self.keys.epoch, f"{uuid.uuid4()}@{time.time():.0f}", nx=True))
        epoch = await self.client.get(self.keys.epoch)
        self.epoch = epoch.encode() if isinstance(epoch, str) else epoch
        return created

    def _check_epoch(self, current: bytes | None, expected: bytes | None) -> None:
        """``expected``: the epoch known when the read was sent (a ``load`` sent while
        ``ensure_epoch`` was creating it, at startup, read none: that is no loss)."""
        if expected is not None and current != expected and not self.data_lost:
            self.data_lost = True
            log.error(
                "the store epoch %s is %s: Redis lost its data (restarted without persistence, flushed "
                "or failed over to an empty replica); see docs/runbook.md 'Redis lost its data'",
                self.keys.epoch,
                "gone" if current is None else "replaced",
            )

    # -- the batch path -------------------------------------------------------------------
    async def load(self, uids: list[str]) -> tuple[dict[str, LoadedUser], float | None, RfmThresholds]:
        """States of ``uids``, the event-time clock and the RFM thresholds, in one round trip."""
        expected_epoch = self.epoch
        pipe = self.client.pipeline(transaction=False)
        for uid in uids:
            pipe.hmget(self.keys.state(uid), "ver", "blob")
        shards = _by_shard(self.keys, uids)
        _ask_erased(pipe, self.keys, shards)
        pipe.get(self.keys.clock)
        pipe.hgetall(self.keys.rfm_thresholds)
        pipe.hget(self.keys.model_meta, "version")
        pipe.hgetall(self.keys.clock_parts)
        pipe.get(self.keys.epoch)
        replies = await pipe.execute()
        self._check_epoch(replies.pop(), expected_epoch)
        self.parts_seen = replies.pop()
        self.models_version_seen = int(replies.pop() or 0)
        thresholds, clock = replies.pop(), replies.pop()
        erased = _erased_among(shards, replies[len(uids) :])
        loaded: dict[str, LoadedUser] = {}
        for uid, (ver, blob) in zip(uids, replies[: len(uids)], strict=True):
            state = UserState.from_bytes(blob) if blob else None
            loaded[uid] = LoadedUser(int(ver) if ver else 0, state, uid in erased)
        return loaded, float(clock) if clock else None, _thresholds(thresholds)

    async def write(
        self,
        writes: list[UserWrite],
        clock: float | None,
        stats: dict[str, int],
        progress: Progress | None = None,
    ) -> list[str]:
        """Apply the writes, one atomic script per state shard. Returns the users that were not
        written because a version changed (the whole of their shard's part is then unwritten).

        ``stats`` is the batch's counters: each write's ``counters`` are added by its shard's
        script, the rest (``stats`` minus those) once per store after every shard was written,
        with the clock and ``progress`` ("topic/partition" -> (highest event time applied from
        it in this batch, whether the batch reached its end): see ``watermark``).

        A merge across shards (a write with ``alias_to`` whose anonymous subject is in another
        shard than its user) goes in three ordered steps, so that a failure or crash anywhere
        loses nothing: the anonymous subject is fenced (its alias set, ``fence.lua``: no one can
        write it any more), then the user's shard is written, then the anonymous state deleted.
        The next batch with the link or an event of the anonymous id finds a fenced subject whose
        state is still there and completes the merge (``stream.core.identity.resolve``: pending
        merges and leftovers).
        """
        if not writes and clock is None and not stats and not progress:
            return []
        remote = [w for w in writes if w.alias_to and self.keys.shard(w.uid) != self.keys.shard(w.alias_to)]
        if remote:
            fences: list[Call] = [
                (
                    "fence",
                    [self.keys.state(w.uid), self.keys.alias(w.uid), self.keys.erased(self.keys.shard(w.uid))],
                    [w.expected_version, erased_token(w.uid), w.alias_to, AUDIENCE_TTL_S],
                )
                for w in remote
            ]
            fenced = await run_scripts(self.client, fences, self._wait)
            refused = [w.uid for w, ok in zip(remote, fenced, strict=True) if not ok]
            if refused:  # nothing was written
                return list(dict.fromkeys([*refused, *(w.uid for w in writes)]))
        later = {id(w) for w in remote}
        due: dict[int, float] = {}  # shard -> earliest due score written there (the due index)
        conflicts = await self._write_shards([w for w in writes if id(w) not in later], due)
        if conflicts:  # the remote deletions were not attempted: unwritten too
            conflicts = list(dict.fromkeys([*conflicts, *(w.uid for w in remote)]))
        elif remote:
            conflicts = await self._write_shards(remote, due)  # fenced: only an erasure can intervene
        if conflicts:
            if due:  # the shards that were written still move the due index
                await self.client.zadd(self.keys.due_index, {str(s): d for s, d in due.items()}, lt=True)
            return conflicts
        rest = dict(stats)
        for w in writes:
            for key, n in w.counters.items():
                rest[key] = rest.get(key, 0) - n
        rest = {k: n for k, n in rest.items() if n}
        parts: list[str] = []
        # Partition progress is decided here (``progress_updates``, the one watermark rule) against
        # the hash the last ``load`` read, and the script only stores it. A worker's batches are
        # sequential (load, then write), so that read is current; only two owners of one partition
        # during a rebalance can interleave, and then the later write wins for that partition
        # until the owner's next batch.
        for key, value in progress_updates(decode_hash(self.parts_seen), progress).items():
            parts.extend((key, value if isinstance(value, str) else f"{value:.6f}"))
        if rest or parts or clock is not None or due:
            flat_due = [x for s, d in sorted(due.items()) for x in (str(s), repr(d))]
            meta = {
                "clock": clock if clock is not None else False,
                "stats": rest or {"_": 0},
                "parts": parts,
                "due": flat_due,
            }
            keys = [self.keys.clock, self.keys.clock_parts, self.keys.stats, self.keys.due_index]
            await run_scripts(self.client, [("finish", keys, [orjson.dumps(meta)])], self._wait)
        return []

    async def _write_shards(self, writes: list[UserWrite], due: dict[int, float]) -> list[str]:
        """Write ``writes``, one script per shard; returns the users of the shards that conflicted
        and records in ``due`` the earliest due score of each shard that was written."""
        by_shard: dict[int, list[UserWrite]] = defaultdict(list)
        for w in writes:
            by_shard[self.keys.shard(w.uid)].append(w)
        parts = sorted(by_shard.items())
        calls = [self._shard_call(shard, part) for shard, part in parts]
        conflicts: list[str] = []
        for (shard, part), reply in zip(parts, await run_scripts(self.client, calls, self._wait), strict=True):
            if reply:
                conflicts.extend(w.uid for w in part)
                continue
            scores = [w.due for w in part if w.state is not None]
            if scores:
                due[shard] = min(due.get(shard, scores[0]), *scores)
            if any(w.triggers for w in part):
                self._outbox_dirty.add(shard)
        return conflicts

    def _shard_call(self, shard: int, writes: list[UserWrite]) -> Call:
        k = self.keys
        keys = [k.due(shard), k.inflight(shard), k.outbox(shard), k.model_examples(shard)]
        keys += [*(k.rank(shard, m) for m in RANK_METRICS), k.shard_stats(shard), k.erased(shard)]
        for w in writes:
            keys.extend((k.state(w.uid), k.profile(w.uid), k.alias(w.uid)))
        audiences: dict[tuple[str, str], int] = {}  # (tag, value) -> its index in KEYS (1-based)

        def audience(pair: tuple[str, str]) -> int:
            if pair not in audiences:
                keys.append(k.audience(shard, *pair))
                audiences[pair] = len(keys)
            return audiences[pair]

        users: list[dict[str, Any]] = []
        blobs: list[bytes] = []
        counters: dict[str, int] = {}
        for w in writes:
            flat: list[str] = []
            for f, v in w.profile.items():
                flat.extend((f, v))
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
            for key, n in w.counters.items():
                counters[key] = counters.get(key, 0) + n
        # sets live at least as long as any member written here is kept (lifecycle retention)
        aud_ttl = max([AUDIENCE_TTL_S, *(w.ttl_s for w in writes)])
        meta = {"users": users, "aud_ttl": aud_ttl, "stats": counters or {"_": 0}}
        return ("write", keys, [orjson.dumps(meta), *blobs])

    # -- trigger outbox: one Redis stream per shard, consumed by the workers' "senders" group --
    async def ensure_outbox(self) -> None:
        await self.adopt_layout()
        pipe = self.client.pipeline(transaction=False)
        for shard in range(self.keys.shards):
            pipe.xgroup_create(self.keys.outbox(shard), OUTBOX_GROUP, id="0", mkstream=True)
        for reply in await pipe.execute(raise_on_error=False):
            if isinstance(reply, Exception) and "BUSYGROUP" not in str(reply):
                raise reply

    async def read_outbox(self, consumer: str, count: int, stale_ms: int) -> list[OutboxEntry]:
        """New entries plus entries another sender claimed ``stale_ms`` ago without acking (it died),
        from every shard's outbox (up to ``count`` per shard).

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
        """The shards this worker wrote triggers to since its last read, and every shard at least
        every ``SWEEP_S`` (entries of a sender that died, claimed after ``stale_ms``)."""
        swept_at = self._outbox_swept_at
        if time.monotonic() - swept_at >= SWEEP_S:
            self._outbox_swept_at = time.monotonic()
            shards: list[int] = list(range(self.keys.shards))
        else:
            shards = sorted(self._outbox_dirty)
        # cleared before reading, so a shard written while the read is in flight is read next time
        self._outbox_dirty.clear()
        if not shards:
            return []
        pipe = self.client.pipeline(transaction=False)
        for shard in shards:
            key = self.keys.outbox(shard)
            pipe.xautoclaim(key, OUTBOX_GROUP, consumer, min_idle_time=stale_ms, start_id="0-0", count=count)
            pipe.xreadgroup(OUTBOX_GROUP, consumer, {key: ">"}, count=count)
        try:
            replies = iter(await pipe.execute())
        except BaseException:  # nothing was read: the retry (or the next call) reads the same shards
            self._outbox_dirty.update(shards)
            self._outbox_swept_at = swept_at
            raise
        out: list[OutboxEntry] = []
        for shard in shards:
            claimed, fresh = next(replies)[1], next(replies)
            entries = list(claimed) + [e for _, items in fresh or [] for e in items]
            out.extend(
                OutboxEntry(f"{shard}/{decode_text(eid)}", decode_text(f[b"t"]), decode_text(f[b"k"]), f[b"v"])
                for eid, f in entries
                if f is not None
            )
        return out

    async def ack_outbox(self, ids: list[str]) -> None:
        by_shard: dict[int, list[str]] = defaultdict(list)
        for full in ids:
            number, _, eid = full.partition("/")
            by_shard[int(number)].append(eid)
        if by_shard:
            pipe = self.client.pipeline(transaction=False)
            for shard, eids in by_shard.items():
                pipe.xack(self.keys.outbox(shard), OUTBOX_GROUP, *eids)
                pipe.xdel(self.keys.outbox(shard), *eids)
            await pipe.execute()

    async def outbox_pending(self) -> int:
        pipe = self.client.pipeline(transaction=False)
        for shard in range(self.keys.shards):
            pipe.xlen(self.keys.outbox(shard))
        return sum(int(n) for n in await pipe.execute())

    # -- models: one trainer (lease) learns from the examples streams and publishes checkpoints --
    async def acquire_trainer_lease(self, holder: str, lease_ms: int) -> bool:
        return bool(await run_script(self.client, "lease", [self.keys.model_trainer], [holder, lease_ms]))

    async def read_model_items(self, after: str, count: int) -> ModelItems:
        """Up to ``count`` model items after the position ``after``, merged from every shard's
        stream in entry-id (time) order: a prefix of that order, ``more`` when items are left.

        Each shard is read a share of ``count`` (twice its even share): the items up to the
        earliest last item of a shard that returned its full share are exactly the first ones
        in that order (any unread item of such a shard comes after it). Reading ``count`` from
        every shard instead cost 128 times the items returned. What a call read and did not
        return is kept (``_read_ahead``) and stands in for re-reading it when the next call starts
        where this one ended (the trainer's next round): entries are immutable and appended in
        id order, and only entries a checkpoint covers are ever trimmed."""
        shards = self.keys.shards
        positions = _examples_position(after, shards)
        share = max(MODEL_READ_MIN_SHARE, -(-2 * count // shards))
        ahead = self._read_ahead
        kept: dict[int, list[tuple[tuple[int, int], int, str, bytes]]] = {}
        calls: list[Call] = []
        for shard in range(shards):
            start = positions.get(shard, "-")
            cached = ahead.get(shard)
            kept[shard] = cached[1][:share] if cached is not None and cached[0] == start else []
            if len(kept[shard]) < share:
                last = kept[shard][-1][2] if kept[shard] else start
                calls.append(("model_read", [self.keys.model_examples(shard)], [last, share - len(kept[shard])]))
        replies = iter(await run_scripts(self.client, calls))
        merged: list[tuple[tuple[int, int], int, str, bytes]] = []
        horizon: tuple[int, int] | None = None  # the earliest last item of a full share
        for shard in range(shards):
            read = kept[shard]
            if len(read) < share:
                flat = next(replies)
                read = read + [
                    (_entry_order(eid := decode_text(flat[i])), shard, eid, flat[i + 1]) for i in range(0, len(flat), 2)
                ]
                kept[shard] = read
            if len(read) == share and (horizon is None or read[-1][0] < horizon):
                horizon = read[-1][0]
            merged.extend(read)
        merged.sort()
        safe = merged if horizon is None else [m for m in merged if m[0] <= horizon]
        returned = safe[:count]
        taken = Counter(shard for _, shard, _, _ in returned)
        self._read_ahead = {
            shard: (read[taken[shard] - 1][2] if taken[shard] else positions.get(shard, "-"), read[taken[shard] :])
            for shard, read in kept.items()
            if len(read) > taken[shard]
        }
        items = [(shard, eid, item) for _, shard, eid, item in returned]
        return ModelItems(items, positions, more=len(safe) > count or horizon is not None)

    async def publish_checkpoint(
        self,
        raw: bytes,
        position: str,
        status: dict[str, Any],
        held: bytes | None = None,
        released: float = math.inf,
    ) -> int:
        """Store a checkpoint atomically with the stream position it covers and the items read up
        to it that the trainer holds, not learned yet (``held``, opaque bytes; None: none); drop
        the items the position covers. ``released``: the model has learned every churn example
        read whose label resolved by this event time (``models_cover``; inf: every one read)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self.keys.model_checkpoint, raw)
        if held is None:
            pipe.delete(self.keys.model_held)
        else:
            pipe.set(self.keys.model_held, held)
        pipe.hset(
            self.keys.model_meta,
            mapping={"position": position, "status": orjson.dumps(status), "released": repr(released)},
        )
        pipe.hincrby(self.keys.model_meta, "version", 1)
        replies = await pipe.execute()
        positions = _examples_position(position, self.keys.shards)
        if positions:  # learned items are dropped after the checkpoint that covers them is stored
            trim = self.client.pipeline(transaction=False)
            for shard, eid in positions.items():
                trim.xtrim(self.keys.model_examples(shard), minid=eid)
            await trim.execute()
        return int(replies[-1])

    async def model_checkpoint(self) -> tuple[bytes | None, str, int]:
        """(checkpoint bytes, stream position it covers, version)."""
        raw, position, version, _ = await self._checkpoint(with_held=False)
        return raw, position, version

    async def trainer_checkpoint(self) -> tuple[bytes | None, str, int, bytes | None]:
        """``model_checkpoint`` and the items the trainer held with it (``publish_checkpoint``),
        read together; the workers, which only score, read ``model_checkpoint``."""
        return await self._checkpoint(with_held=True)

    async def _checkpoint(self, with_held: bool) -> tuple[bytes | None, str, int, bytes | None]:
        pipe = self.client.pipeline(transaction=True)
        pipe.get(self.keys.model_checkpoint)
        pipe.hmget(self.keys.model_meta, "position", "version")
        if with_held:
            pipe.get(self.keys.model_held)
        raw, (position, version), *held = await pipe.execute()
        return raw, decode_text(position) if position else "0-0", int(version or 0), held[0] if held else None

    async def model_status(self) -> dict[str, Any]:
        return await self.reads.model_status()

    async def save_model_evaluation(self, doc: dict[str, Any]) -> None:
        """Keep the latest offline cutoff evaluation (``portrait evaluate``) for ``models status``."""
        await self.client.hset(self.keys.model_meta, "evaluation", orjson.dumps(doc))

    async def model_evaluation(self) -> dict[str, Any] | None:
        raw = await self.client.hget(self.keys.model_meta, "evaluation")
        doc: dict[str, Any] | None = orjson.loads(raw) if raw else None
        return doc

    async def model_examples_head(self) -> str | None:
        """The position (as ``read_model_items`` gives it) that covers every item written so far,
        None when no shard holds one."""
        pipe = self.client.pipeline(transaction=False)
        for shard in range(self.keys.shards):
            pipe.xrevrange(self.keys.model_examples(shard), count=1)
        heads = {s: decode_text(r[0][0]) for s, r in enumerate(await pipe.execute()) if r}
        return _position_text(heads) if heads else None

    async def model_coverage(self) -> tuple[str | None, float | None]:
        """(stream position, ``released`` event time) of the published checkpoint
        (``publish_checkpoint``); None for what is not stored."""
        position, released = await self.client.hmget(self.keys.model_meta, "position", "released")
        return decode_text(position) if position else None, float(released) if released else None

    async def models_cover(self, at: float) -> bool:
        """Whether the published model checkpoint has read every model item written so far and
        learned every churn example whose label resolved by event time ``at`` (True when no item
        was ever written)."""
        head = await self.model_examples_head()
        if head is None:
            return True
        position, released = await self.model_coverage()
        if position is None or released is None:
            return False
        return released >= at and position_covers(position, head, self.keys.shards)

    async def model_examples_pending(self) -> int:
        pipe = self.client.pipeline(transaction=False)
        for shard in range(self.keys.shards):
            pipe.xlen(self.keys.model_examples(shard))
        return sum(int(n) for n in await pipe.execute())

    async def audience_sizes(self) -> dict[Pair, int]:
        """(tag, value) -> members, for every audience set (``Reads.all_audience_sizes``)."""
        return await self.reads.all_audience_sizes()

    # -- time-driven path -------------------------------------------------------------------
    async def claim_due(self, now: float, limit: int, wall_now: float, lease_s: float) -> list[tuple[str, float]]:
        """Claim up to about ``limit`` users due at ``now`` (event or wall time) for ``lease_s`` wall
        seconds, an equal share from each shard visited: the shards the due index says are due by
        ``now``, and every ``SWEEP_S`` those the sweep (``_sweep_due``: two reads per shard) finds
        with an expired lease or a due entry the index missed.

        Returns (user, due time); a due time of 0 means "re-evaluate now" (forced)."""
        stored: Any = await self.client.zrange(self.keys.due_index, 0, -1, withscores=True)
        index: dict[int, float] = {int(decode_text(m)): float(score) for m, score in stored}
        swept: set[int] = set()
        if wall_now - self._due_swept_at >= SWEEP_S:
            self._due_swept_at = wall_now
            swept = await self._sweep_due(index, now, wall_now)
        shards = sorted(swept | {s for s, score in index.items() if score <= now})
        if not shards:
            return []
        share = max(1, -(-limit // len(shards)))
        args = [repr(now), share, repr(wall_now), repr(wall_now + lease_s)]
        calls: list[Call] = [("claim", [self.keys.due(s), self.keys.inflight(s)], args) for s in shards]
        out: list[tuple[str, float]] = []
        updates: list[str] = []
        for shard, (flat, head) in zip(shards, await run_scripts(self.client, calls), strict=True):
            out.extend((decode_text(flat[i]), float(flat[i + 1])) for i in range(0, len(flat), 2))
            seen = index.get(shard)
            updates.extend((str(shard), repr(seen) if seen is not None else "", decode_text(head)))
        await run_script(self.client, "set_due_index", [self.keys.due_index], updates)
        return out

    async def _sweep_due(self, index: dict[int, float], now: float, wall_now: float) -> set[int]:
        """The sweep behind ``claim_due``, two reads per shard (not a claim on every shard): the
        shards holding an expired lease (a claimer that died) or a due entry the index lacks or
        scores too late (a writer that died between its shard's script and ``finish``). The index
        is lowered to the heads read (``ZADD LT``: never raised, so a shard is at worst visited
        once too often), and ``index`` with it, so the claim's compare-and-set sees its own
        value."""
        ks = self.keys
        pipe = self.client.pipeline(transaction=False)
        for s in range(ks.shards):
            pipe.zrangebyscore(ks.inflight(s), "-inf", repr(wall_now), start=0, num=1)
            pipe.zrange(ks.due(s), 0, 0, withscores=True)
        replies = iter(await pipe.execute())
        visit: set[int] = set()
        lower: dict[str, float] = {}
        for s in range(ks.shards):
            expired, head = next(replies), next(replies)
            first = float(head[0][1]) if head else None
            if first is not None and (s not in index or first < index[s]):
                lower[str(s)] = first
                index[s] = first
            if expired or (first is not None and first <= now):
                visit.add(s)
        if lower:
            await self.client.zadd(ks.due_index, lower, lt=True)
        return visit

    async def due_stats(self, now: float) -> tuple[int, float | None]:
        """(users due now or being re-evaluated, score of the oldest due entry)."""
        pipe = self.client.pipeline(transaction=False)
        for s in range(self.keys.shards):
            pipe.zcount(self.keys.due(s), "-inf", repr(now))
            pipe.zcard(self.keys.inflight(s))
            pipe.zrange(self.keys.due(s), 0, 0, withscores=True)
        replies = iter(await pipe.execute())
        total, oldest = 0, None
        for _ in range(self.keys.shards):
            count, inflight, first = next(replies), next(replies), next(replies)
            total += int(count) + int(inflight)
            if first and (oldest is None or float(first[0][1]) < oldest):
                oldest = float(first[0][1])
        return total, oldest

    async def refresh_rfm(self, now: float, rescore: Rescore | None = None, settle: Settle | None = None) -> int:
        """Recompute the RFM thresholds from every shard's rank sets (exactly; while batches rank
        users under it, to within the members they changed, ``quantiles.DRIFT_SHARE``); when a cut point
        moved, the users whose metric lies between its old and new value (the only users whose
        score can change) are made due now (re-scored by the time-driven path). The version moves
        only when a threshold changed. Returns the thresholds version. ``rescore`` (default: all;
        event-time backfills: ``stream.core.steps.rescored_cuts``): only its cut points re-score
        anyone now, and with its ``segments`` only the users whose ``rfm_segment`` moves into or
        out of them; the others are seen at each user's next evaluation.

        ``settle`` (event time, ``rfm_event_refresh`` batches): called, before the new cut points
        are stored, with the users they re-score (shard -> users), to evaluate those users' due
        points up to ``now`` on the thresholds before it; the other users due by then score the
        same on both. It returns whether it deleted a user (retention ended): the cut points are
        then chosen again from the smaller rank sets.

        The quintile rule lives here only: cut point k (1..4) of n ranked users is the score at
        0-based rank ceil(k * n / 5) - 1 of the whole population (no cut points while it is empty).
        """
        for _ in range(RFM_SELECT_ATTEMPTS if settle is not None else 1):
            old, cuts, ranges, sizes, seen = await self._select_cuts(rescore)
            if cuts is None:
                return int(await self.client.hget(self.keys.rfm_thresholds, "version") or 0)
            new = [",".join(c) for c in cuts]
            moved = self._moved(rescore, old, new)
            if settle is None or not ranges:
                rescored = None
                break
            rescored = await self._in_ranges(ranges, sizes, seen, moved)
            if not await settle(rescored):
                break
        args = [*new, repr(now), orjson.dumps(ranges)]
        version, changed = await run_script(self.client, "set_thresholds", [self.keys.rfm_thresholds], args)
        if int(changed):
            await self._mark_rescored(ranges, sizes, seen, moved, rescored)
        return int(version or 0)

    async def _select_cuts(
        self, rescore: Rescore | None
    ) -> tuple[list[str], list[list[str]] | None, list[str], list[list[int]], dict[str, list[float]]]:
        """(stored cut points, new cut points (None: the selection kept failing), the score
        ranges they re-score (mark_due.lua's triples), rank set sizes, the sets read whole)."""
        for attempt in range(1, RFM_SELECT_ATTEMPTS + 1):
            sizes, seen, stored, pending = await self._rank_sizes()
            if pending:  # an earlier refresh stopped before making its users due: finish that first
                await self._mark_rescored(orjson.loads(pending))
            old = [decode_text(v) if v else "" for v in stored]
            try:
                cuts = await self._cut_points(sizes, seen, [_cuts(text) for text in old])
                break
            except SetsChanged as exc:
                if attempt == RFM_SELECT_ATTEMPTS:
                    log.warning("RFM thresholds kept: %s, in %d refreshes in a row", exc, attempt)
                    return old, None, [], sizes, seen
        ranges: list[str] = []
        for j in range(len(RANK_METRICS)):
            before, after = [x for x in old[j].split(",") if x], cuts[j]
            wanted = range(4) if rescore is None else rescore.cuts.get(RANK_METRICS[j], ())
            for k in range(4):
                if k not in wanted:
                    continue
                a = before[k] if k < len(before) else None
                b = after[k] if k < len(after) else None
                if a is None or b is None:
                    if a != b:  # a cut point appeared or vanished: every ranked user may change
                        ranges.extend((str(j + 1), "-inf", "+inf"))
                elif float(a) != float(b):  # the stored strings, exactly as ranked
                    lo, hi = (a, b) if float(a) < float(b) else (b, a)
                    ranges.extend((str(j + 1), lo, hi))
        return old, cuts, ranges, sizes, seen

    @staticmethod
    def _moved(rescore: Rescore | None, old: list[str], new: list[str]) -> Callable[[float, float], bool] | None:
        """Which re-scored users' change matters (``_segment_moved``; None: every one's)."""
        if rescore is None or rescore.segments is None:
            return None
        was, becomes = (RfmThresholds(0, *map(_cuts, texts)) for texts in (old, new))
        if not all((t.r, t.f, t.m) for t in (was, becomes)):  # rfm_segment (dis)appears: everyone
            return None
        return _segment_moved(was, becomes, rescore.segments)

    async def _cut_points(
        self, sizes: list[list[int]], seen: dict[str, list[float]], before: Sequence[Sequence[float]]
    ) -> list[list[str]]:
        """Metric -> its cut points (as ranked) for rank sets of ``sizes``: the quintile rule.
        ``before``: metric -> the cut points stored (the selection's guesses: a day moves few)."""
        shards = range(self.keys.shards)
        requests: list[Request] = []
        guesses: list[float | None] = []
        slots: list[int] = []  # metric index of each request
        request_sizes: list[list[int]] = []
        for j, metric in enumerate(RANK_METRICS):
            n = sum(sizes[j])
            for k in range(1, 5) if n else ():
                requests.append(Request([self.keys.rank(s, metric) for s in shards], -(-k * n // 5) - 1))
                guesses.append(before[j][k - 1] if k <= len(before[j]) else None)
                slots.append(j)
                request_sizes.append(sizes[j])
        cuts: list[list[str]] = [[] for _ in RANK_METRICS]
        selected = await select(self.client, requests, request_sizes, seen, guesses)
        for j, cut in zip(slots, selected, strict=True):
            cuts[j].append(score_text(cut))
        return cuts

    async def _rank_sizes(self) -> tuple[list[list[int]], dict[str, list[float]], list[Any], Any]:
        """(metric -> shard -> members of its rank set, the rank sets read whole: key -> scores,
        the stored cut points r, f, m, the stored ``pending`` ranges), in one round trip (two when
        a small store grew). While this store's last refresh found few ranked users
        (``FETCH_ALL``), every rank set is read whole, up to ``cap`` members, instead of counted:
        the selection then reads nothing more, and the sizes come with the scores."""
        shards, ks = self.keys.shards, self.keys
        small = self._ranked is not None and max(self._ranked) <= FETCH_ALL
        cap = max(64, 4 * FETCH_ALL // shards)  # a set that returns cap members is counted too
        pipe = self.client.pipeline(transaction=False)
        for metric in RANK_METRICS:
            for s in range(shards):
                if small:
                    pipe.zrange(ks.rank(s, metric), 0, cap - 1, withscores=True)
                else:
                    pipe.zcard(ks.rank(s, metric))
        pipe.hmget(ks.rfm_thresholds, *RANK_METRICS, "pending")
        replies = await pipe.execute()
        *stored, pending = replies.pop()
        sizes = [[0] * shards for _ in RANK_METRICS]
        seen: dict[str, list[float]] = {}
        counted: list[tuple[int, int]] = []
        for j, metric in enumerate(RANK_METRICS):
            for s in range(shards):
                reply = replies[j * shards + s]
                if not small:
                    sizes[j][s] = int(reply)
                elif len(reply) < cap:
                    seen[ks.rank(s, metric)] = [float(score) for _, score in reply]
                    sizes[j][s] = len(reply)
                else:
                    counted.append((j, s))
        if counted:
            pipe = self.client.pipeline(transaction=False)
            for j, s in counted:
                pipe.zcard(ks.rank(s, RANK_METRICS[j]))
            for (j, s), n in zip(counted, await pipe.execute(), strict=True):
                sizes[j][s] = int(n)
        self._ranked = [sum(row) for row in sizes]
        return sizes, seen, stored, pending

    def _shard_ranges(
        self, shard: int, ranges: list[str], sizes: list[list[int]] | None, seen: Mapping[str, list[float]]
    ) -> list[str]:
        """The part of ``ranges`` (mark_due.lua's triples) that may hold a member of ``shard``'s rank
        sets: a range of a set this refresh found empty, or read whole without a score in the
        range, is left out. A user written after that read was scored by a batch that loaded the
        thresholds before they moved, like a batch written after the marks (the next refresh or
        the user's next event re-scores it)."""
        out: list[str] = []
        for i in range(0, len(ranges), 3):
            j, lo, hi = int(ranges[i]) - 1, float(ranges[i + 1]), float(ranges[i + 2])
            if sizes is not None and sizes[j][shard] == 0:
                continue
            scores = seen.get(self.keys.rank(shard, RANK_METRICS[j]))
            if scores is not None and not any(lo <= x <= hi for x in scores):
                continue
            out.extend(ranges[i : i + 3])
        return out

    async def _mark_rescored(
        self,
        ranges: list[str],
        sizes: list[list[int]] | None = None,
        seen: Mapping[str, list[float]] | None = None,
        moved: Callable[[float, float], bool] | None = None,
        found: dict[int, list[str]] | None = None,
    ) -> None:
        """Make due now the users of every shard whose metric lies in ``ranges`` (mark_due.lua),
        then drop the thresholds' ``pending`` record of them. ``sizes`` (metric -> shard -> ZCARD)
        and ``seen`` (the rank sets read whole) let it skip the shards no range can reach. With
        ``moved`` (R and F values -> whether the user's score change matters), only those users
        (``_segment_moved``); the ``pending`` record still names every user in the ranges, so a
        refresh interrupted before this ends re-scores them all. ``found``: those users, already
        read (``_in_ranges``)."""
        ks = self.keys
        if found is not None:
            marked = await self._mark_users(found)
            if marked:
                await self.client.zadd(ks.due_index, dict.fromkeys(map(str, marked), 0.0), lt=True)
        elif ranges:
            parts = [(s, self._shard_ranges(s, ranges, sizes, seen or {})) for s in range(ks.shards)]
            parts = [(s, part) for s, part in parts if part]
            marked = await (self._mark_in_ranges(parts) if moved is None else self._mark_moved(parts, moved))
            if marked:  # due now: the claims visit these shards next
                await self.client.zadd(ks.due_index, dict.fromkeys(map(str, marked), 0.0), lt=True)
        await self.client.hdel(ks.rfm_thresholds, "pending")

    async def _mark_in_ranges(self, parts: list[tuple[int, list[str]]]) -> list[int]:
        """Every user of each (shard, its ranges) made due (mark_due.lua); the shards it marked."""
        ks = self.keys
        marks: list[Call] = [
            ("mark_due", [*(ks.rank(s, m) for m in RANK_METRICS), ks.due(s)], part) for s, part in parts
        ]
        replies = await run_scripts(self.client, marks) if marks else []
        return [s for (s, _), n in zip(parts, replies, strict=True) if int(n)]

    async def _mark_moved(self, parts: list[tuple[int, list[str]]], moved: Callable[[float, float], bool]) -> list[int]:
        """The users of each (shard, its ranges) whose R and F values ``moved`` keeps made due
        (a user ranked in one of the two only: made due, to be safe); the shards it marked."""
        return await self._mark_users(await self._users_in(parts, moved))

    async def _mark_users(self, users: Mapping[int, list[str]]) -> list[int]:
        """Make ``users`` (shard -> users) due now; the shards it marked."""
        due = {s: group for s, group in users.items() if group}
        if due:
            pipe = self.client.pipeline(transaction=False)
            for s, group in due.items():
                pipe.zadd(self.keys.due(s), dict.fromkeys(group, 0.0), lt=True)
            await pipe.execute()
        return list(due)

    async def _in_ranges(
        self,
        ranges: list[str],
        sizes: list[list[int]],
        seen: Mapping[str, list[float]],
        moved: Callable[[float, float], bool] | None,
    ) -> dict[int, list[str]]:
        """Shard -> the users ``_mark_rescored`` would make due for these arguments."""
        parts = [(s, self._shard_ranges(s, ranges, sizes, seen)) for s in range(self.keys.shards)]
        return await self._users_in([(s, part) for s, part in parts if part], moved)

    async def _users_in(
        self, parts: list[tuple[int, list[str]]], moved: Callable[[float, float], bool] | None
    ) -> dict[int, list[str]]:
        """Shard -> the users of its ranges (``parts``: (shard, mark_due.lua's triples)) that
        ``moved`` keeps (None: all; a user ranked in only one of R and F: kept, to be safe)."""
        ks = self.keys
        pipe = self.client.pipeline(transaction=False)
        for s, part in parts:
            for i in range(0, len(part), 3):
                pipe.zrangebyscore(ks.rank(s, RANK_METRICS[int(part[i]) - 1]), part[i + 1], part[i + 2])
        replies = iter(await pipe.execute())
        candidates = {s: sorted({u for _ in range(0, len(part), 3) for u in next(replies)}) for s, part in parts}
        candidates = {s: users for s, users in candidates.items() if users}  # nobody in this shard's ranges
        if moved is None or not candidates:
            return {s: [decode_text(u) for u in users] for s, users in candidates.items()}
        pipe = self.client.pipeline(transaction=False)
        for s, users in candidates.items():
            pipe.zmscore(ks.rank(s, "r"), users)
            pipe.zmscore(ks.rank(s, "f"), users)
        replies = iter(await pipe.execute())
        kept: dict[int, list[str]] = {}
        for s, users in candidates.items():
            for user, r, f in zip(users, next(replies), next(replies), strict=True):
                if r is None or f is None or moved(r, f):
                    kept.setdefault(s, []).append(decode_text(user))
        return kept

    async def ranked_before_or_due_now(self, last_order: float) -> dict[int, list[str]]:
        """Shard -> the ranked users whose last order is before ``last_order``, and the users
        made due now (an RFM re-score, every profile to the clock) not claimed yet."""
        pipe = self.client.pipeline(transaction=False)
        for s in range(self.keys.shards):
            pipe.zrangebyscore(self.keys.rank(s, "r"), "-inf", f"({last_order!r}")
            pipe.zrangebyscore(self.keys.due(s), "-inf", 0)
        replies = iter(await pipe.execute())
        found = {s: {decode_text(u) for u in [*next(replies), *next(replies)]} for s in range(self.keys.shards)}
        return {s: sorted(users) for s, users in found.items() if users}

    async def due_by(self, users: Mapping[int, list[str]], at: float) -> dict[str, float]:
        """Of ``users`` (shard -> users), those due at ``at`` at the latest: user -> due time
        (0: made due now); not those being re-evaluated (claimed) now."""
        pipe = self.client.pipeline(transaction=False)
        chosen = [(s, list(group)) for s, group in users.items() if group]
        for s, group in chosen:
            pipe.zmscore(self.keys.due(s), group)
        out: dict[str, float] = {}
        for (_, group), scores in zip(chosen, await pipe.execute() if chosen else [], strict=True):
            out.update((u, float(x)) for u, x in zip(group, scores, strict=True) if x is not None and float(x) <= at)
        return out

    async def rfm_thresholds(self) -> RfmThresholds:
        return _thresholds(await self.client.hgetall(self.keys.rfm_thresholds))

    async def mark_due_chunk(self, cursor: int, count: int) -> tuple[int, int]:
        """One step of a bounded pass over the due sets (every live user): make about ``count``
        users due now (score 0, as ``mark_all_due``); returns (next cursor, 0 when done; users
        marked). The cursor is ``shard + shards * (that shard's ZSCAN cursor)``; ZSCAN returns
        every member present for the whole pass at least once."""
        shards = self.keys.shards
        shard, inner = cursor % shards, cursor // shards
        nxt, items = await self.client.zscan(self.keys.due(shard), inner, count=count)
        if items:
            marks: dict[Any, float] = {member: 0.0 for member, _ in items}
            pipe = self.client.pipeline(transaction=False)
            pipe.zadd(self.keys.due(shard), marks, xx=True, lt=True)
            pipe.zadd(self.keys.due_index, {str(shard): 0.0}, lt=True)  # the claims visit it next
            await pipe.execute()
        if int(nxt):
            return shard + shards * int(nxt), len(items)
        return (shard + 1 if shard + 1 < shards else 0), len(items)

    async def mark_all_due(self) -> None:
        """Make every live user due now (all scores -> 0) for a full re-evaluation."""
        pipe = self.client.pipeline(transaction=False)
        for s in range(self.keys.shards):
            pipe.zunionstore(self.keys.due(s), {self.keys.due(s): 0})
        pipe.zadd(self.keys.due_index, {str(s): 0.0 for s in range(self.keys.shards)})
        await pipe.execute()

    async def clock(self) -> float | None:
        return await self.reads.clock()

    async def watermark(self) -> tuple[float, float]:
        """(clock, watermark) in event-time mode; the time-driven path evaluates up to the watermark.

        The clock is the largest event time any worker applied; partitions are consumed at
        different speeds, so a user on a partition that is behind may still have unconsumed events
        older than it. The watermark is the clock held back to the slowest partition that still has
        messages waiting; a partition whose last batch reached its end holds nothing back (a
        time-ordered producer only appends later events).
        """
        clock, parts = await self.progress()
        return clock, watermark(clock, parts)

    async def progress(self) -> tuple[float, dict[bytes, bytes]]:
        """(the event-time clock, the stored progress hash of the input partitions), in one round
        trip: what ``watermark`` reads."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.keys.clock)
        pipe.hgetall(self.keys.clock_parts)
        raw, parts = await pipe.execute()
        return float(raw) if raw else 0.0, parts

    async def advance_clock(self, value: float) -> float:
        """Move the event-time clock forward to ``value`` (never backwards); returns the clock."""
        return float(await run_script(self.client, "advance_clock", [self.keys.clock], [f"{value:.6f}"]))

    async def advance_timed(self, value: float) -> float:
        """Record that the time-driven path has evaluated every user due up to the event time
        ``value``, or up to the earliest due time still indexed if that is lower (never back):
        every churn label with a deadline before it has been written (``Trainer`` learns up to
        it). Returns the recorded time."""
        keys = [self.keys.clock_timed, self.keys.due_index]  # capped by the earliest due time indexed
        return float(await run_script(self.client, "advance_clock", keys, [f"{value:.6f}"]))

    async def timed(self) -> tuple[float, float]:
        """(the event-time clock, ``advance_timed``'s value) in one round trip; 0 for one not set
        yet (the time-driven path has not completed a drain)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.keys.clock)
        pipe.get(self.keys.clock_timed)
        clock, timed = await pipe.execute()
        return float(clock) if clock else 0.0, float(timed) if timed else 0.0

    # -- privacy ----------------------------------------------------------------------------
    async def erase(self, uid: str) -> list[str]:
        """Remove every key and membership of ``uid`` and put it on the suppression list.

        Returns what was removed. Idempotent: erasing again removes nothing more. The aliases of
        anonymous ids merged into the user (in their own shards) go first, so an erasure that
        stops half-way is completed by running it again."""
        k = self.keys
        shard = k.shard(uid)
        for _attempt in range(MAX_ERASE_ATTEMPTS):
            ver, blob = await self.client.hmget(k.state(uid), "ver", "blob")
            state = UserState.from_bytes(blob) if blob else None
            audiences = [k.audience(shard, t, v) for t, v in state.published.items()] if state else []
            removed: list[str] = []
            merged = [m.subject for m in state.merged] if state else []
            if merged:
                pipe = self.client.pipeline(transaction=False)
                for anon in merged:
                    pipe.sadd(k.erased(k.shard(anon)), erased_token(anon))
                    pipe.delete(k.alias(anon))
                replies = await pipe.execute()
                removed += [k.alias(anon) for anon, gone in zip(merged, replies[1::2], strict=True) if gone]
            keys = [
                k.state(uid),
                k.profile(uid),
                k.alias(uid),
                k.erased(shard),
                k.due(shard),
                k.inflight(shard),
                *(k.rank(shard, m) for m in RANK_METRICS),
                *audiences,
            ]  # in the order erase.lua reads them
            result = await run_script(self.client, "erase", keys, [uid, erased_token(uid), ver or b""])
            if result is not None:
                return removed + [decode_text(r) for r in result]
        raise RuntimeError(f"erase of {uid}: the state kept changing during {MAX_ERASE_ATTEMPTS} attempts")

    async def aliases(self, subjects: list[str]) -> dict[str, str]:
        """Anonymous subjects already merged -> the user they were merged into."""
        return await self.reads.aliases(subjects)

    async def erased(self, uids: list[str]) -> set[str]:
        """Which of ``uids`` are on the suppression list."""
        if not uids:
            return set()
        shards = _by_shard(self.keys, uids)
        pipe = self.client.pipeline(transaction=False)
        _ask_erased(pipe, self.keys, shards)
        return _erased_among(shards, await pipe.execute())

    async def delete_namespace(self) -> int:
        """Delete every key of this store (its prefix and layout); returns how many."""
        return await self._unlink_matching(self.keys.pattern)

    async def _unlink_matching(self, pattern: str) -> int:
        """UNLINK every key matching ``pattern`` (SCAN), 1,000 per round trip; returns how many."""
        deleted, pipe = 0, self.client.pipeline(transaction=False)
        async for key in self.client.scan_iter(match=pattern, count=2000):
            pipe.execute_command("UNLINK", key)  # one key per command: a cluster refuses a multi-slot UNLINK
            deleted += 1
            if len(pipe) >= 1000:
                await pipe.execute()
        if len(pipe):
            await pipe.execute()
        return deleted

    async def profile(self, uid: str) -> dict[str, str]:
        return await self.reads.profile(uid)

    async def stats(self) -> dict[str, int]:
        """The counters: the batch-level hash plus every shard's."""
        return await self.reads.stats()
