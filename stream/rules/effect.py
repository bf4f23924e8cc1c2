"""Effect tracking: exposures (sent = treated, held out = control) and conversions per rule.

A conversion is an order at a time ``t`` with ``exposure.at <= t < exposure.at + window`` (the rule's
conversion window). Every open exposure of the user converts at most once; one order converts the
open exposures of every rule (no exclusive attribution). Rates are over *closed* exposures
(converted, or expired without an order) so open windows do not bias them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from stream.rules.conditions import as_number
from stream.rules.config import RuleSet
from stream.rules.evaluate import Decision

Group = Literal["treated", "control"]
ORDER_TAGS: tuple[str, ...] = ("frequency_30d", "frequency_90d", "days_since_last_order")
"""Tags ``detect_order`` compares: the worker must keep their previous values for effect tracking."""


def detect_order(previous: Mapping[str, str], current: Mapping[str, str], now: float) -> float | None:
    """``now`` when the profile step shows a new order, else None.

    A new order shows as ``frequency_30d``/``frequency_90d`` increasing or ``days_since_last_order``
    dropping (or appearing). The order happened between the two evaluations; ``now`` is the upper
    bound. Prefer ``EffectTracker.order`` with the ``order_paid`` event time when it is known.
    """
    for tag in ("frequency_30d", "frequency_90d"):
        count_before, count_after = as_number(previous.get(tag)) or 0.0, as_number(current.get(tag))
        if count_after is not None and count_after > count_before:
            return now
    before, after = as_number(previous.get("days_since_last_order")), as_number(current.get("days_since_last_order"))
    if after is not None and (before is None or after < before):
        return now
    return None


@dataclass(frozen=True)
class Exposure:
    rule_id: str
    user_id: str
    group: Group
    at: float
    until: float


@dataclass
class GroupStats:
    exposures: int = 0
    conversions: int = 0
    expired: int = 0

    @property
    def open(self) -> int:
        return self.exposures - self.conversions - self.expired

    @property
    def rate(self) -> float | None:
        """Conversions over closed exposures (None when none closed yet)."""
        closed = self.conversions + self.expired
        return self.conversions / closed if closed else None


@dataclass
class RuleEffect:
    treated: GroupStats = field(default_factory=GroupStats)
    control: GroupStats = field(default_factory=GroupStats)

    def group(self, name: Group) -> GroupStats:
        return self.treated if name == "treated" else self.control

    @property
    def uplift(self) -> float | None:
        """Absolute uplift: treated rate - control rate (None without both rates)."""
        t, c = self.treated.rate, self.control.rate
        return None if t is None or c is None else t - c

    @property
    def relative_uplift(self) -> float | None:
        """Uplift over the control rate (None when the control rate is 0 or unknown)."""
        c, u = self.control.rate, self.uplift
        return None if u is None or not c else u / c


@dataclass
class EffectTracker:
    """Open exposures per user and closed counts per rule and group."""

    pending: dict[str, list[Exposure]] = field(default_factory=dict)
    effects: dict[str, RuleEffect] = field(default_factory=dict)

    def expose(self, rule_id: str, user_id: str, group: Group, at: float, window_s: float) -> Exposure:
        """Record an exposure whose conversion window is ``[at, at + window_s)``."""
        exposure = Exposure(rule_id, user_id, group, at, at + window_s)
        self.pending.setdefault(user_id, []).append(exposure)
        self.effects.setdefault(rule_id, RuleEffect()).group(group).exposures += 1
        return exposure

    def order(self, user_id: str, order_time: float) -> list[Exposure]:
        """Convert the user's open exposures whose window contains ``order_time``; returns them."""
        keep: list[Exposure] = []
        converted: list[Exposure] = []
        for exposure in self.pending.get(user_id, []):
            (converted if exposure.at <= order_time < exposure.until else keep).append(exposure)
        for exposure in converted:
            self.effects[exposure.rule_id].group(exposure.group).conversions += 1
        self._set_pending(user_id, keep)
        return converted

    def expire(self, now: float) -> int:
        """Close exposures whose window ended (``until <= now``) without an order; returns how many."""
        closed = 0
        for user_id in list(self.pending):
            keep = []
            for exposure in self.pending[user_id]:
                if exposure.until <= now:
                    self.effects[exposure.rule_id].group(exposure.group).expired += 1
                    closed += 1
                else:
                    keep.append(exposure)
            self._set_pending(user_id, keep)
        return closed

    def _set_pending(self, user_id: str, exposures: list[Exposure]) -> None:
        if exposures:
            self.pending[user_id] = exposures
        else:
            self.pending.pop(user_id, None)

    def report(self) -> dict[str, dict[str, object]]:
        """Per rule: exposures/conversions/open/rate per group, uplift and relative uplift."""
        out: dict[str, dict[str, object]] = {}
        for rule_id, effect in sorted(self.effects.items()):
            groups = {
                name: {"exposures": g.exposures, "conversions": g.conversions, "open": g.open, "rate": g.rate}
                for name, g in (("treated", effect.treated), ("control", effect.control))
            }
            out[rule_id] = {**groups, "uplift": effect.uplift, "relative_uplift": effect.relative_uplift}
        return out


def expose_decisions(tracker: EffectTracker, rules: RuleSet, decisions: list[Decision]) -> list[Exposure]:
    """Record sent (treated) and held-out (control) decisions with each rule's conversion window."""
    exposures = []
    for d in decisions:
        if d.group is not None:
            window = rules.conversion_window_for(d.rule)
            exposures.append(tracker.expose(d.rule.id, d.trigger.user_id, d.group, d.trigger.event_time, window))
    return exposures
