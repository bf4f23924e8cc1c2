"""The one offline driver: the worker's own code replaying an export in event time on a real Redis.

``drive(settings, items, ...)`` runs ``stream.service.processor.Processor`` on a
``stream.storage.store.Store`` (the Redis/Valkey of ``PORTRAIT_REDIS_URL``) the way a worker in
event-time mode (``clock="event"``) would process the export, and reports what it did. It backs
``portrait rules backtest`` (``stream.offline.backtest``) and ``portrait evaluate``
(``stream.offline.evaluation``); there is no second simulator of tags, rules or models.

* **Scratch namespace.** Everything is written under a key prefix unique to the run
  (``<PORTRAIT_KEY_PREFIX>-offline-<random>``, see ``stream.storage.keys``), never under the
  worker's; every key of it is deleted at the end, also on error. ``inspect`` may read the store
  before that.
* **Input.** Items as ``stream.kafka.replay.read_events`` yields them, routed like ``replay``
  (``route``: each on its input topic, partition 0), sorted by event time (ties: file order) and
  fed as ``Message``s, offsets rising in that order, in batches of ``settings.batch_size``. Every
  batch reports the partitions read to their end (``highwaters``), so the event-time watermark
  is the clock, as for a worker reading a time-ordered input.
* **Time-driven path.** Between batches and after the last one, exactly the worker's timer:
  ``reevaluate_due`` until nothing is due at ``now()`` (the watermark). After the last event the
  clock advances to the end (+ ``horizon``) and the due users are drained there.
* **RFM thresholds** are refreshed with the store's own refresh script on an event-time cadence:
  when the clock enters a new period of ``rfm_interval`` (batches are cut at period starts; the
  clock is advanced to the start and due users are drained before the refresh). The worker
  refreshes on wall time instead, which during a replay sweeps months between refreshes.
* **Triggers** are written to the outbox by the worker's code and handed to ``send_triggers``:
  here captured, never produced. **Dead letters** go to ``send_dead_letters``: counted by reason.
* **Pauses** (``pauses``, event times): before the first event at or after a pause, the clock is
  advanced to it, the time-driven path drained there, the trainer learns and publishes, and
  ``at_pause(at, profiles)`` gets the profile every stored user would have if evaluated at that
  moment (``plan_write`` on the stored state with the scoring models: what the worker would
  publish; nothing is written). Users whose profile was deleted (retention) are absent. This backs
  the cutoff evaluation (``portrait evaluate``): one replay, several cutoffs.
* **Models** (``models``): the processor scores with them; with ``learn=True`` the trainer
  (``stream.service.trainer.Trainer``) steps in-process: after every batch it learns the examples
  the writes appended to the stream, and publishes a checkpoint each ``model_checkpoint_interval_s``
  of event time, which the processor loads with its next batch (as workers do).

Differences from a live run, by construction: one input read in strict event-time order (a live
consumer reads partitions at different speeds, see docs/rules.md "Effect tracking in replays"),
thresholds and checkpoints on event-time cadences, and nothing is sent.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError

from stream.contracts.deadletter import DeadLetter
from stream.contracts.events import parse_event
from stream.contracts.topics import Topics
from stream.core.pipeline import Message, PlanContext, plan_write
from stream.core.writes import Decided, UserWrite
from stream.kafka.replay import route
from stream.metrics import Metrics
from stream.models import Models, ModelsConfig
from stream.rules import RuleSet
from stream.service.processor import Processor
from stream.service.trainer import Trainer
from stream.settings import Settings
from stream.storage.store import OutboxEntry, Progress, Store
from stream.tagging.definitions import TagCatalogue

DAY = 86400.0
PARTITION = 0
UNTIMED = -math.inf  # sort key of messages without a readable event time: fed first, dead-lettered


@dataclass(frozen=True)
class Firing:
    """One rule firing: ``outcome`` ``send`` or ``suppressed`` (``reason`` says why).

    ``time_driven``: evaluated at a moment without an event of the user (a change point)."""

    rule_id: str
    user_id: str
    at: float
    outcome: str
    reason: str | None
    time_driven: bool


@dataclass
class OfflineRun:
    """What one drive did. ``stats`` is the run's ``P:v1:stats`` hash (the counters behind
    ``portrait rules report``); ``triggers`` every outbox entry the worker code delivered."""

    messages: int = 0
    applied: int = 0
    redelivered: int = 0
    duplicates: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    users: int = 0
    expired_users: int = 0
    start: float | None = None  # first event time
    end: float | None = None  # last event time
    clock_end: float | None = None  # end + horizon: the clock at the last time-driven drain
    batches: int = 0
    reevaluations: int = 0  # time-driven evaluations of the timer path
    rfm_refreshes: int = 0
    rfm_version: int = 0
    firings: list[Firing] = field(default_factory=list)
    triggers: list[OutboxEntry] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    learned: int = 0  # model items the trainer learned
    checkpoints: int = 0  # model checkpoints published
    # (label, score, recency baseline, snapshot time) of every churn example learned (learn=True)
    churn_record: list[tuple[int, float, float, float]] = field(default_factory=list)
    key_prefix: str = ""
    seconds: float = 0.0


class _RecordingStore(Store):
    """The worker's store, also noting the rule decisions and deletions of every applied write
    (the driver's only tap; states are not kept, they stay in Redis)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.decided: list[tuple[str, Decided]] = []  # (user, decision)
        self.expired = 0  # users deleted (expired, not merged)

    async def write(
        self, writes: list[UserWrite], clock: float | None, stats: dict[str, int], progress: Progress | None = None
    ) -> list[str]:
        conflicts = await super().write(writes, clock, stats, progress)
        if not conflicts:
            for w in writes:
                self.decided.extend((w.uid, d) for d in w.decisions)
                self.expired += w.state is None and w.alias_to is None
        return conflicts


def scratch_settings(settings: Settings) -> Settings:
    """``settings`` in event-time mode with a key prefix of its own (unique per call), deciding
    firings as live delivery would (no backfill horizon: a backtest shows what would be sent;
    its triggers go nowhere)."""
    prefix = f"{settings.key_prefix}-offline-{uuid.uuid4().hex[:12]}"
    return settings.model_copy(
        update={"clock": "event", "key_prefix": prefix, "delivery": "live", "delivery_horizon_s": 0.0}
    )


def _sorted_messages(items: Iterable[dict[str, Any] | bytes], topics: Topics) -> list[tuple[float, Message, str]]:
    """(event time, message, subject) in event-time order (ties: input order). Each message is on
    its input topic (``route``, as ``portrait replay`` produces it), partition 0, offsets rising
    in that order: a time-ordered export as the worker would read it, so stored states (applied
    positions per topic-partition) have their live shape."""
    keyed: list[tuple[float, int, str, bytes | None, bytes, str]] = []
    for index, item in enumerate(items):
        topic, key, value, _known = route(item, topics)
        try:
            event = parse_event(value)
            keyed.append((event.epoch, index, topic, key, value, event.subject_id))
        except ValidationError:
            keyed.append((UNTIMED, index, topic, key, value, ""))
    keyed.sort(key=lambda k: (k[0], k[1]))
    offsets: Counter[str] = Counter()
    out = []
    for ts, _, topic, key, value, subject in keyed:
        out.append((ts, Message(topic, PARTITION, offsets[topic], key, value), subject))
        offsets[topic] += 1
    return out


async def drive(
    settings: Settings,
    items: Iterable[dict[str, Any] | bytes],
    *,
    catalogue: TagCatalogue,
    rules: RuleSet | None = None,
    models: ModelsConfig | None = None,
    learn: bool = False,
    horizon: float = 0.0,
    rfm_interval: float = DAY,
    inspect: Callable[[Store], Awaitable[None]] | None = None,
    pauses: Sequence[float] = (),
    at_pause: Callable[[float, dict[str, dict[str, str]]], None] | None = None,
) -> OfflineRun:
    """Replay ``items`` through the worker's code in a scratch namespace; see the module docstring."""
    if horizon < 0:
        raise ValueError("horizon must be >= 0")
    if rfm_interval <= 0:
        raise ValueError("rfm_interval must be > 0")
    started = time.perf_counter()
    scratch = scratch_settings(settings)
    topics = Topics(scratch.topic_prefix)
    run = OfflineRun(key_prefix=scratch.key_prefix)
    feed = _sorted_messages(items, topics)
    run.messages = len(feed)
    dead: set[tuple[str, int]] = set()  # (topic, offset) of dead-lettered messages

    async def send_dead_letters(letters: list[DeadLetter]) -> None:
        for letter in letters:
            run.dead_letters[letter.reason] += 1
            dead.add((letter.source_topic, letter.source_offset))

    async def send_triggers(entries: list[OutboxEntry]) -> None:
        run.triggers.extend(entries)

    store = _RecordingStore.from_settings(scratch)
    assert isinstance(store, _RecordingStore)
    metrics = Metrics()
    processor = Processor(
        scratch,
        catalogue,
        store,
        send_dead_letters,
        metrics,
        rules=rules,
        send_triggers=send_triggers,
        models=Models(models) if models is not None else None,
    )
    trainer: Trainer | None = None
    if models is not None and learn:
        trainer = Trainer(store, models, metrics, checkpoint_interval_s=math.inf)
        trainer.models = Models(models)  # fresh: nothing to resume in a scratch namespace
        trainer.models.churn.record = run.churn_record
    try:
        await store.ensure_outbox()
        paused = _Pauses(sorted(pauses), at_pause, processor, store, catalogue)
        await _replay(run, feed, processor, store, trainer, scratch, horizon, rfm_interval, paused)
        run.stats = await store.stats()
        run.rfm_version = (await store.rfm_thresholds()).version
        if inspect is not None:
            await inspect(store)
    finally:
        try:
            await store.delete_namespace()
        finally:
            await store.close()
    events_of = {(subject, ts) for ts, _, subject in feed}
    run.expired_users = store.expired
    for uid, d in store.decided:
        run.firings.append(Firing(d.rule, uid, d.at, d.outcome, d.reason or None, (uid, d.at) not in events_of))
    run.users = len({subject for ts, m, subject in feed if ts != UNTIMED and (m.topic, m.offset) not in dead})
    run.seconds = time.perf_counter() - started
    return run


async def _replay(
    run: OfflineRun,
    feed: list[tuple[float, Message, str]],
    processor: Processor,
    store: Store,
    trainer: Trainer | None,
    settings: Settings,
    horizon: float,
    rfm_interval: float,
    pauses: _Pauses,
) -> None:
    read: dict[str, int] = {}  # source -> next offset: every partition read to its end after a batch
    period: int | None = None
    published_at: float | None = None

    async def drain() -> None:
        while n := await processor.reevaluate_due():
            run.reevaluations += n

    async def enter(at: float) -> None:
        """Refresh RFM thresholds when ``at`` is in a new period (drained up to its start first)."""
        nonlocal period
        current = math.floor(at / rfm_interval)
        if period is not None and current <= period:
            return
        if period is not None:
            await processor.retry("clock", store.advance_clock, current * rfm_interval)
            await drain()
        period = current
        await processor.retry("rfm_refresh", store.refresh_rfm, current * rfm_interval, processor.rescored_cuts())
        run.rfm_refreshes += 1

    async def train(clock: float, final: bool = False) -> None:
        nonlocal published_at
        if trainer is None:
            return
        run.learned += await trainer.tick()
        due = published_at is None or clock - published_at >= settings.model_checkpoint_interval_s
        if trainer.unpublished and (due or final):
            assert trainer.models is not None
            record, trainer.models.churn.record = trainer.models.churn.record, None  # not into the checkpoint
            try:
                await trainer.publish()
            finally:
                trainer.models.churn.record = record
            published_at = clock
            run.checkpoints += 1

    async def pause(at: float) -> None:
        await enter(at)
        await store.advance_clock(at)
        await drain()
        await train(at, final=True)
        await pauses.take(at)

    timed = [ts for ts, _, _ in feed if ts != UNTIMED]
    if timed:
        run.start, run.end = timed[0], timed[-1]
    i = 0
    while i < len(feed):
        first = feed[i][0]
        while first != UNTIMED and pauses.due(first):
            await pause(pauses.times[0])
        if first != UNTIMED:
            await enter(first)
        limit = (math.floor(first / rfm_interval) + 1) * rfm_interval if first != UNTIMED else -math.inf
        if first != UNTIMED and pauses.times:
            limit = min(limit, pauses.times[0])
        j = i
        while j < len(feed) and j - i < settings.batch_size and (feed[j][0] < limit or feed[j][0] == first):
            j += 1
        batch = [m for _, m, _ in feed[i:j]]
        for m in batch:
            read[m.source] = m.offset + 1
        report = await processor.process(batch, dict(read))
        run.batches += 1
        run.applied += report.applied
        run.redelivered += report.redelivered
        run.duplicates += report.duplicates
        await drain()
        await train(processor.event_clock)
        i = j
    if run.end is not None:
        run.clock_end = run.end + horizon
        while pauses.times and pauses.times[0] <= run.clock_end:
            await pause(pauses.times[0])
        t = run.end
        while t < run.clock_end:  # the horizon: the clock moves on, period by period
            t = min(run.clock_end, (math.floor(t / rfm_interval) + 1) * rfm_interval)
            await processor.retry("clock", store.advance_clock, t)
            await drain()
            await enter(t)  # a refresh when t starts a new period
        await drain()
        await train(run.clock_end, final=True)
        await drain()
    if settings.time_steps == "needed":
        # every profile at the final clock (the worker does this when its input stops: freshen)
        await store.mark_all_due()
        await drain()


class _Pauses:
    """The pauses still ahead, and what a pause hands to its callback."""

    LOAD_CHUNK = 500

    def __init__(
        self,
        times: list[float],
        callback: Callable[[float, dict[str, dict[str, str]]], None] | None,
        processor: Processor,
        store: Store,
        catalogue: TagCatalogue,
    ) -> None:
        self.times, self.callback = times, callback
        self.processor, self.store, self.catalogue = processor, store, catalogue

    def due(self, event_time: float) -> bool:
        return bool(self.times) and event_time >= self.times[0]

    async def take(self, at: float) -> None:
        self.times.pop(0)
        if self.callback is not None:
            self.callback(at, await self.profiles_at(at))

    async def profiles_at(self, at: float) -> dict[str, dict[str, str]]:
        """The profile of every stored user evaluated at ``at`` by the worker's ``plan_write``."""
        store = self.store
        uids = sorted([uid async for uid in store.reads.stored_users()])
        out: dict[str, dict[str, str]] = {}
        for start in range(0, len(uids), self.LOAD_CHUNK):
            chunk = uids[start : start + self.LOAD_CHUNK]
            loaded, _, thresholds = await store.load(chunk)
            await self.processor.sync_models()
            context = PlanContext(
                catalogue=self.catalogue,
                thresholds=thresholds,
                wall_now=at,
                topics=self.processor.topics,
                models=self.processor.scoring.models,
                settled=at,
                retention_days=self.processor.settings.lifecycle_retention_days,
            )
            for uid in chunk:
                user = loaded[uid]
                if user.state is None or user.erased:
                    continue
                write = plan_write(uid, user.version, user.state, at, context)
                if write.state is not None:
                    out[uid] = write.profile
        return out


def triggers_json(run: OfflineRun) -> list[dict[str, Any]]:
    """The captured triggers as documents, in delivery order."""
    return [orjson.loads(e.value) for e in run.triggers]
