"""Which of a user's change points must be evaluated: the fast path of event-time backfills.

A user's tags change without an event at known points (``next_due``: window edges, the daily ticks
of ``recency_days``/``days_since_last_order``, cart and NPS timers, retention). In wall-clock time
every one is evaluated (the CRM reads the profile). In an event-time replay nobody reads a profile
between two change points; what must happen exactly where live processing puts it is every
*decision*: rule firings, churn snapshots and labels (the models' own times), exposures closing,
the RFM population (rank metrics: lifetime sums, so they change with events only, never at a
change point), deletion. ``next_needed`` is the earliest change point at which
one of those can differ from the evaluation just made; the change points before it are skipped,
and every profile is brought to the clock when the input stops (``Processor.freshen``).

Why skipping is exact for rules over tags: a condition fires on a step only if some leaf's
``leaf_truth`` differs between the previous and the current profile (``stream.rules.conditions``),
and the previous profile matters only through those truths. So when no leaf's truth changes at a
change point, evaluating it fires nothing and leaves every later decision as it was. Leaves on day
counters flip at a day found from their operands; leaves on other tags of ``TICK_FREE_TAGS`` can
only flip at ``change_points``, probed in order. A leaf on a tag of neither kind makes
every change point needed (exact, not fast).

The one approximation: leaves on model outputs (``churn_band``, ``churn_risk``,
``behaviour_segment``) are not probed, so such rules see the model's score at the needed points
only (in the per-day path it is re-scored daily); model scores also depend on which checkpoint a
worker holds, which is not deterministic in a replay either.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from stream.models import MODEL_TAGS
from stream.rules import RuleSet, per_rule_set
from stream.rules.conditions import Condition, as_number, leaf_truth, leaves_of
from stream.tagging.definitions import TagParams
from stream.tagging.engine import (
    DAY_COUNTERS,
    RFM_SEGMENTS,
    TICK_FREE_TAGS,
    RfmThresholds,
    change_points,
    evaluate,
    next_due,
    retention_end,
    rfm_segment,
)
from stream.tagging.lifecycle import DEFAULT_RETENTION_DAYS
from stream.tagging.state import DAY, UserState


@dataclass(frozen=True)
class _Leaves:
    counters: tuple[Condition, ...]  # leaves on day counters
    others: tuple[Condition, ...]  # leaves on tick-free tags
    other_tags: frozenset[str]  # their tags: only the change points that can move one are probed
    every: bool  # a leaf reads a tag that may change at any time: every change point is needed


@per_rule_set
def _leaves(rules: RuleSet | None) -> _Leaves:
    counters: list[Condition] = []
    others: list[Condition] = []
    every = False
    for rule in rules.active if rules is not None else ():
        for leaf in leaves_of(rule.when):
            tag = leaf.tag or ""
            if tag in DAY_COUNTERS:
                counters.append(leaf)
            elif tag in TICK_FREE_TAGS:
                others.append(leaf)
            elif tag not in MODEL_TAGS:
                every = True
    return _Leaves(tuple(counters), tuple(others), frozenset(leaf.tag or "" for leaf in others), every)


def next_flip(leaf: Condition, anchor: float, now: float) -> float:
    """When a leaf on a day counter counting from ``anchor`` next changes truth after ``now``
    (the counter is ``floor((t - anchor) / DAY)``; ``inf``: never)."""
    operand = leaf.operand(leaf.operator or "")
    values = operand if isinstance(operand, tuple) else (operand,)
    numbers = [as_number(str(v)) for v in values]
    today = math.floor((now - anchor) / DAY)
    if any(n is None for n in numbers):  # compared as text: any day may flip it
        return anchor + (today + 1) * DAY
    days = sorted({int(f(n)) + d for n in numbers if n is not None for f in (math.floor, math.ceil) for d in (0, 1)})
    for day in days:
        if day > today and leaf_truth(leaf, str(day)) != leaf_truth(leaf, str(day - 1)):
            return anchor + day * DAY
    return math.inf


def next_needed(
    state: UserState,
    now: float,
    profile: dict[str, str],
    rules: RuleSet | None,
    thresholds: RfmThresholds,
    params: TagParams,
    retention_days: int = DEFAULT_RETENTION_DAYS,
) -> float:
    """The earliest change point after ``now`` that a rule needs evaluated (or deletion, at the
    latest; the RFM population changes only with events, see ``rank_metrics``); ``profile`` is
    the user's tags at ``now``. The caller adds the models' and the exposures' own times."""
    leaves = _leaves(rules)
    if leaves.every:
        return next_due(state, now, params, retention_days)
    bound = retention_end(state, retention_days)
    for leaf in leaves.counters:
        anchor = getattr(state, DAY_COUNTERS[leaf.tag or ""])
        if anchor is not None:
            bound = min(bound, next_flip(leaf, anchor, now))
    if not leaves.others:
        return bound
    values = {tag: profile.get(tag) for tag in leaves.other_tags}
    truths: dict[int, bool] = {}  # leaf index -> its truth at ``now`` (only those ever compared)
    points = change_points(state, params, retention_days, leaves.other_tags)
    for at in sorted({t for t in points if now < t < bound}):
        tags = evaluate(state, at, thresholds, params)
        for i, leaf in enumerate(leaves.others):
            tag = leaf.tag or ""
            value = tags.get(tag)
            if value == values[tag]:
                continue  # a leaf's truth is a function of its tag's value
            if i not in truths:
                truths[i] = leaf_truth(leaf, values[tag])
            if leaf_truth(leaf, value) != truths[i]:
                return at
    return bound


