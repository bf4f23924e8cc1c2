"""Batch processor: the only place that combines the pure pipeline with Redis and dead letters.

Contract: ``process`` returns only once the batch's effects are durable (dead letters delivered,
state written atomically); infrastructure errors are retried with backoff, never swallowed, so
the caller does not ack a batch that was not applied.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import orjson
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stream.contracts.deadletter import DeadLetter
from stream.contracts.topics import Topics
from stream.core.pipeline import Message, Valid, classify, plan_write, unpack
from stream.core.writes import UserWrite
from stream.identity.merge import IdentityPolicy, Refusal, anon_subject, merge_into, refusal
from stream.metrics import Metrics
from stream.models import CheckpointError, Models, restore
from stream.rules import RuleSet
from stream.settings import Settings
from stream.storage.keys import erased_token
from stream.storage.store import LoadedUser, OutboxEntry, Progress, Store, watermark
from stream.tagging.definitions import TagCatalogue
from stream.tagging.engine import Applied, apply_event
from stream.tagging.state import UserState

log = logging.getLogger(__name__)
T = TypeVar("T")

SendDeadLetters = Callable[[list[DeadLetter]], Awaitable[None]]
SendTriggers = Callable[[list[OutboxEntry]], Awaitable[None]]
OUTBOX_BATCH = 500
OUTBOX_STALE_MS = 30_000
MAX_CONFLICT_RETRIES = 20
# Change points evaluated before one user's next event, per batch: day-granular tags (recency)
# change daily, so this covers a gap of more than a year; the time-driven path would do the same.
MAX_CATCH_UP_STEPS = 400


@dataclass
class BatchReport:
    messages: int = 0
    applied: int = 0
    redelivered: int = 0
    duplicates: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    users: int = 0


class Processor:
    def __init__(
        self,
        settings: Settings,
        catalogue: TagCatalogue,
        store: Store,
        send_dead_letters: SendDeadLetters,
        metrics: Metrics,
        wall_clock: Callable[[], float] = time.time,
        rules: RuleSet | None = None,
        send_triggers: SendTriggers | None = None,
        models: Models | None = None,
    ) -> None:
        self.settings = settings
        self.models = models  # scores only; learning happens in stream.service.trainer
        self.models_version = 0
        self.rules = rules
        self.send_triggers = send_triggers
        self.topics = Topics(settings.topic_prefix)
        self.sender_id = f"{socket.gethostname()}-{os.getpid()}"
        self.catalogue = catalogue
        self.store = store
        self.send_dead_letters = send_dead_letters
        self.metrics = metrics
        self.wall_clock = wall_clock
        self.event_clock = 0.0  # largest event time this worker has seen (event-time mode)
        self._read_to: dict[str, int] = {}  # input partition -> last offset read (event-time watermark)
        self._applied_ts: dict[str, float] = {}  # input partition -> highest event time applied from it
        self.healthy = True
        self.last_error: str | None = None
        self.identity_policy = IdentityPolicy(
            frozenset(v.strip().lower() for v in settings.identity_blocked_ids),
            settings.identity_max_merges_per_day,
            settings.identity_max_merges,
        )

    # -- helpers -------------------------------------------------------------------------
    async def _retrying(self, op: str, action: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``action`` until it succeeds; Redis outages turn health red but lose nothing."""
        delay = 0.2
        while True:
            try:
                started = time.perf_counter()
                result = await action(*args)
                self.metrics.redis_latency.labels(op).observe(time.perf_counter() - started)
                if not self.healthy:
                    log.info("redis reachable again")
                self.healthy, self.last_error = True, None
                return result
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                self.metrics.redis_errors.labels(op).inc()
                self.healthy, self.last_error = False, f"{op}: {exc}"
                log.warning("redis %s failed (%s); retrying in %.1fs", op, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    # -- event path ----------------------------------------------------------------------
    async def process(self, messages: list[Message], highwaters: Mapping[str, int | None] | None = None) -> BatchReport:
        """Apply one batch exactly once (idempotent under redelivery).

        ``highwaters``: the consumer's high-water mark of every input partition assigned to this
        worker ("topic/partition" -> next offset to be written), from which the event-time
        watermark learns which partitions still have messages waiting. A caller that cannot tell
        passes None and the watermark stays the clock.
        """
        received = time.perf_counter()
        report = BatchReport(messages=len(messages))
        wall = self.wall_clock()
        event_mode = self.settings.clock == "event"
        clock_before = self.event_clock if event_mode else wall
        valid: list[Valid] = []
        dead: list[DeadLetter] = []
        events: list[Message] = []
        for message in messages:
            unpacked = unpack(message, self.settings.processor_version)
            if isinstance(unpacked, DeadLetter):
                dead.append(unpacked)
            else:
                events.extend(unpacked)
        for message in events:
            outcome: Valid | DeadLetter = classify(
                message,
                self.catalogue,
                wall,
                clock_before,
                self.settings.max_future_skew_s,
                self.settings.processor_version,
            )
            if isinstance(outcome, Valid):
                valid.append(outcome)
            else:
                dead.append(outcome)
        if event_mode:
            valid = in_event_time_order(valid)

        if dead:
            await self.send_dead_letters(dead)
            for letter in dead:
                report.dead_letters[letter.reason] += 1
                self.metrics.dead_letters.labels(letter.reason).inc()
                log.info(
                    "dead letter %s at %s[%d]@%d: %s",
                    letter.reason,
                    letter.source_topic,
                    letter.source_partition,
                    letter.source_offset,
                    letter.error.splitlines()[0],
                )

        valid = await self._refuse_blocked(valid, report)
        batch_max_ts = max((v.event.epoch for v in valid), default=None)
        progress = self._progress(messages, valid, highwaters) if event_mode and highwaters is not None else None
        for _attempt in range(MAX_CONFLICT_RETRIES):
            identity = await self._resolve(valid)
            loaded, stored_clock, thresholds = await self._retrying("load", self.store.load, identity.subjects)
            merges = self._merge(identity, loaded)
            owner = identity.owner
            erased = {uid for uid in identity.subjects if loaded[uid].erased}
            if erased:
                await self._dead_letter_erased([v for v in valid if owner(v) in erased], report, owner)
                valid = [v for v in valid if owner(v) not in erased]
            uids = list(dict.fromkeys(owner(v) for v in valid))
            latest: dict[str, float] = {}
            for v in valid:
                uid, epoch = owner(v), v.event.epoch
                latest[uid] = max(latest.get(uid, epoch), epoch)
            await self.sync_models()
            now = max(self.event_clock, stored_clock or 0.0, batch_max_ts or 0.0) if event_mode else wall
            states = {uid: merges.states.get(uid) or loaded[uid].state or UserState() for uid in uids}
            results: list[tuple[str, Applied]] = []
            applied_items: set[int] = set()
            broken: dict[str, str] = {}  # user -> error: a bug isolates the user, not the batch
            # Event time: a user is evaluated after each of their events and at each change point
            # between them, as live processing one event at a time would, so rules, conversions and
            # models see the same steps however the events were batched.
            mark = watermark(now, self.store.parts_seen, progress) if event_mode else now
            steps: dict[str, Steps] = {}
            unevaluated: dict[str, float] = {}  # user -> their latest applied, not yet evaluated event
            for item in valid:
                uid = owner(item)
                if uid in broken:
                    continue
                epoch = item.event.epoch
                try:
                    if event_mode:
                        user_steps = steps.get(uid) or steps.setdefault(uid, Steps(dict(states[uid].published)))
                        if uid in unevaluated:
                            at = max(unevaluated.pop(uid), states[uid].evaluated_at or 0.0)
                            user_steps.add(
                                self._plan(uid, loaded[uid].version, states[uid], at, thresholds, wall, mark)
                            )
                        # change points are safe to evaluate only where no partition may still hold events
                        self._catch_up(
                            user_steps, uid, loaded[uid].version, states[uid], min(epoch, mark), thresholds, wall
                        )
                except Exception as exc:
                    broken[uid] = f"evaluate: {exc!r}"
                    log.exception("bug evaluating user %s", uid)
                    continue
                try:
                    applied = apply_event(
                        states[uid], item.event, item.message.source, item.message.position, self.catalogue.params
                    )
                except Exception as exc:
                    broken[uid] = f"apply: {exc!r}"
                    log.exception(
                        "bug applying %s[%d]@%d", item.message.topic, item.message.partition, item.message.offset
                    )
                    continue
                results.append((uid, applied))
                if applied is Applied.APPLIED:
                    applied_items.add(id(item))
                    unevaluated[uid] = max(unevaluated.get(uid, epoch), epoch)
            merges.count_refusals(applied_items)
            touched = dict.fromkeys([*merges.into, *(uid for uid, a in results if a is Applied.APPLIED)])
            writes = list(merges.writes)
            for uid in dict.fromkeys([*touched, *(u for u, s in steps.items() if s.writes)]):
                if uid in broken:
                    continue
                user_steps = steps.get(uid) or Steps({})  # a single write carries its own audience diff
                try:
                    if uid in touched and (uid in unevaluated or not user_steps.writes):
                        # Event time: at the user's own latest event (never going back), so a replay
                        # evaluates users at the same moments live processing would.
                        at = max(latest[uid], states[uid].evaluated_at or 0.0) if event_mode else now
                        user_steps.add(
                            self._plan(uid, loaded[uid].version, states[uid], min(at, now), thresholds, wall, mark)
                        )
                    writes.append(user_steps.combined())
                except Exception as exc:
                    broken[uid] = f"evaluate: {exc!r}"
                    log.exception("bug evaluating user %s", uid)
            if broken:
                # Nothing of these users is written; their events go to the DLQ to be replayed after a fix.
                await self._dead_letter_users(valid, broken, report, owner)
                valid = [v for v in valid if owner(v) not in broken]
                writes = [w for w in writes if w.alias_to not in broken]  # the merge waits for the fix
            outcomes = Counter(a.value for uid, a in results if uid not in broken)
            stats = {f"events_{k}": n for k, n in outcomes.items()}
            for w in writes:
                for key, n in w.counters.items():
                    stats[key] = stats.get(key, 0) + n
            stats.update({f"dlq_{k}": n for k, n in report.dead_letters.items()})
            stats["messages"] = len(messages)
            for key, n in merges.counters.items():
                stats[key] = stats.get(key, 0) + n
            clock = now if event_mode else None
            conflicts = await self._retrying("write", self.store.write, writes, clock, stats, progress)
            if not conflicts:
                break
            self.metrics.write_conflicts.inc()
            log.info("version conflict on %d users; recomputing batch", len(conflicts))
        else:
            raise RuntimeError(f"batch kept conflicting after {MAX_CONFLICT_RETRIES} attempts")

        if event_mode:
            self.event_clock = max(self.event_clock, now)
        for key, n in merges.counters.items():
            self.metrics.identity.labels(key.removeprefix("identity_refused_").removeprefix("identity_")).inc(n)
        self._count_decisions(writes)
        if any(w.triggers for w in writes):
            await self.deliver_triggers()
        report.applied = outcomes[Applied.APPLIED.value]
        report.redelivered = outcomes[Applied.REDELIVERED.value]
        report.duplicates = outcomes[Applied.DUPLICATE.value]
        report.users = len(touched)
        for kind, n in outcomes.items():
            self.metrics.applied.labels(kind).inc(n)
        for item in valid:
            self.metrics.events.labels(item.message.topic, item.event.type).inc()
        self.metrics.batch_size.observe(len(messages))
        done = time.perf_counter()
        self.metrics.consume_to_profile.observe(done - received)
        if not event_mode:
            finished = self.wall_clock()
            for item in valid:
                self.metrics.event_to_profile.observe(max(0.0, finished - item.event.epoch))
        return report

    async def _dead_letter_users(
        self, valid: list[Valid], broken: dict[str, str], report: BatchReport, owner: Callable[[Valid], str]
    ) -> None:
        letters = [
            DeadLetter.build(
                "processing_error",
                broken[owner(v)],
                v.message.value,
                v.message.key,
                v.message.topic,
                v.message.partition,
                v.message.offset,
                self.settings.processor_version,
            )
            for v in valid
            if owner(v) in broken
        ]
        await self.send_dead_letters(letters)
        report.dead_letters["processing_error"] += len(letters)
        self.metrics.dead_letters.labels("processing_error").inc(len(letters))
        self.metrics.processing_errors.labels("event").inc(len(letters))

    # -- identity ---------------------------------------------------------------------------
    async def _refuse_blocked(self, valid: list[Valid], report: BatchReport) -> list[Valid]:
        """Dead-letter events whose own identity is a blocked value ("0", "null", ...): attributing
        them would build one profile out of many people."""
        policy = self.identity_policy
        kept, letters = [], []
        for v in valid:
            e = v.event
            if policy.is_blocked(e.user_id) or (e.user_id is None and policy.is_blocked(e.anonymous_id)):
                m = v.message
                letters.append(
                    DeadLetter.build(
                        "blocked_identifier",
                        f"identifier {e.user_id if e.user_id is not None else e.anonymous_id!r} is blocked",
                        m.value,
                        m.key,
                        m.topic,
                        m.partition,
                        m.offset,
                        self.settings.processor_version,
                    )
                )
            else:
                kept.append(v)
        if letters:
            await self.send_dead_letters(letters)
            report.dead_letters["blocked_identifier"] += len(letters)
            self.metrics.dead_letters.labels("blocked_identifier").inc(len(letters))
        return kept

    async def _resolve(self, valid: list[Valid]) -> Resolution:
        """Follow existing aliases and collect this batch's candidate links (first link of an
        anonymous id wins)."""
        policy = self.identity_policy
        anonymous = {anon_subject(v.event.anonymous_id) for v in valid if v.event.anonymous_id is not None}
        aliases = await self._retrying("aliases", self.store.aliases, sorted(anonymous)) if anonymous else {}
        links: dict[str, tuple[str, float, int]] = {}
        refused: list[tuple[int, Refusal]] = []
        for v in valid:
            e = v.event
            if e.user_id is None or e.anonymous_id is None:
                continue
            if policy.is_blocked(e.anonymous_id):
                refused.append((id(v), "blocked_id"))
                continue
            subject = anon_subject(e.anonymous_id)
            linked = aliases.get(subject) or links.get(subject, (None, 0.0, 0))[0]
            if linked == e.user_id:
                continue  # merged already (or earlier in this batch)
            if linked is not None:
                refused.append((id(v), "already_linked"))
                continue
            links[subject] = (e.user_id, e.epoch, id(v))
        resolution = Resolution(aliases, links, refused)
        resolution.owners = list(dict.fromkeys(resolution.initial(v) for v in valid))
        return resolution

    def _merge(self, identity: Resolution, loaded: Mapping[str, LoadedUser]) -> Merges:
        """Decide this batch's merges in order and fold each anonymous state into its user's."""
        policy = self.identity_policy
        merges = Merges()
        merges.refused.extend(identity.refused)
        for subject, (uid, at, link) in identity.links.items():
            if loaded[uid].erased or loaded[subject].erased:
                continue  # the erased side's events are dead-lettered; nothing to merge
            target = merges.states.get(uid) or loaded[uid].state or UserState()
            why = refusal(policy, target, at)
            if why is not None:
                merges.refused.append((link, why))
                log.info("identity merge refused (%s) at event time %.0f", why, at)
                continue
            source = loaded[subject].state
            if source is not None:
                merge_into(target, source, subject, at, self.catalogue.params.dedupe_window_events)
            else:
                target.merged = [*target.merged, [subject, at]]
            merges.states[uid] = target
            merges.into[uid] = None
            identity.redirect[subject] = uid
            published = source.published if source is not None else {}
            merges.writes.append(
                UserWrite(subject, loaded[subject].version, None, audience_remove=list(published.items()), alias_to=uid)
            )
            merges.counters["identity_merged"] = merges.counters.get("identity_merged", 0) + 1
        return merges

    async def _dead_letter_erased(
        self, events: list[Valid], report: BatchReport, owner: Callable[[Valid], str]
    ) -> None:
        """Events of erased users: counted and dead-lettered, their payload withheld (it is the
        personal data the erasure removed), never applied."""
        letters = [
            DeadLetter.build(
                "erased_user",
                f"user erased (suppression token {erased_token(owner(v))}): not applied, payload withheld",
                b"",
                None,
                v.message.topic,
                v.message.partition,
                v.message.offset,
                self.settings.processor_version,
            )
            for v in events
        ]
        await self.send_dead_letters(letters)
        report.dead_letters["erased_user"] += len(letters)
        self.metrics.dead_letters.labels("erased_user").inc(len(letters))

    async def dead_letter_batch(self, messages: list[Message], error: BaseException) -> None:
        """Last resort for a bug outside per-user isolation: keep the batch in the DLQ, never drop it."""
        letters = [
            DeadLetter.build(
                "processing_error",
                f"batch: {error!r}",
                m.value,
                m.key,
                m.topic,
                m.partition,
                m.offset,
                self.settings.processor_version,
            )
            for m in messages
        ]
        await self.send_dead_letters(letters)
        self.metrics.dead_letters.labels("processing_error").inc(len(letters))
        self.metrics.processing_errors.labels("batch").inc()

    # -- time-driven path ----------------------------------------------------------------
    async def now(self) -> float:
        """The time the time-driven path evaluates up to: wall time, or the event-time watermark."""
        if self.settings.clock == "wall":
            return self.wall_clock()
        clock, mark = await self._retrying("clock", self.store.watermark)
        self.event_clock = max(self.event_clock, clock)
        return mark

    async def reevaluate_due(self) -> int:
        """Re-evaluate users whose tags change without an event (windows, recency, timers).

        Each user is evaluated at their due time (not the possibly much later clock), so a replay
        in event time passes through the same states, and fires the same rules, as live processing.
        """
        now = await self.now()
        if now <= 0:
            return 0
        s = self.settings
        claimed = await self._retrying(
            "claim", self.store.claim_due, now, s.due_batch, self.wall_clock(), s.due_lease_s
        )
        if not claimed:
            return 0
        wall = self.wall_clock()
        due_at = dict(claimed)
        pending = list(due_at)
        done = 0
        all_writes: list[UserWrite] = []
        for _attempt in range(3):
            loaded, _, thresholds = await self._retrying("load", self.store.load, pending)
            await self.sync_models()
            writes: list[UserWrite] = []
            for uid in pending:
                user = loaded[uid]
                if user.erased:
                    continue  # erased after it was claimed: nothing to evaluate or write
                if user.state is None:
                    writes.append(UserWrite(uid, user.version, None))
                    continue
                due = due_at[uid]
                at = now if due <= 0 else min(now, max(due, user.state.evaluated_at or 0.0))
                try:
                    writes.append(self._plan(uid, user.version, user.state, at, thresholds, wall, now))
                except Exception:
                    # stays in flight until its lease expires, then is retried; logged and counted
                    self.metrics.processing_errors.labels("reevaluate").inc()
                    log.exception("bug re-evaluating user %s", uid)
            stats = {"reevaluations": len(writes)}
            for w in writes:
                for key, n in w.counters.items():
                    stats[key] = stats.get(key, 0) + n
            conflicts = await self._retrying("write", self.store.write, writes, None, stats)
            if conflicts:
                writes = [w for w in writes if w.uid not in conflicts]  # nothing was written: retry the rest
            else:
                done += len(writes)
                all_writes.extend(writes)
                break
            pending = [w.uid for w in writes]
        self.metrics.reevaluations.inc(done)
        self._count_decisions(all_writes)
        if any(w.triggers for w in all_writes):
            await self.deliver_triggers()
        return done

    def _progress(self, messages: list[Message], valid: list[Valid], highwaters: Mapping[str, int | None]) -> Progress:
        """Per assigned input partition this worker has read: (highest event time applied from it,
        whether everything written to it so far has been read). Includes partitions absent from the
        batch: new messages on a partition read to its end make it hold the watermark back again."""
        for m in messages:
            self._read_to[m.source] = max(self._read_to.get(m.source, -1), m.offset)
        for v in valid:
            source = v.message.source
            self._applied_ts[source] = max(self._applied_ts.get(source, v.event.epoch), v.event.epoch)
        progress: Progress = {}
        for source, last in self._read_to.items():
            if source not in highwaters:
                continue  # no longer assigned here: its new owner reports it
            end = highwaters[source]
            progress[source] = (self._applied_ts.get(source), end is None or last + 1 >= end)
        return progress

    def _catch_up(
        self, steps: Steps, uid: str, version: int, state: UserState, until: float, thresholds: Any, wall: float
    ) -> None:
        """Event time: evaluate the user at the change points that fall before their next event.

        The time-driven path only reaches a user once the watermark passes their due time; when the
        user's next event gets there first, the change (a window emptying, a churn label resolving,
        a rule firing on it) is evaluated here, at its own time, before the event is applied, as
        live processing would have.
        """
        taken = 0
        while (
            taken < MAX_CATCH_UP_STEPS
            and state.due_at is not None
            and (state.evaluated_at or 0.0) < state.due_at <= until
        ):
            step = self._plan(uid, version, state, state.due_at, thresholds, wall, until)
            steps.add(step)
            taken += 1
            if step.state is None:
                break

    def _plan(
        self, uid: str, version: int, state: UserState, at: float, thresholds: Any, wall: float, settled: float
    ) -> UserWrite:
        return plan_write(
            uid, version, state, at, thresholds, self.catalogue, wall, self.rules, self.topics, self.models, settled
        )

    async def sync_models(self) -> None:
        """Load the trainer's newer checkpoint (its version arrived with the last ``load``)."""
        if self.models is None or self.store.models_version_seen <= self.models_version:
            return
        raw, _, version = await self._retrying("models", self.store.model_checkpoint)
        if raw is None:
            return
        try:
            self.models = restore(raw, self.models.config)
        except CheckpointError as exc:
            self.metrics.processing_errors.labels("model_checkpoint").inc()
            log.error("model checkpoint v%d unusable (%s); keeping model v%d", version, exc, self.models_version)
        self.models_version = version
        self.metrics.model_version.set(version)

    def _count_decisions(self, writes: list[UserWrite]) -> None:
        for w in writes:
            for key, n in w.counters.items():
                if key.startswith("effect:"):
                    _, rule, group, what = key.split(":")
                    self.metrics.rule_effect.labels(rule, group, what).inc(n)
            for rule, outcome, reason in w.decisions:
                if outcome == "send":
                    self.metrics.triggers_sent.labels(rule).inc()
                else:
                    self.metrics.triggers_suppressed.labels(rule, reason).inc()

    # -- trigger delivery ----------------------------------------------------------------
    async def deliver_triggers(self) -> int:
        """Produce outbox entries to their topics, then remove them. At least once: entries of a
        sender that died unacknowledged are claimed by another after ``OUTBOX_STALE_MS``; consumers
        dedupe by the deterministic ``trigger_id``."""
        if self.send_triggers is None:
            return 0
        delivered = 0
        while True:
            entries = await self._retrying(
                "outbox", self.store.read_outbox, self.sender_id, OUTBOX_BATCH, OUTBOX_STALE_MS
            )
            if not entries:
                break
            erased = await self._retrying("outbox", self.store.erased, list({e.key for e in entries}))
            if erased:  # decided before the user was erased: never sent after it
                for e in entries:
                    if e.key in erased:
                        rule = str(orjson.loads(e.value).get("rule_id", "unknown"))
                        self.metrics.triggers_suppressed.labels(rule, "erased").inc()
            await self.send_triggers([e for e in entries if e.key not in erased])
            await self._retrying("outbox", self.store.ack_outbox, [e.id for e in entries])
            wall = self.wall_clock()
            for entry in entries:
                self.metrics.triggers_delivered.labels(entry.topic).inc()
                if self.settings.clock == "wall":
                    event_time = float(orjson.loads(entry.value).get("event_time", wall))
                    self.metrics.trigger_latency.observe(max(0.0, wall - event_time))
            delivered += len(entries)
            if len(entries) < OUTBOX_BATCH:
                break
        return delivered

    async def observe_due(self) -> None:
        now = await self.now()
        count, oldest = await self._retrying("due_stats", self.store.due_stats, now)
        self.metrics.due_pending.set(count)
        self.metrics.freshness.set(max(0.0, now - oldest) if oldest is not None and oldest <= now else 0.0)
        self.metrics.outbox_pending.set(await self._retrying("outbox", self.store.outbox_pending))


def in_event_time_order(valid: list[Valid]) -> list[Valid]:
    """The batch's events merged across partitions by event time, each partition's own order kept
    (applied offsets must rise per partition): a partition that runs ahead in a replay then does not
    apply its later events before another's earlier ones within a batch."""
    by_source: dict[str, list[Valid]] = {}
    for v in valid:
        by_source.setdefault(v.message.source, []).append(v)
    if len(by_source) < 2:
        return valid
    return list(heapq.merge(*by_source.values(), key=lambda v: v.event.epoch))


@dataclass
class Steps:
    """A user's evaluations within one batch, written as one: the last state and profile, every
    step's triggers, decisions, training items and counters, and the audience changes from before
    the first step to after the last."""

    published: dict[str, str]  # audience tags before the batch
    writes: list[UserWrite] = field(default_factory=list)

    def add(self, write: UserWrite) -> None:
        self.writes.append(write)

    def combined(self) -> UserWrite:
        final = self.writes[-1]
        if len(self.writes) == 1:
            return final
        now = final.state.published if final.state is not None else {}
        counters: dict[str, int] = {}
        for step in self.writes:
            for key, n in step.counters.items():
                counters[key] = counters.get(key, 0) + n
        return replace(
            final,
            audience_add=[(t, v) for t, v in now.items() if self.published.get(t) != v],
            audience_remove=[(t, v) for t, v in self.published.items() if now.get(t) != v],
            triggers=[t for w in self.writes for t in w.triggers],
            decisions=[d for w in self.writes for d in w.decisions],
            learn=[item for w in self.writes for item in w.learn],
            counters=counters,
        )


@dataclass
class Resolution:
    """Who each event of a batch belongs to, and the links (anonymous -> user) it carries."""

    aliases: dict[str, str]  # anonymous subject -> user, merged before this batch
    links: dict[str, tuple[str, float, int]]  # anonymous subject -> (user, link time, id(link event)), unmerged
    refused: list[tuple[int, Refusal]]  # (id(link event), why)
    owners: list[str] = field(default_factory=list)  # events' owners before this batch's merges
    redirect: dict[str, str] = field(default_factory=dict)  # anonymous subject -> user, merged in this batch

    @property
    def subjects(self) -> list[str]:
        """Everyone to load: the events' owners and both sides of every candidate link."""
        linked = [u for u, _, _ in self.links.values()]
        return list(dict.fromkeys([*self.owners, *self.links, *linked]))

    def owner(self, v: Valid) -> str:
        subject = self.initial(v)
        return self.redirect.get(subject, subject)

    def initial(self, v: Valid) -> str:
        e = v.event
        if e.user_id is not None:
            return e.user_id
        subject = anon_subject(e.anonymous_id or "")
        return self.aliases.get(subject, subject)


@dataclass
class Merges:
    """This batch's accepted merges: the merged users' states, the anonymous profiles' deletions
    (with aliases), and identity counters for P:v1:stats."""

    states: dict[str, UserState] = field(default_factory=dict)
    into: dict[str, None] = field(default_factory=dict)  # users that absorbed a profile (ordered set)
    writes: list[UserWrite] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    refused: list[tuple[int, Refusal]] = field(default_factory=list)  # (id(link event), why)

    def count_refusals(self, applied: set[int]) -> None:
        """Count the refusals of link events applied now (a redelivered link was counted before)."""
        for link, reason in self.refused:
            if link in applied:
                key = f"identity_refused_{reason}"
                self.counters[key] = self.counters.get(key, 0) + 1
