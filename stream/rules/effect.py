"""Effect tracking: exposures (sent = treated, held out = control) and their conversions, per rule.

The one definition, used by the worker (``stream.core.pipeline.plan_write`` calls these
functions on every evaluation), and therefore by the offline backtest, which runs the worker's
code, and read back by ``portrait rules report`` from the counters:

* A firing whose decision has a group (``send`` → treated, ``holdout`` → control) opens an
  ``Exposure`` at the evaluation time ``at``, with window ``[at, until)``, ``until = at +`` the
  rule's conversion window.
* An order at time ``t`` converts every open exposure of the user with ``at <= t < until``, each
  at most once; one order converts the open exposures of every rule (no exclusive attribution).
  Only orders applied after the firing count: the order a rule fired on does not convert it.
* An exposure whose window ended without such an order (``until <= settled``, the time up to
  which every input has been read) closes as expired.

Counters (``stream.rules.counters``): ``exposed``, ``converted`` and ``expired`` per rule and group;
rates are over *closed* exposures (converted or expired), so open windows do not bias them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from stream.rules.config import RuleSet
from stream.rules.counters import EffectCounter, Group, RuleCounter, count, parsed
from stream.rules.evaluate import Decision
from stream.tagging.state import Exposure, UserState

__all__ = [
    "Exposure",
    "GroupStats",
    "RuleEffect",
    "converts",
    "count_decisions",
    "effects",
    "exposure_due",
    "open_exposures",
    "track_conversions",
]


def converts(exposure: Exposure, order_time: float) -> bool:
    """Whether an order at ``order_time`` (applied after the firing) converts ``exposure``."""
    return exposure.at <= order_time < exposure.until


def track_conversions(state: UserState, settled: float, counters: dict[str, int]) -> None:
    """Convert the open exposures a new order falls in; close those whose window ended before
    ``settled`` (no order inside it can still arrive). Counts into ``counters``.

    Evaluations happen at every exposure's end (see ``exposure_due``), so an order is always
    checked before the window it falls in is closed.
    """
    order = state.last_order
    if order is not None and (state.order_seen is None or order > state.order_seen):
        kept = []
        for exposure in state.exposures:
            if converts(exposure, order):
                count(counters, EffectCounter(exposure.rule, _group(exposure), "converted"))
            else:
                kept.append(exposure)
        state.exposures = kept
        state.order_seen = order
    kept = []
    for exposure in state.exposures:
        if exposure.until <= settled:
            count(counters, EffectCounter(exposure.rule, _group(exposure), "expired"))
        else:
            kept.append(exposure)
    state.exposures = kept


def open_exposures(
    state: UserState, decisions: list[Decision], now: float, rules: RuleSet, counters: dict[str, int]
) -> None:
    """Record this step's sent (treated) and held-out (control) firings as exposures at ``now``."""
    for d in decisions:
        if d.group is not None:
            state.exposures.append(Exposure(d.rule.id, d.group, now, now + rules.conversion_window_for(d.rule)))
            count(counters, EffectCounter(d.rule.id, d.group, "exposed"))


def count_decisions(decisions: list[Decision], counters: dict[str, int]) -> None:
    """One ``rule:<id>:<send|reason>`` count per firing."""
    for d in decisions:
        count(counters, RuleCounter(d.rule.id, d.reason or "send"))


def exposure_due(state: UserState, now: float) -> float | None:
    """When the user must be evaluated for their open exposures: the earliest end. An end at or
    before ``now`` belongs to an exposure that could not close yet (its window was not settled:
    an order inside it may still wait on a slower partition); it is due at once, and the
    time-driven path closes it when its watermark has passed the end."""
    ends = [e.until for e in state.exposures]
    return min(ends) if ends else None


def _group(exposure: Exposure) -> Group:
    return "control" if exposure.group == "control" else "treated"


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

    def to_dict(self) -> dict[str, object]:
        return {"exposures": self.exposures, "conversions": self.conversions, "open": self.open, "rate": self.rate}


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

    def to_dict(self) -> dict[str, object]:
        return {
            "treated": self.treated.to_dict(),
            "control": self.control.to_dict(),
            "uplift": self.uplift,
            "relative_uplift": self.relative_uplift,
        }


def effects(stats: Mapping[str, int]) -> dict[str, RuleEffect]:
    """Per rule (sorted by id), its effect from the ``effect:`` counters of ``P:v2:*:stats``."""
    out: dict[str, RuleEffect] = {}
    for counter, n in parsed(stats):
        if isinstance(counter, EffectCounter):
            g = out.setdefault(counter.rule, RuleEffect()).group(counter.group)
            if counter.what == "exposed":
                g.exposures += n
            elif counter.what == "converted":
                g.conversions += n
            else:
                g.expired += n
    return dict(sorted(out.items()))
