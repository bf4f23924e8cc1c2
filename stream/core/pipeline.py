"""Pure batch logic: classify raw messages, fold events into states, plan the Redis writes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from stream.contracts.deadletter import DeadLetter, Reason
from stream.contracts.events import Event, parse_event
from stream.contracts.topics import Topics
from stream.core.writes import UserWrite
from stream.models import Models
from stream.models.runtime import UserModelState, qualifying_ts
from stream.rules import ORDER_TAGS, DeliveryMemory, RuleSet, evaluate_rules, tags_referenced
from stream.tagging.definitions import TagCatalogue
from stream.tagging.engine import (
    LONGEST_WINDOW_DAYS,
    RfmThresholds,
    UnknownCurrency,
    check_event,
    day_of,
    evaluate,
    is_expired,
    next_due,
    prune,
    rank_metrics,
    retention_end,
)
from stream.tagging.state import POSITIONS_PER_OFFSET, UserState

# Model outputs users are grouped by for the CRM (P:v1:aud:behaviour_segment:S3, ...:churn_band:high).
MODEL_AUDIENCE_TAGS = frozenset({"behaviour_segment", "churn_band"})


# A batch envelope (one Kafka message carrying many events, as web collectors send) holds at most
# this many events; an event's position in its partition is offset * ENVELOPE_MAX + index.
ENVELOPE_MAX = POSITIONS_PER_OFFSET


@dataclass(frozen=True)
class Message:
    """A consumed Kafka message (or one event of a batch envelope), reduced to what the pipeline needs."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    index: int | None = None  # the event's place in its batch envelope (None: a single-event message)

    @property
    def source(self) -> str:
        return f"{self.topic}/{self.partition}"

    @property
    def position(self) -> int:
        """Where the event stands in its partition: what per-user applied offsets record, so the
        events of one envelope are applied (and recognised when redelivered) one by one."""
        return self.offset * ENVELOPE_MAX + (self.index or 0)


def unpack(message: Message, processor_version: str) -> list[Message] | DeadLetter:
    """The events of a message: itself, or one message per event of a batch envelope
    (``{"batch": [event, ...]}`` or a JSON array of events)."""
    value = message.value
    head = value[:64].lstrip()[:1]
    if head != b"[" and not (head == b"{" and b'"batch"' in value[:64]):
        return [message]
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return [message]  # classify reports the invalid JSON
    if isinstance(doc, dict) and ("type" in doc or "batch" not in doc):
        return [message]  # an event (one may well carry a field called "batch")
    items = doc["batch"] if isinstance(doc, dict) else doc
    if not isinstance(items, list) or len(items) > ENVELOPE_MAX:
        return DeadLetter.build(
            "schema_violation",
            f"batch envelope must be a list of at most {ENVELOPE_MAX} events",
            value,
            message.key,
            message.topic,
            message.partition,
            message.offset,
            processor_version,
        )
    return [
        Message(message.topic, message.partition, message.offset, message.key, orjson.dumps(item), index)
        for index, item in enumerate(items)
    ]


@dataclass(frozen=True)
class Valid:
    message: Message
    event: Event


def _schema_reason(exc: ValidationError) -> Reason:
    kinds = {e["type"] for e in exc.errors()}
    if "json_invalid" in kinds or "json_type" in kinds:
        return "invalid_json"
    if "union_tag_invalid" in kinds:
        return "unknown_type"
    return "schema_violation"


def _summary(exc: ValidationError) -> str:
    """Readable one-liner per error, e.g. ``ts: Input should have timezone info``."""
    parts = []
    for error in exc.errors(include_url=False):
        # drop the union member wrappers pydantic puts in the location
        loc = ".".join(str(p) for p in error["loc"] if "[" not in str(p) and "(" not in str(p))
        parts.append(f"{loc or '(event)'}: {error['msg']}")
    return "; ".join(parts)


