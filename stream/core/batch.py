"""The pure plan of one batch: given the loaded states and the batch's valid events, the writes.

The service reads (states, thresholds, clock), calls ``plan_batch`` and writes what it returns;
nothing here does I/O. In event time a user is evaluated after each of their events and at each
change point between them (``catch_up``), as live processing one event at a time would, so rules,
conversions and models see the same steps however the events were batched; a user's steps are
written as one (``Steps``). A bug (an exception evaluating or applying) isolates its user: nothing
of that user is written and the plan names them in ``broken``, so their events can be
dead-lettered and replayed after a fix; the rest of the batch goes on. ``plan_due`` is the same
for the time-driven path (users whose tags change without an event).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from stream.contracts.events import Event
from stream.core.identity import Merges
from stream.core.intake import Valid
from stream.core.pipeline import PlanContext, plan_write
from stream.core.writes import LoadedUser, UserWrite
from stream.identity.merge import anon_subject
from stream.tagging.definitions import TagParams
from stream.tagging.engine import Applied, apply_event, left_window, redelivered
from stream.tagging.state import UserState

log = logging.getLogger(__name__)
# Change points evaluated before one user's next event, per batch: day-granular tags (recency)
# change daily, so this covers a gap of more than a year; the time-driven path would do the same.
MAX_CATCH_UP_STEPS = 400
APPLIED_COUNTER = f"events_{Applied.APPLIED.value}"

Apply = Callable[[UserState, Event, str, int, TagParams], Applied]


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
        return replace(
            final,
            audience_add=[(t, v) for t, v in now.items() if self.published.get(t) != v],
            audience_remove=[(t, v) for t, v in self.published.items() if now.get(t) != v],
            triggers=[t for w in self.writes for t in w.triggers],
            decisions=[d for w in self.writes for d in w.decisions],
            learn=[item for w in self.writes for item in w.learn],
            counters=sum_counters({}, self.writes),
        )


def catch_up(steps: Steps, uid: str, version: int, state: UserState, until: float, context: PlanContext) -> None:
    """Event time: evaluate the user at the change points that fall before their next event.

    The time-driven path only reaches a user once the watermark passes their due time; when the
    user's next event gets there first, the change (a window emptying, a churn label resolving,
    a rule firing on it) is evaluated here, at its own time, before the event is applied, as
    live processing would have. Each step counts as settled up to ``until`` (or the context's
    ``settled``, if lower).
    """
    settled: PlanContext | None = None  # built at the first step: most calls take none
    taken = 0
    while (
        taken < MAX_CATCH_UP_STEPS and state.due_at is not None and (state.evaluated_at or 0.0) < state.due_at <= until
    ):
        if settled is None:
            settled = replace(context, settled=until if context.settled is None else min(until, context.settled))
        step = plan_write(uid, version, state, state.due_at, settled)
        steps.add(step)
        taken += 1
        if step.state is None:
            break


def too_late(state: UserState, epoch: float) -> bool:
    """Event time: the user was already evaluated (and their tiles pruned) more than the longest
    window after ``epoch``, so an event then can no longer count in any of their windows (and the
    lifecycle memory has settled that day): it is dead-lettered as ``too_old``. Only the user's own
    timeline decides, never how far other users' partitions ran ahead."""
    at = state.evaluated_at
    return at is not None and left_window(epoch, at)


def sum_counters(stats: dict[str, int], writes: Iterable[UserWrite]) -> dict[str, int]:
    """``stats`` with every write's counters added (for P:v1:stats)."""
    for w in writes:
        for key, n in w.counters.items():
            stats[key] = stats.get(key, 0) + n
    return stats


