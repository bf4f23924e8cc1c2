"""Evaluate a rule set for one user step (previous → current profile) and decide delivery.

Per firing rule, checks run in this order and the first that applies is the reason:
``cooldown`` (per user and rule) → ``quiet_hours`` (user's local time) → ``cap`` (sends per user,
channel and local day) → ``holdout`` (control group). Outcomes:
* ``send``: publish the trigger; counts for the cooldown and the cap;
* ``suppressed``/``holdout``: not published; counts for the cooldown (so control mirrors treated);
* ``suppressed``/``cooldown|quiet_hours|cap``: dropped and recorded; nothing is deferred. Because
  rules are edge-triggered, such a firing is not retried: it fires again only when its condition
  becomes false and then true again.

Then the delivery setting (``Delivery``) may withhold a firing the checks let through (``send`` or
``holdout``): ``backfill`` when its event time is older than the horizon behind the wall clock (a
replay of history must not message customers about the past), ``dry_run`` when nothing is sent.
A withheld firing is recorded with that reason and otherwise remembered as the live decision
(cooldown, daily cap), so the firings after a backfill are exactly those of a live run; it opens no
exposure (no message reached anyone, and control must mirror treated).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from stream.rules.conditions import Predicate, Profile, compiled, describe, fired_by, tags_of
from stream.rules.config import Rule, RuleSet, per_rule_set
from stream.rules.trigger import (
    Explanation,
    Trigger,
    TriggerAction,
    ValueChange,
    firing_window,
    holdout,
    trigger_id,
)
from stream.tagging.memory import DeliveryMemory, DeliveryRecord

Outcome = Literal["send", "suppressed"]
Reason = Literal["cooldown", "quiet_hours", "cap", "holdout", "backfill", "dry_run"]
# the suppression checks of the rules (a backtest's columns); WITHHELD: the delivery setting's
REASONS: tuple[Reason, ...] = ("cooldown", "quiet_hours", "cap", "holdout")
WITHHELD: tuple[Reason, ...] = ("backfill", "dry_run")
DeliveryMode = Literal["live", "dry-run", "off"]


@dataclass(frozen=True)
class Delivery:
    """What becomes of a firing once decided (``PORTRAIT_DELIVERY``, ``PORTRAIT_DELIVERY_HORIZON_S``).

    ``live``: sent, unless its event time is before ``send_from`` (the wall clock minus the
    horizon): then withheld as ``backfill``. ``dry-run``: every firing is decided and recorded as
    ``dry_run``, none is sent. ``off``: rules fire nothing (they keep their memory of tag values, so
    turning delivery back on fires on new changes only).
    """

    mode: DeliveryMode = "live"
    send_from: float = -math.inf

    @classmethod
    def at(cls, mode: DeliveryMode, wall_now: float, horizon_s: float) -> Delivery:
        """The policy at wall time ``wall_now`` (``horizon_s`` 0: no horizon)."""
        return cls(mode, wall_now - horizon_s if horizon_s > 0 else -math.inf)

    def withheld(self, event_time: float) -> Reason | None:
        """Why a firing at ``event_time`` that would be sent (or held out) is withheld, if it is."""
        if self.mode == "dry-run":
            return "dry_run"
        return "backfill" if event_time < self.send_from else None


@dataclass(frozen=True)
class Decision:
    """A rule that fired for a user: the trigger, and whether it is sent or why it is suppressed."""

    rule: Rule
    trigger: Trigger
    outcome: Outcome
    reason: Reason | None = None

    @property
    def topic_suffix(self) -> str:
        """Where a ``send`` is published (prefix it with the topic prefix), e.g. ``triggers.coupon``."""
        return self.rule.action.topic_suffix

    @property
    def group(self) -> Literal["treated", "control"] | None:
        """Experiment group for effect tracking: sent → treated, held out → control, else None
        (withheld by the delivery setting included)."""
        if self.outcome == "send":
            return "treated"
        return "control" if self.reason == "holdout" else None


@lru_cache(maxsize=512)
def user_zone(name: str) -> ZoneInfo:
    """The user's zone; UTC when the name is not a valid IANA zone."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def local_time(now: float, profile: Profile) -> datetime:
    """``now`` in the zone named by the profile's ``timezone`` tag (UTC when absent)."""
    return datetime.fromtimestamp(now, user_zone(profile.get("timezone", "UTC")))


def _explain(rule: Rule, previous: Profile, current: Profile) -> Explanation:
    values = {t: ValueChange(previous=previous.get(t), current=current.get(t)) for t in sorted(tags_of(rule.when))}
    return Explanation(condition=describe(rule.when), fired_by=fired_by(rule.when, previous, current), values=values)