def classify(
    message: Message,
    catalogue: TagCatalogue,
    wall_now: float,
    clock_now: float,
    max_future_skew_s: float,
    processor_version: str,
) -> Valid | DeadLetter:
    """Validate one message; anything unusable becomes a ``DeadLetter`` with its reason."""

    def dead(reason: Reason, error: str) -> DeadLetter:
        return DeadLetter.build(
            reason,
            f"[batch item {message.index}] {error}" if message.index is not None else error,
            message.value,
            message.key,
            message.topic,
            message.partition,
            message.offset,
            processor_version,
        )

    try:
        event = parse_event(message.value)
    except ValidationError as exc:
        return dead(_schema_reason(exc), _summary(exc))
    ts = event.epoch
    if ts > wall_now + max_future_skew_s:
        return dead("future_timestamp", f"ts {event.ts.isoformat()} is more than {max_future_skew_s:.0f}s ahead")
    if day_of(ts) < day_of(clock_now) - LONGEST_WINDOW_DAYS + 1:
        return dead("too_old", f"ts {event.ts.isoformat()} is older than the {LONGEST_WINDOW_DAYS}-day window")
    try:
        check_event(event, catalogue.params)
    except UnknownCurrency as exc:
        return dead("unknown_currency", str(exc))
    return Valid(message, event)


def plan_write(
    uid: str,
    version: int,
    state: UserState,
    now: float,
    thresholds: RfmThresholds,
    catalogue: TagCatalogue,
    wall_now: float,
    rules: RuleSet | None = None,
    topics: Topics | None = None,
    models: Models | None = None,
    settled: float | None = None,
) -> UserWrite:
    """Evaluate a user's tags at ``now`` and describe the resulting Redis writes.

    ``settled`` (default ``now``): the time up to which every input is known to have been read
    (the event-time watermark). Conversion windows stay open until it passes their end, so an
    order read late from a slower partition still converts the exposure it falls in.

    Mutates ``state`` (prunes old tiles, records the published profile for audience diffs and the
    values rules compare against, updates the delivery memory). Rule firings become triggers that
    the write puts in the outbox atomically with the state, so none is lost between deciding and
    sending.
    """
    previous = state.published
    audience_tags = catalogue.audience_tags
    if is_expired(state, now):
        return UserWrite(uid, version, None, audience_remove=list(previous.items()))
    prune(state, now)
    wanted = catalogue.names
    profile = {k: v for k, v in evaluate(state, now, thresholds, catalogue.params).items() if k in wanted}
    learn: list[dict[str, Any]] = []
    due = next_due(state, now, catalogue.params)
    if models is not None:
        user = UserModelState.from_json(state.models)
        scored = models.score_step(user, profile, qualifying_ts(state, models.config), now)
        state.models = user.to_json()
        profile.update(scored.tags)
        learn = scored.learn
        if scored.pending_deadline is not None and now < scored.pending_deadline < due:
            due = scored.pending_deadline  # the churn label resolves then, event or not
        audience_tags = audience_tags | MODEL_AUDIENCE_TAGS
    add = [(t, v) for t, v in profile.items() if t in audience_tags and previous.get(t) != v]
    remove = [(t, v) for t, v in previous.items() if t in audience_tags and profile.get(t) != v]
    state.published = {t: v for t, v in profile.items() if t in audience_tags}
    state.evaluated_at = now
    counters = _track_conversions(state, now if settled is None else min(settled, now))
    triggers, decisions = _apply_rules(uid, version, state, profile, now, rules, topics or Topics(), counters)
    ends = exposure_due(state, now)
    if ends is not None and ends < due:
        due = ends
    state.due_at = due
    profile["_evaluated_at"] = f"{now:.3f}"
    profile["_updated_at"] = f"{wall_now:.3f}"
    profile["_rfm_version"] = str(thresholds.version)
    ttl = int(retention_end(state) - now) + 2 * 86400
    return UserWrite(
        uid,
        version,
        state,
        profile=profile,
        audience_add=add,
        audience_remove=remove,
        due=due,
        ttl_s=ttl,
        ranks=rank_metrics(state, now),
        triggers=triggers,
        decisions=decisions,
        learn=[orjson.dumps(item).decode() for item in learn],
        counters=counters,
    )


