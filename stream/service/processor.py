"""Batch processor: load → plan → write → deliver, for the event path and the time-driven path.

Contract: ``process`` returns only once the batch's effects are durable (dead letters delivered,
state written atomically); Redis outages are retried with backoff (``RedisRetry``), never
swallowed, so the caller does not ack a batch that was not applied. A version conflict (another
worker wrote one of the batch's users in between) re-reads and re-plans the batch.

The decisions are pure and live in ``stream.core``: ``intake`` (validation, event-time order),
``identity`` (who owns each event, which profiles merge), ``batch`` (each user's steps and the
writes, a bug isolating its user). Rejections go through ``DeadLetters``, triggers through the
``Outbox``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping

from stream.contracts.deadletter import DeadLetter
from stream.contracts.topics import Topics
from stream.core.batch import (
    BatchPlan,
    BatchReport,
    plan_batch,
    plan_due,
    split_touching,
    sum_counters,
)
from stream.core.identity import anonymous_subjects, merge, refuse_blocked, resolve
from stream.core.intake import Message, Valid, intake
from stream.core.pipeline import PlanContext
from stream.core.progress import InputProgress, Progress
from stream.core.steps import Rescore, rescored_cuts
from stream.core.writes import LoadedUser, UserWrite
from stream.identity.merge import IdentityPolicy
from stream.metrics import Metrics
from stream.models import Models
from stream.rules import Delivery, RuleSet
from stream.service.batch_metrics import record_batch, record_decisions
from stream.service.deadletters import DeadLetters, SendDeadLetters
from stream.service.outbox import Outbox, SendTriggers
from stream.service.retry import RedisRetry
from stream.service.trainer import Scoring
from stream.settings import Settings
from stream.storage.keys import erased_token
from stream.storage.store import Ends, Store, partition_times, watermark
from stream.tagging.definitions import TagCatalogue
from stream.tagging.engine import RfmThresholds, apply_event
from stream.tagging.state import DAY

log = logging.getLogger(__name__)
MAX_CONFLICT_RETRIES = 20
# A user whose write loses the compare-and-set this many times in one batch to writes that applied
# events is not racing a rebalance any more: their events go to the DLQ so the rest of the batch
# is written.
STORM_CONFLICTS = 5
# Writes that applied no event (the time-driven path re-evaluating the user, on any worker) are
# bounded: the watermark cannot pass the user's partition while this batch of it is unwritten, so
# each of the user's due points (and each forced re-evaluation) is claimed once. They never cost
# an event before this many conflicts in one batch, still short of MAX_CONFLICT_RETRIES.
STORM_ANY_CONFLICTS = 15
WALL_DUE_SLICE = 20  # users planned and written at once by the time-driven path in wall time (~10 ms)
INGEST_FIRST_S = 1.0  # the longest a wall-time slice of it waits for a batch of events to finish
MAX_REFRESHES_PER_TICK = 31  # event time, rfm_event_refresh "batches": RFM period starts a tick catches up
# Event time: how long the final freshen waits for the trainer's checkpoint of the history. The
# trainer publishes one within a timer tick of the input stopping; this covers its lease moving
# to a standby (30 s) and a deployment with no trainer running, where the freshen goes on without.
MODEL_WAIT_S = 45.0
LEAD_WAIT_S = 10.0  # event time: the longest a batch waits for the time-driven path (``event_time_lead_s``)
__all__ = ["BatchReport", "Processor"]
# A batch, or a part of one applied on its own: its messages, valid events (event-time order) and dead letters.
Part = tuple[list[Message], list[Valid], list[DeadLetter]]


def carry_written(plan: BatchPlan, written: list[UserWrite], outcomes: Mapping[str, Counter[str]]) -> None:
    """Count in ``plan`` what earlier attempts of its batch already wrote (the store writes per
    state shard, so a conflict on one shard leaves the others written): those users' events
    keep the outcomes of the attempt that wrote them (the plan sees them as redelivered), and
    their decisions are the batch's. ``outcomes``: user -> event outcomes when written."""
    for uid, earlier in outcomes.items():
        for key, n in plan.by_user.get(uid, Counter()).items():
            plan.outcomes[key] -= n
        plan.outcomes.update(earlier)
    plan.written_earlier.extend(written)


