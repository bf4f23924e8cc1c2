"""Which change points event-time backfills evaluate (stream.core.steps), by hand.

A user with one order at T0 (noon): ``days_since_last_order`` ticks at T0 + k days; the order's
tile leaves the 90-day window at midnight 90 days after its day (frequency_90d and the RFM rank
metrics change then); the profile is deleted at that same midnight (retention).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import orjson

from stream.contracts.events import parse_event
from stream.core.steps import next_flip, next_needed
from stream.rules import parse_rules
from stream.rules.conditions import Condition
from stream.rules.config import default_known_tags
from stream.tagging.definitions import load_catalogue
from stream.tagging.engine import RfmThresholds, apply_event, evaluate
from stream.tagging.state import UserState

DAY = 86400.0
T0 = datetime(2026, 3, 10, 12, tzinfo=UTC).timestamp()
DAY0 = datetime(2026, 3, 10, tzinfo=UTC).timestamp()
PARAMS = load_catalogue().params


def _rules(*conditions: dict) -> object:
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
    window_end = DAY0 + 90 * DAY  # the order's tile leaves the window: also retention (deletion)
    # no rule: the RFM rank metrics (90-day orders) change at the window end, nothing before
    assert _needed(state, T0, None) == window_end
    # a rule on days since the last order: day 14, then the window end
    lapsing = _rules({"tag": "days_since_last_order", "ge": 14})
    assert _needed(state, T0, lapsing) == T0 + 14 * DAY
    assert _needed(state, T0 + 14 * DAY, lapsing) == window_end
    # a 7-day funnel leaf flips when the order leaves the 7-day window (midnight after day 7)
    funnel = _rules({"tag": "funnel_stage_7d", "eq": "paid"})
    assert _needed(state, T0, funnel) == DAY0 + 7 * DAY


def test_model_outputs_are_not_probed_and_a_tag_of_unknown_timing_needs_every_change_point() -> None:
    state = _buyer()
    assert _needed(state, T0, _rules({"tag": "churn_band", "enters": "high"})) == DAY0 + 90 * DAY
    # a tag the engine does not classify (a new one) may change at any time: the next daily tick
    rule = {"id": "r", "version": 1, "when": {"tag": "lifecycle_x", "eq": "a"}, "action": {"type": "care_sms"}}
    rule["action"]["params"] = {"template": "t"}  # type: ignore[index]
    unknown = parse_rules({"version": 1, "rules": [rule]}, Path("t.yaml"), default_known_tags() | {"lifecycle_x"})
    assert _needed(state, T0, unknown) == T0 + DAY