def build_trigger(rule: Rule, user_id: str, previous: Profile, current: Profile, now: float) -> Trigger:
    """The payload for ``rule`` firing for ``user_id`` at ``now``."""
    window = firing_window(now, rule.firing_window)
    return Trigger(
        trigger_id=trigger_id(rule.id, rule.version, user_id, window),
        rule_id=rule.id,
        rule_version=rule.version,
        user_id=user_id,
        action=TriggerAction(type=rule.action.type, params=dict(rule.action.params)),
        channel=rule.channel,
        event_time=now,
        explanation=_explain(rule, previous, current),
    )


LIVE = Delivery()


def suppression(
    rules: RuleSet, rule: Rule, user_id: str, local: datetime, now: float, memory: DeliveryMemory
) -> Reason | None:
    """The first suppression reason that applies (see module doc for the order), or None to send."""
    last = memory.last_fired.get(rule.id)
    if rule.cooldown is not None and last is not None and now - last < rule.cooldown:
        return "cooldown"
    quiet = rules.quiet_hours_for(rule)
    if quiet is not None and quiet.contains(local.hour * 60 + local.minute):
        return "quiet_hours"
    cap = rules.settings.cap_for(rule.channel)
    if cap is not None and memory.sent_on(local.date().isoformat(), rule.channel) >= cap:
        return "cap"
    if holdout(user_id, rule.id, rule.holdout):
        return "holdout"
    return None


def _remember(
    rule: Rule,
    trigger: Trigger,
    reason: Reason | None,
    local_date: str,
    memory: DeliveryMemory,
    withheld: Reason | None,
) -> None:
    """Cooldown and cap follow the live decision ``reason``; the record shows why nothing was sent."""
    if reason in (None, "holdout") and rule.cooldown is not None:
        memory.last_fired[rule.id] = trigger.event_time
    if reason is None:
        memory.count_send(local_date, rule.channel)
    reason = withheld or reason
    memory.record(
        DeliveryRecord(
            at=trigger.event_time,
            rule_id=rule.id,
            rule_version=rule.version,
            trigger_id=trigger.trigger_id,
            channel=rule.channel,
            outcome="send" if reason is None else "suppressed",
            reason=reason,
        )
    )


def evaluate_rules(
    rules: RuleSet,
    user_id: str,
    previous: Mapping[str, str] | None,
    current: Mapping[str, str],
    now: float,
    memory: DeliveryMemory,
    delivery: Delivery | None = None,
) -> list[Decision]:
    """Decisions for every enabled rule whose condition fires from ``previous`` to ``current``.

    ``now`` is the evaluation clock (event or wall time) for both event-driven and time-driven
    re-evaluations. ``previous`` is the user's previous values of ``tags_referenced(rules)``: ``{}``
    for a brand-new user; ``None`` when unknown (e.g. first evaluation after rules were deployed),
    which only establishes the baseline and fires nothing. ``memory`` is updated and pruned.
    ``delivery`` (default: live, no horizon) may withhold what would be sent (module doc).
    """
    delivery = delivery or LIVE
    local = local_time(now, current)
    local_date = local.date().isoformat()
    decisions: list[Decision] = []
    if previous is not None:
        for rule, tags, holds in _conditions(rules):
            # a condition reads only its tags: with none of them changed it holds for previous ->
            # current exactly as for previous -> previous, so the edge cannot fire (most steps)
            if all(current.get(t) == previous.get(t) for t in tags):
                continue
            # edge trigger (``fires``): holds for previous -> current, not for previous -> previous
            if not holds(previous, current) or holds(previous, previous):
                continue
            trigger = build_trigger(rule, user_id, previous, current, now)
            reason = suppression(rules, rule, user_id, local, now, memory)
            withheld = delivery.withheld(now) if reason in (None, "holdout") else None
            _remember(rule, trigger, reason, local_date, memory, withheld)
            shown = withheld or reason
            decisions.append(Decision(rule, trigger, "send" if shown is None else "suppressed", shown))
    memory.prune(now, local_date, _cooldowns(rules))
    return decisions


@per_rule_set
def _conditions(rules: RuleSet) -> tuple[tuple[Rule, tuple[str, ...], Predicate], ...]:
    """Every active rule with the tags its condition reads and the compiled condition."""
    return tuple((rule, tuple(sorted(tags_of(rule.when))), compiled(rule.when)) for rule in rules.active)


@per_rule_set
def _cooldowns(rules: RuleSet) -> dict[str, float]:
    """Rule id -> cooldown of the active rules that have one."""
    return {r.id: r.cooldown for r in rules.active if r.cooldown is not None}