Offsets = tuple[tuple[str, int], ...] | None  # a stored user's applied offsets (None: no state)


def _applied(user: LoadedUser) -> Offsets:
    return tuple(sorted(user.state.offsets.items())) if user.state is not None else None


def period_start(ts: float, interval: float) -> float:
    """The start of the RFM period (a multiple of ``interval`` of event time) ``ts`` is in."""
    return math.floor(ts / interval) * interval


def refresh_points(last: float, mark: float, interval: float, limit: int = MAX_REFRESHES_PER_TICK) -> list[float]:
    """The RFM period starts after ``last`` up to ``mark``, the earliest ``limit`` of them (the
    rest at the next tick)."""
    first = period_start(last, interval) + interval
    return [t for t in (first + k * interval for k in range(limit)) if t <= mark]


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
        self.settings, self.catalogue, self.store, self.metrics = settings, catalogue, store, metrics
        self.wall_clock = wall_clock
        self.rules = rules  # swapped by the rules watcher on a valid reload
        self.topics = Topics(settings.topic_prefix)
        self.retry = RedisRetry(metrics)  # Redis calls, and the worker's health
        self.scoring = Scoring(models, store, self.retry, metrics)  # learning happens in the Trainer
        self.dead_letters = DeadLetters(send_dead_letters, metrics, settings.processor_version)
        self.outbox = Outbox(store, self.retry, metrics, send_triggers, wall_clock, settings.clock == "wall")
        self.event_clock = 0.0  # largest event time this worker has seen (event-time mode)
        self.progress = InputProgress()  # how far each input partition was read (event-time watermark)
        self.rfm_refreshed_at = -math.inf  # event time: the last RFM refresh on the event-time cadence
        self._seen_mark = self._freshened = 0.0  # watermark at the last ``freshen`` call / freshening
        self._model_wait: tuple[float, float] | None = None  # (mark, monotonic start) of a freshen's wait
        # event time: the highest watermark ``now`` gave and how far the time-driven path has
        # evaluated every due user (``Store.advance_timed``); a batch far ahead waits (``_keep_lead``)
        self._mark_seen = self._timed = -math.inf
        self._drained = asyncio.Event()
        # Fresh (log start, end) offsets of every input partition, or None when the consumer cannot
        # tell yet; set by the worker's timers. Without it ``now`` trusts the stored CAUGHT flags.
        self.input_ends: Callable[[], Awaitable[Ends | None]] | None = None
        self._ingesting = 0  # batches of events being processed now (``_ingest_first``)
        self._ingest_idle = asyncio.Event()
        self._ingest_idle.set()
        self._exact_mark: float | None = None  # the highest watermark ``now`` computed with fresh end offsets
        self.identity_policy = IdentityPolicy(
            frozenset(v.strip().lower() for v in settings.identity_blocked_ids),
            settings.identity_max_merges_per_day,
            settings.identity_max_merges,
        )

    @property
    def healthy(self) -> bool:
        """False while a Redis call keeps failing."""
        return self.retry.healthy

    @property
    def last_error(self) -> str | None:
        return self.retry.last_error

    # -- event path ----------------------------------------------------------------------
    async def process(
        self,
        messages: list[Message],
        highwaters: Mapping[str, int | None] | None = None,
        read_through: Mapping[str, float] | None = None,
    ) -> BatchReport:
        """Apply one batch exactly once (idempotent under redelivery).

        ``highwaters``: the consumer's high-water mark of every input partition assigned to this
        worker ("topic/partition" -> next offset to be written), from which the event-time
        watermark learns which partitions still have messages waiting. A caller that cannot tell
        passes None and the watermark stays the clock. ``read_through``: per input partition, the
        event time before which the consumer has handed out all its records, this batch included
        (``Inbox.read_through``, in step); it tells a period cut that no earlier event can come.
        """
        self._ingesting += 1
        self._ingest_idle.clear()
        try:
            received = time.perf_counter()
            part: Part = (messages, *self._intake(messages))
            if self.settings.clock == "event" and part[1]:
                await self._keep_lead(max(v.event.epoch for v in part[1]))
            if self.settings.clock == "wall" or self.settings.rfm_event_refresh != "batches":
                return await self._process(part, highwaters, received)
            report = BatchReport()
            while (cut := self._period_cut(part, highwaters, read_through)) is not None:
                head, part, start = cut
                if head[0]:
                    report.add(await self._process(head, highwaters, received))
                await self.refresh_rfm_at(start, settled=True)
            report.add(await self._process(part, highwaters, received))
            return report
        finally:
            self._ingesting -= 1
            if not self._ingesting:
                self._ingest_idle.set()

    def _period_cut(
        self, part: Part, highwaters: Mapping[str, int | None] | None, read_through: Mapping[str, float] | None
    ) -> tuple[Part, Part, float] | None:
        """``rfm_event_refresh`` "batches": (the part of the batch before the next RFM period
        start, the rest, that start) when the batch crosses it and every input partition will
        have been read up to it once the batch is; None: apply the batch whole. The first batch
        refreshes the period its first event is in before anything is applied. Each partition's
        part is a prefix of its records (per-user offsets stay increasing); an envelope goes with
        its first event, dead letters with the first part. The batch is parsed once: an event's
        age is judged against its partition's time within the batch either way (``intake``)."""
        messages, valid, dead = part
        if not valid:
            return None
        interval, last = self.settings.rfm_refresh_event_s, self.rfm_refreshed_at
        if last == -math.inf:
            return ([], [], []), part, period_start(valid[0].event.epoch, interval)
        start = period_start(last, interval) + interval
        at = next((i for i, v in enumerate(valid) if v.event.epoch >= start), None)
        if at is None:
            return None
        # periods without events change no rank set: straight to the one of the next event (as the driver)
        start = period_start(valid[at].event.epoch, interval)
        read = self.progress.copy().update(messages, valid, highwaters)  # how far each partition is read after it
        times = partition_times(self.store.parts_seen, read)
        for source, through in (read_through or {}).items():
            times[source] = max(times.get(source, through), through)
        if min(times.values(), default=0.0) < start:
            return None  # a partition lags: its events before ``start`` may still come (applied after it)
        later = {id(v.message) for v in valid[at:]} - {id(v.message) for v in valid[:at]}
        head = ([m for m in messages if id(m) not in later], [v for v in valid if id(v.message) not in later], dead)
        return head, ([m for m in messages if id(m) in later], [v for v in valid if id(v.message) in later], []), start

    def _intake(self, messages: list[Message]) -> tuple[list[Valid], list[DeadLetter]]:
        """Parse and check a batch (``intake``) with this worker's settings and clocks."""
        s, wall = self.settings, self.wall_clock()
        event_time = s.clock == "event"
        return intake(
            messages,
            self.catalogue,
            wall_now=wall,
            clock_now=wall,
            max_future_skew_s=s.max_future_skew_s,
            processor_version=s.processor_version,
            event_time=event_time,
            max_message_bytes=s.max_message_bytes,
            # event time: an event's age is judged against its own partition (issue 11 §4)
            partition_clock=self.progress.reached(self.store.parts_seen) if event_time else None,
        )

    async def drain_due(self, mark: float | None) -> None:
        """Re-evaluate everything due up to ``mark`` (None: wall time), a bounded claim at a time;
        in event time record how far every due user is evaluated (the trainer learns up to it)."""
        for _ in range(100):
            written = await self.reevaluate_due(mark)
            if mark is not None:
                self._timed = await self.retry("clock", self.store.advance_timed, mark)
                self._drained.set()
            if written == 0:
                break

    async def _keep_lead(self, last: float) -> None:
        """Event time: hold a batch whose last event is more than ``event_time_lead_s`` past how
        far the time-driven path has evaluated every due user, until it is not or that path has
        drained up to the latest watermark (waiting longer gains nothing: the watermark moves
        with the batches), for at most ``LEAD_WAIT_S``. The batches share the loop with that path
        and ran months ahead of it; the trainer learns a label only once that path has passed its
        deadline, so the batches scored with a model that had learned nothing of those months
        (``event_time_lead_s``; 0: no wait). A processor whose ``drain_due`` never ran (the
        offline driver drains after every batch itself) never waits."""
        lead = self.settings.event_time_lead_s
        if not lead or self._timed == -math.inf:
            return
        began = time.monotonic()
        outcome = "caught_up"
        while self._timed < last - lead and self._timed < self._mark_seen:
            remaining = began + LEAD_WAIT_S - time.monotonic()
            if remaining <= 0:
                outcome = "timed_out"
                break
            self._drained.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), remaining)
        if (waited := time.monotonic() - began) > 0.001:
            self.metrics.lead_wait.labels(outcome).inc(waited)

    async def refresh_rfm_at(self, at: float, settled: bool = False) -> None:
        """Refresh the RFM thresholds at event time ``at`` (users whose scores move are made due).

        ``settled`` (``rfm_event_refresh`` batches): the due points up to ``at`` that the refresh
        could change are evaluated on the thresholds before it, as the offline driver, which
        evaluates every user due up to a period start before refreshing there. Only those: a
        user's scores are the same on both thresholds unless a cut point moved across their
        metric (``Store.refresh_rfm``'s ``settle``); the rest are due later on the thresholds of
        then, and as every refresh settles its own users first, those give the scores of their
        time. Before the cut points are chosen, two more groups are evaluated: the ranked users
        whose retention may end by ``at`` (deleted, they leave the rank sets, as in the driver)
        and the users an earlier refresh made due now (re-scored at this start, as the drain did).
        The time-driven path folds the rest, as in "tick", instead of being drained at every start.
        """
        if not settled:
            await self.retry("rfm_refresh", self.store.refresh_rfm, at, self.rescored_cuts())
        else:
            # retention ends (retention_end) whole days after the day of the latest event: a user
            # deleted by ``at`` last ordered before this
            last_order = (math.floor(at / DAY) - self.settings.lifecycle_retention_days + 1) * DAY
            first = await self.retry("ranked_before_or_due_now", self.store.ranked_before_or_due_now, last_order)
            await self._settle(at, first)
            settle = functools.partial(self._settle, at)
            await self.retry("rfm_refresh", self.store.refresh_rfm, at, self.rescored_cuts(), settle)
        self.rfm_refreshed_at = max(self.rfm_refreshed_at, at)

    async def _settle(self, at: float, users: dict[int, list[str]]) -> bool:
        """Evaluate the due points up to ``at`` of those of ``users`` due by then (shard ->
        users); returns whether one of them was deleted."""
        due = await self.retry("due_by", self.store.due_by, users, at)
        written = await self._reevaluate(due, at) if due else []
        return any(w.state is None for w in written)

    async def refresh_rfm_on_tick(self, mark: float) -> None:
        """Event time, the timer's tick at watermark ``mark``: with ``rfm_event_refresh`` "tick",
        refresh at ``mark`` once the clock moved ``rfm_refresh_event_s`` since the last refresh.
        With "batches" the batches refresh at the period starts they cross; the tick refreshes
        the period starts up to ``mark`` only once nothing was read past it (the input stopped),
        each after the users due before it (``refresh_points``)."""
        s = self.settings
        if s.rfm_event_refresh == "tick":
            if mark - self.rfm_refreshed_at >= s.rfm_refresh_event_s:
                await self.refresh_rfm_at(mark)
            return
        if self.rfm_refreshed_at == -math.inf or self.event_clock > mark:
            return
        for at in refresh_points(self.rfm_refreshed_at, mark, s.rfm_refresh_event_s):
            await self.drain_due(at)
            await self.refresh_rfm_at(at)

    async def _process(self, part: Part, highwaters: Mapping[str, int | None] | None, received: float) -> BatchReport:
        """Apply one batch (or part of one, ``received`` at ``perf_counter`` time) and write it."""
        messages, valid, dead = part
        report = BatchReport(messages=len(messages))
        wall = self.wall_clock()
        event_time = self.settings.clock == "event"
        await self.dead_letters.send(dead, report.dead_letters)
        valid, blocked = refuse_blocked(valid, self.identity_policy)
        await self.dead_letters.reject("blocked_identifier", [(v.message, e) for v, e in blocked], report.dead_letters)
        batch_max_ts = max((v.event.epoch for v in valid), default=None)
        progress = self.progress.update(messages, valid, highwaters) if event_time else None
        conflicted: Counter[str] = Counter()  # user -> conflicts in this batch
        raced: Counter[str] = Counter()  # user -> conflicts with a write that applied events
        written: list[UserWrite] = []  # written by an attempt whose other shards conflicted
        written_outcomes: dict[str, Counter[str]] = {}  # their users' event outcomes then
        for _attempt in range(MAX_CONFLICT_RETRIES):
            valid, plan, now, seen = await self._plan(valid, wall, batch_max_ts, progress, report)
            carry_written(plan, written, written_outcomes)
            stats = plan.stats(len(messages), report.dead_letters)
            clock = now if event_time else None
            conflicts = await self.retry("write", self.store.write, plan.writes, clock, stats, progress)
            if not conflicts:
                break
            self.metrics.write_conflicts.inc()
            log.info("version conflict on %d users; recomputing batch", len(conflicts))
            lost = set(conflicts)
            conflicted.update(lost)
            raced.update(await self._raced(lost, seen))
            for w in plan.writes:
                if w.uid not in lost and w.uid not in written_outcomes:
                    written.append(w)
                    written_outcomes[w.uid] = plan.by_user.get(w.uid, Counter())
            stormy = {u for u in lost if raced[u] >= STORM_CONFLICTS or conflicted[u] >= STORM_ANY_CONFLICTS}
            valid = await self._isolate_storm(valid, stormy, report)
        else:
            raise RuntimeError(f"batch kept conflicting after {MAX_CONFLICT_RETRIES} attempts")
        if event_time:
            self.event_clock = max(self.event_clock, now)
        await self._written(plan, valid, report, received)
        return report

    async def _raced(self, lost: set[str], seen: Mapping[str, Offsets]) -> list[str]:
        """Of the users whose write just lost the compare-and-set, those whose state another
        writer changed by applying events (or erasing them) since this batch read it: a time-driven
        re-evaluation moves the version without touching the applied offsets."""
        if not lost:
            return []
        now, _, _ = await self.retry("load", self.store.load, sorted(lost))
        return [uid for uid in lost if now[uid].erased or _applied(now[uid]) != seen.get(uid)]

    async def _isolate_storm(self, valid: list[Valid], stormy: set[str], report: BatchReport) -> list[Valid]:
        """Dead-letter the events that touch a user in a conflict storm; the others stay."""
        kept, storm = split_touching(valid, stormy)
        if not storm:
            return kept
        why = "write conflicts on this user in too many attempts of its batch"
        await self.dead_letters.reject("processing_error", [(v.message, why) for v in storm], report.dead_letters)
        return kept

    async def _plan(
        self,
        valid: list[Valid],
        wall: float,
        batch_max_ts: float | None,
        progress: Progress | None,
        report: BatchReport,
    ) -> tuple[list[Valid], BatchPlan, float, dict[str, Offsets]]:
        """Load and plan the batch: (its events still to apply, the plan, the batch's clock, every
        loaded user's applied offsets as read). The events of erased users, and of users a bug
        broke, are dead-lettered here, never applied."""
        event_time, policy = self.settings.clock == "event", self.identity_policy
        anonymous = anonymous_subjects(valid)
        aliases = await self.retry("aliases", self.store.aliases, anonymous) if anonymous else {}
        identity = resolve(valid, aliases, policy)
        loaded, stored_clock, thresholds = await self.retry("load", self.store.load, identity.subjects)
        seen = {uid: _applied(user) for uid, user in loaded.items()}  # before the plan mutates them
        self.metrics.store_data_lost.set(1 if self.store.data_lost else 0)
        merges = merge(identity, loaded, policy, self.catalogue.params.dedupe_window_events)
        owner = identity.owner
        erased = {uid for uid in identity.subjects if loaded[uid].erased}
        if erased:
            gone = [(v.message, erased_token(owner(v))) for v in valid if owner(v) in erased]
            await self.dead_letters.reject_erased(gone, report.dead_letters)
            valid = [v for v in valid if owner(v) not in erased]
        await self.sync_models()
        now = max(self.event_clock, stored_clock or 0.0, batch_max_ts or 0.0) if event_time else wall
        # the watermark without end offsets is the lowest partition time (``watermark``)
        times = partition_times(self.store.parts_seen, progress) if event_time else None
        mark = min([now, *times.values()]) if times is not None else now
        # the fold is this module's apply_event, read per batch (a component test substitutes a buggy one)
        context = self._context(thresholds, wall, self._settled(mark) if event_time else now)
        plan = plan_batch(
            valid,
            owner,
            loaded,
            merges,
            context,
            now=now,
            event_time=event_time,
            apply=apply_event,
            steps_until=mark,
            partition_times=times,
        )
        if plan.late:
            late = {id(v) for v in plan.late}
            why = "older than the longest window before its user's latest evaluation"
            await self.dead_letters.reject("too_old", [(v.message, why) for v in plan.late], report.dead_letters)
            valid = [v for v in valid if id(v) not in late]
        if plan.broken:
            # Nothing of these users is written; their events go to the DLQ to be replayed after a fix.
            failed = [(v.message, plan.broken[owner(v)]) for v in valid if owner(v) in plan.broken]
            n = await self.dead_letters.reject("processing_error", failed, report.dead_letters)
            self.metrics.processing_errors.labels("event").inc(n)
            valid = [v for v in valid if owner(v) not in plan.broken]
        return valid, plan, now, seen

    async def _written(self, plan: BatchPlan, valid: list[Valid], report: BatchReport, received: float) -> None:
        """After the write: deliver the batch's triggers, fill in the report, record the metrics."""
        self._count_decisions([*plan.written_earlier, *plan.writes])
        if any(w.triggers for w in [*plan.written_earlier, *plan.writes]):
            await self.deliver_triggers()
        report.record(plan)
        finished = self.wall_clock() if self.settings.clock == "wall" else None
        record_batch(self.metrics, plan, valid, report.messages, received, finished)

    async def dead_letter_batch(self, messages: list[Message], error: BaseException) -> None:
        """Last resort for a bug outside per-user isolation: keep the batch in the DLQ, never drop it."""
        await self.dead_letters.reject("processing_error", [(m, f"batch: {error!r}") for m in messages])
        self.metrics.processing_errors.labels("batch").inc()

    # -- time-driven path ----------------------------------------------------------------
    async def now(self) -> float:
        """The time the time-driven path evaluates up to: wall time, or the event-time watermark.

        With ``input_ends`` (the worker's timers set it) the watermark is exact: the stored
        progress is checked against end offsets fetched after it was read (``watermark``), so a
        partition read to the end of a stale fetch, or not reported yet by its owner, holds the
        clock back while it still has messages waiting (issue 11 §4)."""
        if self.settings.clock == "wall":
            return self.wall_clock()
        clock, parts = await self.retry("clock", self.store.progress)
        self.event_clock = max(self.event_clock, clock)
        if self.input_ends is None:
            mark = watermark(clock, parts)
            self._mark_seen = max(self._mark_seen, mark)
            return mark
        try:
            ends = await self.input_ends()  # fetched after the clock and progress were read
        except Exception as exc:  # the broker is away: the last exact watermark stays safe
            log.warning("could not fetch the input partitions' end offsets (%r); watermark held", exc)
            ends = None
        if ends is None:  # no metadata yet, or the broker is away: the last exact one (or hold)
            return self._exact_mark or 0.0
        mark = watermark(clock, parts, None, ends)
        self._exact_mark = mark if self._exact_mark is None else max(self._exact_mark, mark)
        self._mark_seen = max(self._mark_seen, self._exact_mark)
        return self._exact_mark

    def _settled(self, flagged: float) -> float:
        """The time up to which a batch counts its input as read for certain (exposures close up
        to it): the watermark of the stored CAUGHT flags, capped by the last exact one (``now``)
        when the worker can fetch end offsets. Those flags are as old as the fetch that set them:
        a partition another worker (or this one's queue) still holds messages for can read CAUGHT,
        and a batch trusting them closed a user's exposure as expired while their order still
        waited on the transactions partition. The exact mark only grows, so an older one stays
        safe; before the first one nothing is settled. (Change points are still evaluated up to
        the flags' watermark: skipping them would lose a rule firing or a churn snapshot.)"""
        if self.input_ends is None:
            return flagged  # a finite input read to its end (the offline driver, component tests)
        return min(flagged, self._exact_mark or 0.0)

    async def reevaluate_due(self, now: float | None = None) -> int:
        """Re-evaluate a bounded batch of users whose tags change without an event (windows,
        recency, timers), each at their due time (``plan_due``); returns how many were written.
        ``now``: the time to evaluate up to, from an earlier ``now()`` (a watermark stays safe);
        None: ``now()``.

        In wall time a claim is planned and written in slices of ``WALL_DUE_SLICE`` users: planning
        is synchronous (~0.3-0.6 ms a user), and a claim of 1,000 users re-scored after an RFM
        refresh held the event loop for ~650 ms, so every event behind it waited (the p99 event ->
        profile tail, issue 16 goal 4). In event time (backfills) the whole claim is one slice."""
        now = await self.now() if now is None else now
        if now <= 0:
            return 0
        s = self.settings
        claimed = await self.retry("claim", self.store.claim_due, now, s.due_batch, self.wall_clock(), s.due_lease_s)
        if not claimed:
            return 0
        wall_time = s.clock == "wall"
        size = WALL_DUE_SLICE if wall_time else len(claimed)
        began, done = time.monotonic(), 0
        for start in range(0, len(claimed), size):
            if wall_time:
                if time.monotonic() - began > s.due_lease_s / 2:
                    break  # a saturated worker: the rest stays claimed until its lease expires, then is retried
                await self._ingest_first()
            done += len(await self._reevaluate(dict(claimed[start : start + size]), now))
        return done

    async def _ingest_first(self) -> None:
        """Wall time: wait while a batch of events is being processed (at most ``INGEST_FIRST_S``,
        so a saturated worker still makes time-driven progress). Events have the latency goal;
        a re-score after an RFM refresh can wait a batch. Sharing the loop evenly, a drain of
        ~1,000 re-scored users halved the ingest rate for over a second and the events queued."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ingest_idle.wait(), INGEST_FIRST_S)

    async def _reevaluate(self, due_at: dict[str, float], now: float) -> list[UserWrite]:
        """Evaluate and write the users ``due_at`` (user -> due time; claimed, or found due by
        ``_settle``) up to ``now``; returns the writes stored."""
        wall = self.wall_clock()
        pending = list(due_at)
        done: list[UserWrite] = []
        for _attempt in range(3):
            loaded, _, thresholds = await self.retry("load", self.store.load, pending)
            await self.sync_models()
            writes, failed = plan_due(pending, loaded, due_at, self._context(thresholds, wall, now), now)
            if failed:  # they stay in flight until their lease expires, then are retried
                self.metrics.processing_errors.labels("reevaluate").inc(len(failed))
            # the store-wide count is stored only by a write without conflicts: it includes the
            # users earlier attempts wrote (their own counters went with their shards)
            stats = sum_counters({"reevaluations": len(done) + len(writes)}, writes)
            lost = set(await self.retry("write", self.store.write, writes, None, stats))
            # a conflict leaves only its shards unwritten (a batch of events wrote one of their
            # users since the load): the others are done, and those shards' users are re-read and
            # planned again, not left claimed until their lease expires
            done += [w for w in writes if w.uid not in lost]
            pending = [w.uid for w in writes if w.uid in lost]
            if not pending:
                break
        self.metrics.reevaluations.inc(len(done))
        self._count_decisions(done)
        if any(w.triggers for w in done):
            await self.deliver_triggers()
        return done

    def _context(self, thresholds: RfmThresholds, wall: float, settled: float) -> PlanContext:
        s = self.settings
        return PlanContext(
            delivery=Delivery.at(s.delivery, wall, s.delivery_horizon_s),
            time_steps=s.time_steps if s.clock == "event" else "every",
            catalogue=self.catalogue,
            thresholds=thresholds,
            wall_now=wall,
            rules=self.rules,
            topics=self.topics,
            models=self.scoring.models,
            settled=settled,
            retention_days=self.settings.lifecycle_retention_days,
        )

    def rescored_cuts(self) -> Rescore | None:
        """What an RFM refresh re-scores at once (``Store.refresh_rfm``): every user a moved cut
        point re-scores (None), except in an event-time replay of needed steps (``steps.rescored_cuts``)."""
        s = self.settings
        return rescored_cuts(self.rules) if s.clock == "event" and s.time_steps == "needed" else None

    async def sync_models(self) -> None:
        """Score with the trainer's newer checkpoint, if the last ``load`` saw one."""
        await self.scoring.sync()

    def _count_decisions(self, writes: list[UserWrite]) -> None:
        record_decisions(self.metrics, writes)

    # -- trigger delivery ----------------------------------------------------------------
    async def deliver_triggers(self) -> int:
        """Deliver the trigger outbox (``Outbox.deliver``); returns how many entries were sent."""
        return await self.outbox.deliver()

    async def freshen(self, mark: float) -> bool:
        """Event time, ``time_steps`` needed: bring every profile to the clock once the input stops.

        Users are evaluated only at the change points a decision needs, so between those their
        profiles lag the clock. When the watermark is the same as at the previous call, is past the
        last freshening and nothing is due up to it, every user is made due now (re-evaluated at
        the watermark by the time-driven path; no rule can fire there: nothing it reads changed).
        With models, it first waits (up to ``MODEL_WAIT_S``) for a checkpoint that has learned
        every item written and every label resolved by then (``Store.models_cover``), so the
        profiles end scored with the model that learned the history: the trainer learns behind
        the writes, and a backfill that ended on an earlier checkpoint kept its churn bands until
        each user's next evaluation. Returns whether it did.
        """
        s = self.settings
        if s.clock != "event" or s.time_steps != "needed":
            return False
        stable, self._seen_mark = mark == self._seen_mark, mark
        if not stable or mark <= self._freshened:
            return False
        count, _ = await self.retry("due_stats", self.store.due_stats, mark)
        if count or not await self._models_cover(mark):
            return False
        await self.retry("mark_all_due", self.store.mark_all_due)
        self._freshened = mark
        return True

    async def _models_cover(self, mark: float) -> bool:
        """Whether the profiles may be brought to ``mark`` now: no models, a checkpoint covering
        it (``Store.models_cover``), or ``MODEL_WAIT_S`` of waiting for one (no trainer runs)."""
        if self.scoring.models is None or await self.retry("models_cover", self.store.models_cover, mark):
            return True
        if self._model_wait is None or self._model_wait[0] != mark:
            self._model_wait = (mark, time.monotonic())
        if time.monotonic() - self._model_wait[1] < MODEL_WAIT_S:
            return False
        log.warning(
            "no model checkpoint has learned what was written up to event time %.0f after %.0f s (is a trainer "
            "running?); bringing the profiles to the clock with model v%d",
            mark,
            MODEL_WAIT_S,
            self.scoring.version,
        )
        return True

    async def observe_due(self) -> None:
        now = await self.now()
        count, oldest = await self.retry("due_stats", self.store.due_stats, now)
        self.metrics.due_pending.set(count)
        self.metrics.freshness.set(max(0.0, now - oldest) if oldest is not None and oldest <= now else 0.0)
        self.metrics.outbox_pending.set(await self.outbox.pending())
