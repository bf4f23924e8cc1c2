"""Which change points event-time backfills evaluate (stream.core.steps), by hand.

A user with one order at T0 (noon): ``days_since_last_order`` ticks at T0 + k days; the order's
tile leaves the 7-day window at midnight 7 days after its day (funnel_stage_7d changes then) and
the 90-day one 90 days after (frequency_90d); the RFM rank metrics are lifetime figures, which only
events move; the profile is deleted 400 days after the order's day (the lifecycle retention).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import orjson

from stream.contracts.events import parse_event
from stream.core.steps import next_flip, next_needed
from stream.rules import RuleSet, parse_rules
from stream.rules.conditions import Condition
from stream.rules.config import default_known_tags
from stream.tagging.definitions import load_catalogue
from stream.tagging.engine import RfmThresholds, apply_event, evaluate
from stream.tagging.state import UserState

DAY = 86400.0
T0 = datetime(2026, 3, 10, 12, tzinfo=UTC).timestamp()
DAY0 = datetime(2026, 3, 10, tzinfo=UTC).timestamp()
PARAMS = load_catalogue().params


def _rules(*conditions: dict) -> RuleSet:
    rules = [
        {"id": f"r{i}", "version": 1, "when": c, "action": {"type": "care_sms", "params": {"template": "t"}}}
        for i, c in enumerate(conditions)
    ]
    return parse_rules({"version": 1, "rules": rules}, Path("t.yaml"), default_known_tags())


def _buyer() -> UserState:
    state = UserState()
    raw = {"event_id": "o1", "type": "order_paid", "user_id": "u", "ts": datetime.fromtimestamp(T0, UTC).isoformat()}
    raw |= {"order_id": "o1", "amount": 50.0, "currency": "USD"}
    apply_event(state, parse_event(orjson.dumps(raw)), "t/0", 0, PARAMS)
    return state


def _needed(state: UserState, now: float, rules: object) -> float:
    profile = evaluate(state, now, RfmThresholds(), PARAMS)
    return next_needed(state, now, profile, rules, RfmThresholds(), PARAMS)  # type: ignore[arg-type]


def test_a_day_counter_leaf_flips_on_the_day_its_operand_is_reached() -> None:
    ge = Condition.model_validate({"tag": "recency_days", "ge": 14})
    assert next_flip(ge, T0, T0 + 2 * DAY) == T0 + 14 * DAY
    assert next_flip(ge, T0, T0 + 14 * DAY) == math.inf  # true from then on
    eq = Condition.model_validate({"tag": "recency_days", "in": [3, 5]})
    assert next_flip(eq, T0, T0) == T0 + 3 * DAY
    assert next_flip(eq, T0, T0 + 3 * DAY) == T0 + 4 * DAY  # 4 is not in the set
    above = Condition.model_validate({"tag": "recency_days", "crosses_above": 6.5})
    assert next_flip(above, T0, T0) == T0 + 7 * DAY


def test_only_the_points_a_rule_or_the_rfm_population_needs() -> None:
    state = _buyer()
    deletion = DAY0 + 400 * DAY
    # no rule: nothing is needed before the deletion
    assert _needed(state, T0, None) == deletion
    # a rule on days since the last order: day 14, then nothing until the deletion
    lapsing = _rules({"tag": "days_since_last_order", "ge": 14})
    assert _needed(state, T0, lapsing) == T0 + 14 * DAY
    assert _needed(state, T0 + 14 * DAY, lapsing) == deletion
    # a rule on the 90-day order count: the order's tile leaves that window
    assert _needed(state, T0, _rules({"tag": "frequency_90d", "ge": 1})) == DAY0 + 90 * DAY
    # a 7-day funnel leaf flips when the order leaves the 7-day window (midnight after day 7)
    funnel = _rules({"tag": "funnel_stage_7d", "eq": "paid"})
    assert _needed(state, T0, funnel) == DAY0 + 7 * DAY


def test_model_outputs_are_not_probed_and_a_tag_of_unclassified_timing_needs_every_change_point() -> None:
    state = _buyer()
    assert _needed(state, T0, _rules({"tag": "churn_band", "enters": "high"})) == DAY0 + 400 * DAY
    # a tag the engine does not classify (a new one) may change at any time: the next daily tick
    assert _needed(state, T0, _rules({"tag": "lifecycle_stage", "eq": "lapsed"})) == T0 + DAY


def test_only_the_rfm_cut_points_a_rule_can_see_re_score_users() -> None:
    from stream.core.steps import rescored_cuts

    # by hand from the RFM segment table: R scores 1 and 2 share every segment (Hibernating,
    # At Risk, Can't Lose), every other R or F step changes some segment; M is not part of it
    segment = _rules({"tag": "rfm_segment", "enters": "Champions"})
    assert rescored_cuts(segment).cuts == {"r": {1, 2, 3}, "f": {0, 1, 2, 3}, "m": set()}
    m_score = _rules({"tag": "m_score", "ge": 4}, {"tag": "frequency_90d", "ge": 1})
    assert rescored_cuts(m_score).cuts == {"r": set(), "f": set(), "m": {0, 1, 2, 3}}
    assert rescored_cuts(None).cuts == {"r": set(), "f": set(), "m": set()}


def test_re_scored_users_are_narrowed_to_the_segments_the_rules_test() -> None:
    from stream.core.steps import rescored_cuts

    # set tests name their segments; ne names the one whose membership flips its truth
    rules = _rules({"tag": "rfm_segment", "enters": ["At Risk", "Can't Lose"]}, {"tag": "rfm_segment", "ne": "Lost"})
    assert rescored_cuts(rules).segments == frozenset({"At Risk", "Can't Lose", "Lost"})
    assert rescored_cuts(_rules({"tag": "rfm_segment", "in": ["Champions"]})).segments == frozenset({"Champions"})
    # a score read directly, or an ordering test, can change with any re-scored user
    assert rescored_cuts(_rules({"tag": "rfm_segment", "eq": "Lost"}, {"tag": "r_score", "ge": 4})).segments is None
    assert rescored_cuts(_rules({"tag": "rfm_segment", "gt": "B"})).segments is None
    assert rescored_cuts(None).segments == frozenset()