@dataclass
class BatchPlan:
    """What a batch writes, and who could not be planned."""

    writes: list[UserWrite]  # none of a broken user, nor a merge into one (it waits for the fix)
    broken: dict[str, str]  # user -> error: a bug isolated the user, not the batch
    touched: dict[str, None]  # users whose state the batch changes (ordered set, broken ones included)
    outcomes: Counter[str]  # events applied / redelivered / duplicate, of users not broken
    identity: dict[str, int]  # identity counters (merges, refusals)
    late: list[Valid] = field(default_factory=list)  # event time: too old for their user's windows
    by_user: dict[str, Counter[str]] = field(default_factory=dict)  # outcomes per event owner
    unattributed: dict[str, int] = field(default_factory=dict)  # counters of users without a write
    # writes an earlier attempt of the same batch already stored (their shard did not conflict)
    written_earlier: list[UserWrite] = field(default_factory=list)

    def stats(self, messages: int, dead_letters: Mapping[str, int]) -> dict[str, int]:
        """The counters the batch adds to P:v1:stats, with its message and dead-letter counts."""
        # events_applied is in the writes' counters (``plan_batch``)
        outcomes = {f"events_{k}": n for k, n in self.outcomes.items() if f"events_{k}" != APPLIED_COUNTER}
        stats = sum_counters(outcomes, self.writes)
        stats.update({f"dlq_{k}": n for k, n in dead_letters.items()})
        stats["messages"] = messages
        for key, n in self.unattributed.items():  # identity counters are in the writes' counters
            stats[key] = stats.get(key, 0) + n
        return stats


@dataclass
class BatchReport:
    """What ``Processor.process`` did with a batch."""

    messages: int = 0
    applied: int = 0
    redelivered: int = 0
    duplicates: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)  # by reason
    users: int = 0

    def add(self, other: BatchReport) -> None:
        """Count a part of the same batch (applied in pieces)."""
        self.messages += other.messages
        self.applied += other.applied
        self.redelivered += other.redelivered
        self.duplicates += other.duplicates
        self.dead_letters.update(other.dead_letters)
        self.users += other.users

    def record(self, plan: BatchPlan) -> None:
        """Take the event outcomes and the users touched from the batch's written plan."""
        self.applied = plan.outcomes[Applied.APPLIED.value]
        self.redelivered = plan.outcomes[Applied.REDELIVERED.value]
        self.duplicates = plan.outcomes[Applied.DUPLICATE.value]
        self.users = len(plan.touched)


def plan_batch(
    valid: list[Valid],
    owner: Callable[[Valid], str],
    loaded: Mapping[str, LoadedUser],
    merges: Merges,
    context: PlanContext,
    *,
    now: float,
    event_time: bool,
    apply: Apply = apply_event,
    steps_until: float | None = None,
    partition_times: Mapping[str, float] | None = None,
) -> BatchPlan:
    """Apply ``valid`` (in order) to the owners' states and plan every write of the batch.

    ``loaded`` holds every owner (merged states in ``merges`` take precedence); ``context.settled``
    is the watermark (``now`` in wall time). ``steps_until`` (default ``context.settled``): how far
    a user's change points are evaluated before their next event (``catch_up``); the service passes
    the watermark of the stored progress flags there and a safer, possibly lower, ``settled``.
    ``partition_times`` ("topic/partition" -> how far it has been read, with this batch:
    ``store.partition_times``): a user's change points are then evaluated up to the lowest of the
    partitions their events can be on (``_Planner.steps_bound``), not held back by the others.
    ``apply`` folds one event (``apply_event``; a parameter so the service's fold is the one used).
    Mutates the loaded states.
    """
    planner = _Planner(valid, owner, loaded, merges, context, now, event_time, apply, steps_until, partition_times)
    for item in valid:
        planner.step(item)
    merges.count_refusals(planner.applied)
    touched = dict.fromkeys([*merges.into, *(uid for uid, a in planner.results if a is Applied.APPLIED)])
    writes = list(merges.writes)
    for uid in dict.fromkeys([*touched, *(u for u, s in planner.steps.items() if s.writes)]):
        write = planner.finish(uid, uid in touched) if uid not in planner.broken else None
        if write is not None:
            writes.append(write)
    broken = planner.broken
    outcomes = Counter(a.value for uid, a in planner.results if uid not in broken)
    writes = [w for w in writes if w.alias_to not in broken]
    by_user: dict[str, Counter[str]] = {}
    for uid, a in planner.results:
        if uid not in broken:
            by_user.setdefault(uid, Counter())[a.value] += 1
    # a user's applied events and identity counters are counted with their write (a store written
    # per shard counts exactly what each shard's write applied, also when another shard conflicts)
    owners = {w.uid: w for w in writes if w.alias_to is None}
    rest: dict[str, int] = {}
    for uid, counters in [
        *((u, {APPLIED_COUNTER: c[Applied.APPLIED.value]}) for u, c in by_user.items() if c[Applied.APPLIED.value]),
        *merges.by_user.items(),
    ]:
        target = owners[uid].counters if uid in owners else rest
        for key, n in counters.items():
            target[key] = target.get(key, 0) + n
    return BatchPlan(writes, broken, touched, outcomes, merges.counters, planner.late, by_user, rest)


