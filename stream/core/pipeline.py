"""One evaluation step of one user: their tags at a time, and the Redis writes that follow.

Pure: ``plan_write`` evaluates the tags (and model outputs), diffs the audiences, tracks rule
exposures and conversions and decides the rules' triggers; ``stream.core.batch`` calls it for every
step of a batch, the offline backtest and the bench call it directly.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from stream.contracts.topics import Topics

# Moved to stream.core.intake; importable from here as before.
from stream.core.intake import Message as Message
from stream.core.steps import next_needed
from stream.core.writes import Decided, UserWrite
from stream.models import Models, UserModelState
from stream.models.runtime import qualifying_ts
from stream.rules import Delivery, RuleSet, evaluate_rules, per_rule_set, tags_referenced
from stream.rules.effect import count_decisions, exposure_due, open_exposures, track_conversions
from stream.tagging.definitions import TagCatalogue
from stream.tagging.engine import (
    RfmThresholds,
    evaluate,
    is_expired,
    next_due,
    prune,
    rank_metrics,
    retention_end,
)
from stream.tagging.lifecycle import DEFAULT_RETENTION_DAYS, LIFETIME_TAGS
from stream.tagging.state import RuleBaseline, UserState

# Model outputs users are grouped by for the CRM (P:v1:aud:behaviour_segment:S3, ...:churn_band:high).
MODEL_AUDIENCE_TAGS = frozenset({"behaviour_segment", "churn_band"})


@dataclass(frozen=True, kw_only=True)
class PlanContext:
    """What a user's evaluation reads besides the user: definitions, population thresholds, clocks.

    ``settled`` (default: the evaluation time): the time up to which every input is known to have
    been read (the event-time watermark). Conversion windows stay open until it passes their end,
    so an order read late from a slower partition still converts the exposure it falls in.
    ``delivery``: what becomes of rule firings (sent, withheld as ``backfill``/``dry_run``, or
    none decided: ``stream.rules.Delivery``).
    """

    catalogue: TagCatalogue
    thresholds: RfmThresholds
    wall_now: float  # stamped on the profile as ``_updated_at``
    rules: RuleSet | None = None
    topics: Topics = field(default_factory=Topics)
    models: Models | None = None
    settled: float | None = None
    retention_days: int = DEFAULT_RETENTION_DAYS  # PORTRAIT_LIFECYCLE_RETENTION_DAYS
    delivery: Delivery = field(default_factory=Delivery)
    # "every" change point of a tag is evaluated (wall time: the CRM reads profiles), or only
    # those a decision needs ("needed": event-time backfills, see stream.core.steps)
    time_steps: Literal["every", "needed"] = "every"


def plan_write(uid: str, version: int, state: UserState, now: float, context: PlanContext) -> UserWrite:
    """Evaluate a user's tags at ``now`` and describe the resulting Redis writes.

    Mutates ``state`` (prunes old tiles, records the published profile for audience diffs and the
    values rules compare against, updates the delivery memory). Rule firings become triggers that
    the write puts in the outbox atomically with the state, so none is lost between deciding and
    sending.
    """
    catalogue, thresholds, wall_now = context.catalogue, context.thresholds, context.wall_now
    models, settled = context.models, context.settled
    previous = state.published
    audience_tags = catalogue.audience_tags
    retention = context.retention_days
    if is_expired(state, now, retention):
        return UserWrite(uid, version, None, audience_remove=list(previous.items()))
    prune(state, now, retention)
    wanted = catalogue.names
    profile = {k: v for k, v in evaluate(state, now, thresholds, catalogue.params).items() if k in wanted}
    learn: list[dict[str, Any]] = []
    if context.time_steps == "needed":
        due = next_needed(state, now, profile, context.rules, thresholds, catalogue.params, retention)
    else:
        due = next_due(state, now, catalogue.params, retention)
    if models is not None:
        if state.models is None:
            state.models = UserModelState()
        # a snapshot whose label window outlives the user's retention could never resolve
        resolvable = now + models.config.churn.horizon <= retention_end(state, retention)
        scored = models.score_step(state.models, profile, qualifying_ts(state, models.config), now, resolvable)
        profile.update(scored.tags)
        learn = scored.learn
        if scored.next_due is not None and now < scored.next_due < due:
            due = scored.next_due  # a churn label resolves or a snapshot is due then, event or not
        audience_tags = audience_tags | MODEL_AUDIENCE_TAGS
    add = [(t, v) for t, v in profile.items() if t in audience_tags and previous.get(t) != v]
    remove = [(t, v) for t, v in previous.items() if t in audience_tags and profile.get(t) != v]
    state.published = {t: v for t, v in profile.items() if t in audience_tags}
    state.evaluated_at = now
    counters: dict[str, int] = {}
    track_conversions(state, now if settled is None else min(settled, now), counters)
    triggers, decisions = _apply_rules(uid, version, state, profile, now, context, counters)
    ends = exposure_due(state, now)
    if ends is not None and ends < due:
        due = ends
    state.due_at = due
    profile["_evaluated_at"] = f"{now:.3f}"
    profile["_updated_at"] = f"{wall_now:.3f}"
    profile["_rfm_version"] = str(thresholds.version)
    profile["_tags_version"] = str(catalogue.version)
    if state.lifetime.since is not None:
        profile["_unavailable"] = ",".join(t for t in LIFETIME_TAGS if t in wanted)
    ttl = int(retention_end(state, retention) - now) + 2 * 86400
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


@per_rule_set
def _tracked_tags(rules: RuleSet) -> tuple[list[str], str]:
    """Tags whose previous values rules compare against, and a short hash of that set."""
    tracked = sorted(tags_referenced(rules))
    return tracked, hashlib.sha256("\x1f".join(tracked).encode()).hexdigest()[:8]


def _apply_rules(
    uid: str,
    version: int,
    state: UserState,
    profile: dict[str, str],
    now: float,
    context: PlanContext,
    counters: dict[str, int],
) -> tuple[list[tuple[str, str]], list[Decided]]:
    """(outbox entries (topic, trigger JSON), decisions) for this step."""
    rules, topics, delivery = context.rules, context.topics or Topics(), context.delivery
    if rules is None:
        return [], []
    tracked, tracked_hash = _tracked_tags(rules)
    # A brand-new user starts from nothing; an existing user without a baseline (rules just
    # deployed) only records one, so a deployment does not fire at everyone at once.
    baseline = state.rule_baseline
    previous = baseline.values if baseline is not None else ({} if version == 0 else None)
    if baseline is not None and baseline.tracked_hash is not None and baseline.tracked_hash != tracked_hash:
        # Rules changed to read tags not recorded before: their unknown previous values are taken
        # as unchanged, so a reload cannot make every user "enter" a value at once.
        previous = {**{t: profile[t] for t in tracked if t in profile and t not in baseline.values}, **baseline.values}
    # delivery off: nothing is decided, but the baseline follows the tags (no burst when back on)
    found = (
        [] if delivery.mode == "off" else evaluate_rules(rules, uid, previous, profile, now, state.delivery, delivery)
    )
    state.rule_baseline = RuleBaseline({t: profile[t] for t in tracked if t in profile}, tracked_hash)
    count_decisions(found, counters)
    open_exposures(state, found, now, rules, counters)
    outbox = [(topics.trigger(d.topic_suffix), d.trigger.model_dump_json()) for d in found if d.outcome == "send"]
    return outbox, [Decided(d.rule.id, d.outcome, d.reason or "", now) for d in found]