_TRACKED: dict[int, tuple[RuleSet, list[str], str]] = {}


def _tracked_tags(rules: RuleSet) -> tuple[list[str], str]:
    """Tags whose previous values rules compare against, and a short hash of that set (cached per
    rule set: it is immutable)."""
    cached = _TRACKED.get(id(rules))
    if cached is None or cached[0] is not rules:
        tracked = sorted(tags_referenced(rules) | set(ORDER_TAGS))
        digest = hashlib.sha256("\x1f".join(tracked).encode()).hexdigest()[:8]
        cached = _TRACKED[id(rules)] = (rules, tracked, digest)
    return cached[1], cached[2]


def effect_key(rule: str, group: str, what: str) -> str:
    """Stats field of the uplift counters, e.g. ``effect:winback:treated:converted``."""
    return f"effect:{rule}:{group}:{what}"


def _track_conversions(state: UserState, settled: float) -> dict[str, int]:
    """Convert open exposures on an order inside their window; drop those that ended before
    ``settled`` (no order can still arrive for them).

    Evaluations happen at every exposure's end (see ``exposure_due``), so an order is always
    checked before the window it falls in is closed.
    """
    counters: dict[str, int] = {}
    order = state.last_order
    if order is not None and (state.order_seen is None or order > state.order_seen):
        kept = []
        for rule, group, at, until in state.exposures:
            if at <= order <= until:
                key = effect_key(rule, group, "converted")
                counters[key] = counters.get(key, 0) + 1
            else:
                kept.append([rule, group, at, until])
        state.exposures = kept
        state.order_seen = order
    state.exposures = [e for e in state.exposures if e[3] >= settled]
    return counters


def exposure_due(state: UserState, now: float) -> float | None:
    ends = [e[3] for e in state.exposures if e[3] > now]
    return min(ends) if ends else None


def _apply_rules(
    uid: str,
    version: int,
    state: UserState,
    profile: dict[str, str],
    now: float,
    rules: RuleSet | None,
    topics: Topics,
    counters: dict[str, int],
) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    """(outbox entries (topic, trigger JSON), decisions (rule, outcome, reason)) for this step."""
    if rules is None:
        return [], []
    tracked, tracked_hash = _tracked_tags(rules)
    # A brand-new user starts from nothing; an existing user without a baseline (rules just
    # deployed) only records one, so a deployment does not fire at everyone at once.
    previous = state.rules_prev if state.rules_prev is not None else ({} if version == 0 else None)
    if previous is not None and state.rules_hash is not None and state.rules_hash != tracked_hash:
        # Rules changed to read tags not recorded before: their unknown previous values are taken
        # as unchanged, so a reload cannot make every user "enter" a value at once.
        previous = {**{t: profile[t] for t in tracked if t in profile and t not in previous}, **previous}
    state.rules_hash = tracked_hash
    memory = DeliveryMemory.from_dict(state.delivery)
    found = evaluate_rules(rules, uid, previous, profile, now, memory)
    state.rules_prev = {t: profile[t] for t in tracked if t in profile}
    state.delivery = memory.to_dict()
    for d in found:
        fired = f"rule:{d.rule.id}:{d.outcome if d.reason is None else d.reason}"
        counters[fired] = counters.get(fired, 0) + 1
        if d.group is not None:  # sent (treated) or held out (control): an exposure to measure
            state.exposures.append([d.rule.id, d.group, now, now + rules.conversion_window_for(d.rule)])
            key = effect_key(d.rule.id, d.group, "exposed")
            counters[key] = counters.get(key, 0) + 1
    outbox = [(topics.trigger(d.topic_suffix), d.trigger.model_dump_json()) for d in found if d.outcome == "send"]
    return outbox, [(d.rule.id, d.outcome, d.reason or "") for d in found]