class _Planner:
    """The per-user step loop of ``plan_batch``."""

    def __init__(
        self,
        valid: list[Valid],
        owner: Callable[[Valid], str],
        loaded: Mapping[str, LoadedUser],
        merges: Merges,
        context: PlanContext,
        now: float,
        event_time: bool,
        apply: Apply,
        steps_until: float | None,
        partition_times: Mapping[str, float] | None,
    ) -> None:
        self.owner, self.loaded, self.context, self.now, self.event_time = owner, loaded, context, now, event_time
        self.apply = apply
        if steps_until is None:
            steps_until = now if context.settled is None else context.settled
        self.mark = steps_until
        self.partition_times = partition_times
        self.bounds: dict[frozenset[str], float] = {}  # partition numbers -> steps_bound
        uids = list(dict.fromkeys(owner(v) for v in valid))
        self.states = {uid: merges.states.get(uid) or loaded[uid].state or UserState() for uid in uids}
        self.latest: dict[str, float] = {}  # user -> their latest event in the batch
        for v in valid:
            uid, epoch = owner(v), v.event.epoch
            self.latest[uid] = max(self.latest.get(uid, epoch), epoch)
        self.steps: dict[str, Steps] = {}
        self.unevaluated: dict[str, float] = {}  # user -> their latest applied, not yet evaluated event
        self.results: list[tuple[str, Applied]] = []
        self.applied: dict[int, str] = {}  # id() of the events applied now -> their owner
        self.broken: dict[str, str] = {}
        self.late: list[Valid] = []

    def step(self, item: Valid) -> None:
        """Event time: evaluate what is due before the event; then apply it."""
        uid = self.owner(item)
        if uid in self.broken:
            return
        epoch = item.event.epoch
        try:
            if self.event_time:
                self._before(uid, epoch, item.message.source)
        except Exception as exc:
            self.broken[uid] = f"evaluate: {exc!r}"
            log.exception("bug evaluating user %s", uid)
            return
        m = item.message
        state = self.states[uid]
        # an event already applied (redelivered after a rebalance, or written by an earlier attempt
        # of this batch whose other shards conflicted) is never late: it counts as redelivered
        if self.event_time and not redelivered(state, m.source, m.position) and too_late(state, epoch):
            self.late.append(item)
            return
        try:
            applied = self.apply(self.states[uid], item.event, m.source, m.position, self.context.catalogue.params)
        except Exception as exc:
            self.broken[uid] = f"apply: {exc!r}"
            log.exception("bug applying %s[%d]@%d", item.message.topic, item.message.partition, item.message.offset)
            return
        self.results.append((uid, applied))
        if applied is Applied.APPLIED:
            self.applied[id(item)] = uid
            self.unevaluated[uid] = max(self.unevaluated.get(uid, epoch), epoch)

    def steps_bound(self, state: UserState, source: str) -> float:
        """How far the user's change points are safe to evaluate: up to the lowest read time of
        the partitions their events can be on, those numbered like a partition they have events
        from (``state.offsets``, and ``source``, this event's) in every input topic (a key lands
        on the same partition number of topics with as many partitions). Not held back by other
        users' partitions: with the global mark, a batch of a partition ahead of the others
        skipped the change points its events overtook (a rule flip between an order and the next
        one, lost). Never below ``steps_until``; an event from a partition numbered otherwise
        (another partitioner) arriving later counts as a late event, as in live processing."""
        if self.partition_times is None:
            return self.mark
        numbers = frozenset(s.rpartition("/")[2] for s in (*state.offsets, source))
        bound = self.bounds.get(numbers)
        if bound is None:
            times = [t for key, t in self.partition_times.items() if key.rpartition("/")[2] in numbers]
            bound = self.bounds[numbers] = max(self.mark, min(times, default=self.mark))
        return bound

    def _before(self, uid: str, epoch: float, source: str) -> None:
        state, version = self.states[uid], self.loaded[uid].version
        user_steps = self.steps.get(uid) or self.steps.setdefault(uid, Steps(dict(state.published)))
        if uid in self.unevaluated:
            at = max(self.unevaluated.pop(uid), state.evaluated_at or 0.0)
            user_steps.add(plan_write(uid, version, state, at, self.context))
        # change points are safe to evaluate only where none of the user's partitions may still hold events
        catch_up(user_steps, uid, version, state, min(epoch, self.steps_bound(state, source)), self.context)

    def finish(self, uid: str, touched: bool) -> UserWrite | None:
        """The user's one write for the batch (None: a bug broke the user)."""
        user_steps = self.steps.get(uid) or Steps({})  # a single write carries its own audience diff
        try:
            if touched and (uid in self.unevaluated or not user_steps.writes):
                # Event time: at the user's own latest event (never going back), so a replay
                # evaluates users at the same moments live processing would.
                state = self.states[uid]
                at = max(self.latest[uid], state.evaluated_at or 0.0) if self.event_time else self.now
                user_steps.add(plan_write(uid, self.loaded[uid].version, state, min(at, self.now), self.context))
            write = user_steps.combined()
            write.encode()  # inside the isolation: a state that cannot be stored breaks only this user
            return write
        except Exception as exc:
            self.broken[uid] = f"evaluate: {exc!r}"
            log.exception("bug evaluating user %s", uid)
            return None