# the RFM tags, by the rank metric (stream.storage.store.RANK_METRICS) whose score they show
_SCORE_TAGS = {"r_score": "r", "f_score": "f", "m_score": "m"}
_SCORES = range(1, 6)


def _segment_cuts() -> dict[str, frozenset[int]]:
    """Per rank metric, the cut points (0-based: cut k separates score k + 1 from k + 2) at
    which moving one score can change ``rfm_segment`` (read off ``RFM_SEGMENTS``: R 1 and 2
    share every segment, so R's first cut never changes it; the M score is not part of it)."""
    assert {s for _, r, f in RFM_SEGMENTS for s in (*r, *f)} <= set(_SCORES)
    r_cuts = {k for k in range(4) if any(rfm_segment(k + 1, f) != rfm_segment(k + 2, f) for f in _SCORES)}
    f_cuts = {k for k in range(4) if any(rfm_segment(r, k + 1) != rfm_segment(r, k + 2) for r in _SCORES)}
    return {"r": frozenset(r_cuts), "f": frozenset(f_cuts), "m": frozenset()}


@dataclass(frozen=True)
class Rescore:
    """What an RFM refresh re-scores at once in an event-time replay of needed steps
    (``Store.refresh_rfm``). ``cuts``: per rank metric, the cut points whose move matters.
    ``segments``: when the rules read the RFM scores only through set tests of ``rfm_segment``
    (eq, ne, in, enters, leaves), the segments those tests name; of the users a moved cut
    re-scores, only those whose segment moves into or out of one of them can change a rule's
    truth (None: every re-scored user). The others are seen at their next evaluation."""

    cuts: Mapping[str, frozenset[int]]
    segments: frozenset[str] | None


_SET_TESTS = frozenset({"eq", "ne", "in", "enters", "leaves"})  # a leaf's truth: membership in named values


@per_rule_set
def rescored_cuts(rules: RuleSet | None) -> Rescore:
    """Event time, needed steps: the RFM cut points whose move must re-evaluate the users it
    re-scores, because a rule reads a tag the new score can change, and the segments that matter
    (``Rescore``); the rest is seen at the users' next evaluation (as every profile is brought to
    the clock when the input stops). No model reads an RFM tag."""
    every = frozenset(range(4))
    cuts: dict[str, set[int]] = {"r": set(), "f": set(), "m": set()}
    segment = _segment_cuts()
    named: set[str] | None = set()
    for rule in rules.active if rules is not None else ():
        for leaf in leaves_of(rule.when):
            tag = leaf.tag or ""
            if tag in _SCORE_TAGS:
                cuts[_SCORE_TAGS[tag]] |= every
                named = None  # a score read directly: every re-scored user may change a truth
            elif tag == "rfm_segment":
                for metric, ks in segment.items():
                    cuts[metric] |= ks
                if named is not None and leaf.operator in _SET_TESTS:
                    operand = leaf.operand(leaf.operator)
                    named |= {operand} if isinstance(operand, str) else set(operand)
                else:
                    named = None
    return Rescore({metric: frozenset(ks) for metric, ks in cuts.items()}, None if named is None else frozenset(named))