def plan_due(
    pending: list[str], loaded: Mapping[str, LoadedUser], due_at: Mapping[str, float], context: PlanContext, now: float
) -> tuple[list[UserWrite], list[str]]:
    """Time-driven path: (writes, users a bug kept from being evaluated) for the claimed users.

    Each user is evaluated at their due time (not the possibly much later ``now``), then at each
    further due point up to ``now`` (``catch_up``), written once, so a replay in event time passes
    through the same states, and fires the same rules, as live processing. A user erased since the
    claim is skipped; a user without state is deleted.
    """
    writes: list[UserWrite] = []
    failed: list[str] = []
    for uid in pending:
        user = loaded[uid]
        if user.erased:
            continue  # erased after it was claimed: nothing to evaluate or write
        if user.state is None:
            writes.append(UserWrite(uid, user.version, None))
            continue
        due, state = due_at[uid], user.state
        # never before the user's own latest evaluation: in event time a batch of a partition that
        # runs ahead of the watermark evaluates its users beyond it, and a user made due now (an RFM
        # re-score, a freshen) or written by such a batch since the claim is evaluated there, not
        # months back with their later events already applied (negative recency, rules on it)
        at = now if due <= 0 else min(now, max(due, state.evaluated_at or 0.0))
        at = max(at, state.evaluated_at or 0.0)
        # made due now (an RFM re-score, every profile to the clock) after the user's own due point
        # passed: that point first (a churn snapshot or a rule flip then), as live processing would
        own = state.due_at if due <= 0 and state.due_at is not None else None
        try:
            steps = Steps(dict(state.published))
            if own is not None and (state.evaluated_at or 0.0) < own < now:
                steps.add(plan_write(uid, user.version, state, own, context))
                if steps.writes[-1].state is not None:
                    catch_up(steps, uid, user.version, state, now, context)
            if not steps.writes or (steps.writes[-1].state is not None and (state.evaluated_at or 0.0) < at):
                steps.add(plan_write(uid, user.version, state, at, context))
            if steps.writes[-1].state is not None:
                # the user's further change points up to ``now`` in the same claim: one write
                catch_up(steps, uid, user.version, user.state, now, context)
            write = steps.combined()
            write.encode()
            writes.append(write)
        except Exception:
            failed.append(uid)
            log.exception("bug re-evaluating user %s", uid)
    return writes, failed


def split_touching(valid: list[Valid], users: set[str]) -> tuple[list[Valid], list[Valid]]:
    """(events that touch none of ``users``, events that do): as subject, user or anonymous id."""
    kept: list[Valid] = []
    touching: list[Valid] = []
    for v in valid:
        e = v.event
        ids = {e.subject_id, e.user_id, anon_subject(e.anonymous_id) if e.anonymous_id is not None else None}
        (touching if users & ids else kept).append(v)
    return kept, touching
