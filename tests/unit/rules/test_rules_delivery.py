"""Rule evaluation and delivery: edge triggering, suppression in time zones, ids, holdout, memory,
effect tracking. Times are written as UTC datetimes; local times in comments are derived
by hand from the zone's offset on that date."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from stream.contracts.triggers import trigger_json_schema
from stream.rules import (
    DeliveryMemory,
    Exposure,
    RuleSet,
    effects,
    evaluate_rules,
    holdout,
    load_rules,
    parse_rules,
    trigger_id,
)
from stream.rules.config import QuietHours
from stream.rules.counters import EffectCounter, RuleCounter, parse
from stream.rules.effect import exposure_due, open_exposures, track_conversions
from stream.rules.evaluate import Decision
from stream.tagging.state import UserState

ROOT = Path(__file__).resolve().parents[3]
DAY = 86400
KNOWN = {"recency_days", "value_tier", "rfm_segment", "timezone", "complaints_90d", "nps_class", "cart_abandoned"}
LAPSING = {"tag": "recency_days", "ge": 14}
SMS = {"type": "care_sms", "params": {"template": "t"}}
OFF = {"value_tier": "vip", "recency_days": "13"}
ON = {"value_tier": "vip", "recency_days": "14"}


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp()


def ruleset(*rules: dict[str, Any], **settings: Any) -> RuleSet:
    """Rules with defaults: id r<i>, version 1, condition LAPSING, action SMS."""
    full = [{"id": f"r{i}", "version": 1, "when": LAPSING, "action": SMS, **r} for i, r in enumerate(rules)]
    return parse_rules({"version": 1, "settings": settings, "rules": full}, Path("test.yaml"), KNOWN)


def step(
    rules: RuleSet, now: float, tz: str = "UTC", memory: DeliveryMemory | None = None, user: str = "u1"
) -> list[Decision]:
    """One false → true step of the default condition for ``user`` in zone ``tz``."""
    memory = DeliveryMemory() if memory is None else memory
    return evaluate_rules(rules, user, {**OFF, "timezone": tz}, {**ON, "timezone": tz}, now, memory)


def outcome(decisions: list[Decision]) -> str:
    assert len(decisions) == 1
    return decisions[0].reason or decisions[0].outcome


# --- firing --------------------------------------------------------------------------------------


def test_fires_on_time_driven_step_with_explanation() -> None:
    rules = ruleset({"when": {"all": [LAPSING, {"tag": "value_tier", "in": ["high", "vip"]}]}})
    now = utc(2026, 3, 1, 12)
    [decision] = evaluate_rules(rules, "u1", OFF, ON, now, DeliveryMemory())
    assert decision.outcome == "send" and decision.reason is None and decision.group == "treated"
    trigger = decision.trigger.model_dump()
    assert trigger["rule_id"] == "r0" and trigger["rule_version"] == 1 and trigger["user_id"] == "u1"
    assert trigger["action"] == {"type": "care_sms", "params": {"template": "t"}}
    assert trigger["channel"] == "sms" and trigger["event_time"] == now
    assert trigger["explanation"]["values"] == {
        "recency_days": {"previous": "13", "current": "14"},
        "value_tier": {"previous": "vip", "current": "vip"},
    }
    assert trigger["explanation"]["fired_by"] == ["recency_days ge '14'"]
    assert decision.topic_suffix == "triggers.care_sms"


def test_edge_triggered_no_refire_while_true_then_refire() -> None:
    rules = ruleset({})
    memory = DeliveryMemory()
    t0 = utc(2026, 3, 1, 12)
    assert outcome(evaluate_rules(rules, "u1", OFF, ON, t0, memory)) == "send"
    still = {**ON, "recency_days": "15"}
    assert evaluate_rules(rules, "u1", ON, still, t0 + DAY, memory) == []  # stays true
    back = {**ON, "recency_days": "0"}
    assert evaluate_rules(rules, "u1", still, back, t0 + 2 * DAY, memory) == []  # becomes false
    assert outcome(evaluate_rules(rules, "u1", back, ON, t0 + 3 * DAY, memory)) == "send"  # true again


def test_unknown_previous_only_sets_the_baseline() -> None:
    assert evaluate_rules(ruleset({}), "u1", None, ON, utc(2026, 3, 1), DeliveryMemory()) == []


def test_disabled_rule_never_fires() -> None:
    assert step(ruleset({"enabled": False}), utc(2026, 3, 1, 12)) == []


# --- cooldown ------------------------------------------------------------------------------------


def test_cooldown_per_user_and_rule() -> None:
    rules = ruleset({"cooldown": "7d"})
    memory = DeliveryMemory()
    t0 = utc(2026, 3, 1, 12)
    assert outcome(step(rules, t0, memory=memory)) == "send"
    assert outcome(step(rules, t0 + 2 * DAY, memory=memory)) == "cooldown"
    assert outcome(step(rules, t0 + 2 * DAY, memory=DeliveryMemory(), user="u2")) == "send"  # other user
    # the suppressed firing did not restart the cooldown: 7 days after the send it is over
    assert outcome(step(rules, t0 + 7 * DAY - 1, memory=memory)) == "cooldown"
    assert outcome(step(rules, t0 + 7 * DAY, memory=memory)) == "send"


# --- quiet hours ---------------------------------------------------------------------------------

QUIET = {"start": "22:00", "end": "08:00"}


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (utc(2026, 3, 1, 13, 59), "send"),  # 21:59 in Shanghai (UTC+8)
        (utc(2026, 3, 1, 14, 0), "quiet_hours"),  # 22:00
        (utc(2026, 3, 1, 14, 30), "quiet_hours"),  # 22:30
        (utc(2026, 3, 1, 16, 30), "quiet_hours"),  # 00:30 next day: the window wraps midnight
        (utc(2026, 3, 1, 23, 59), "quiet_hours"),  # 07:59
        (utc(2026, 3, 2, 0, 0), "send"),  # 08:00: end is exclusive
    ],
)
def test_quiet_hours_shanghai(now: float, expected: str) -> None:
    assert outcome(step(ruleset({}, quiet_hours=QUIET), now, "Asia/Shanghai")) == expected


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (utc(2026, 3, 7, 12, 30), "quiet_hours"),  # EST (UTC-5): 07:30
        (utc(2026, 3, 9, 12, 30), "send"),  # DST began 8 March: EDT (UTC-4): 08:30
        (utc(2026, 3, 8, 2, 30), "send"),  # 7 March 21:30 EST
        (utc(2026, 3, 8, 3, 0), "quiet_hours"),  # 7 March 22:00 EST
        (utc(2026, 3, 9, 1, 30), "send"),  # 8 March 21:30 EDT
        (utc(2026, 3, 9, 2, 0), "quiet_hours"),  # 8 March 22:00 EDT
        (utc(2026, 10, 31, 12, 30), "send"),  # EDT: 08:30
        (utc(2026, 11, 2, 12, 30), "quiet_hours"),  # DST ended 1 November: EST 07:30
    ],
)
def test_quiet_hours_new_york_across_dst(now: float, expected: str) -> None:
    assert outcome(step(ruleset({}, quiet_hours=QUIET), now, "America/New_York")) == expected


def test_rule_quiet_hours_override_and_off() -> None:
    own = ruleset({"quiet_hours": {"start": "12:00", "end": "14:00"}}, quiet_hours=QUIET)
    assert outcome(step(own, utc(2026, 3, 1, 11, 59))) == "send"
    assert outcome(step(own, utc(2026, 3, 1, 12, 0))) == "quiet_hours"
    assert outcome(step(own, utc(2026, 3, 1, 13, 59))) == "quiet_hours"
    assert outcome(step(own, utc(2026, 3, 1, 14, 0))) == "send"
    assert outcome(step(own, utc(2026, 3, 1, 23, 0))) == "send"  # the global window does not apply
    off = ruleset({"quiet_hours": "off"}, quiet_hours=QUIET)
    assert outcome(step(off, utc(2026, 3, 1, 23, 0))) == "send"
    assert outcome(step(ruleset({}, quiet_hours=QUIET), utc(2026, 3, 1, 23, 0))) == "quiet_hours"


def test_quiet_hours_contains() -> None:
    wrap = QuietHours(start="22:00", end="08:00")
    assert [wrap.contains(m) for m in (0, 479, 480, 1319, 1320, 1439)] == [True, True, False, False, True, True]
    day = QuietHours(start="08:30", end="09:00")
    assert [day.contains(m) for m in (509, 510, 539, 540)] == [False, True, True, False]


# --- daily cap -----------------------------------------------------------------------------------


def test_cap_counts_the_users_local_day_shanghai() -> None:
    rules = ruleset({}, channel_caps={"sms": 1})
    memory = DeliveryMemory()
    assert outcome(step(rules, utc(2026, 3, 1, 15, 0), "Asia/Shanghai", memory)) == "send"  # 1 Mar 23:00 local
    assert outcome(step(rules, utc(2026, 3, 1, 15, 50), "Asia/Shanghai", memory)) == "cap"  # 1 Mar 23:50 local
    # still 1 March in UTC, but 2 March 00:10 for the user: a new day
    assert outcome(step(rules, utc(2026, 3, 1, 16, 10), "Asia/Shanghai", memory)) == "send"
    assert memory.sent == {"2026-03-01": {"sms": 1}, "2026-03-02": {"sms": 1}}


def test_cap_local_day_follows_dst_new_york() -> None:
    rules = ruleset({}, daily_cap=1)
    memory = DeliveryMemory()
    assert outcome(step(rules, utc(2026, 3, 9, 3, 30), "America/New_York", memory)) == "send"  # 8 Mar 23:30 EDT
    # 04:10 UTC is 9 March 00:10 EDT (with the pre-DST offset it would still be 8 March)
    assert outcome(step(rules, utc(2026, 3, 9, 4, 10), "America/New_York", memory)) == "send"
    assert outcome(step(rules, utc(2026, 3, 9, 4, 20), "America/New_York", memory)) == "cap"


def test_cap_is_per_channel_and_rules_use_it_in_file_order() -> None:
    coupon = {"type": "coupon", "params": {"campaign": "c", "value": 5}}
    rules = ruleset({}, {}, {"action": coupon}, daily_cap=1)
    decisions = step(rules, utc(2026, 3, 1, 12))
    assert [(d.rule.id, d.reason or d.outcome) for d in decisions] == [("r0", "send"), ("r1", "cap"), ("r2", "send")]


def test_no_cap_configured_means_unlimited() -> None:
    memory = DeliveryMemory()
    rules = ruleset({})
    assert [outcome(step(rules, utc(2026, 3, 1, 12, m), memory=memory)) for m in range(5)] == ["send"] * 5


# --- ids -----------------------------------------------------------------------------------------


def test_trigger_ids_are_deterministic_per_window() -> None:
    rules = ruleset({})  # no cooldown: window = 1 day
    start = 20000 * DAY  # a day boundary
    first = step(rules, start + 10)[0].trigger.trigger_id
    assert uuid.UUID(first).version == 5
    assert step(rules, start + 10)[0].trigger.trigger_id == first  # replay with a fresh memory
    assert step(rules, start + DAY - 1)[0].trigger.trigger_id == first  # same day window
    assert step(rules, start + DAY)[0].trigger.trigger_id != first  # next window
    assert step(rules, start + 10, user="u2")[0].trigger.trigger_id != first
    assert trigger_id("r0", 1, "u1", 20000) == first
    assert trigger_id("r0", 2, "u1", 20000) != first
    assert trigger_id("r1", 1, "u1", 20000) != first


def test_trigger_window_is_the_cooldown() -> None:
    rules = ruleset({"cooldown": "3d"})
    start = 7000 * 3 * DAY
    first = step(rules, start)[0].trigger.trigger_id
    assert first == trigger_id("r0", 1, "u1", 7000)
    assert step(rules, start + 3 * DAY - 1)[0].trigger.trigger_id == first
    assert step(rules, start + 3 * DAY)[0].trigger.trigger_id == trigger_id("r0", 1, "u1", 7001)


# --- holdout -------------------------------------------------------------------------------------

USERS = [f"u{i:05d}" for i in range(10_000)]


def test_holdout_share_and_stability() -> None:
    control = [u for u in USERS if holdout(u, "winback", 0.1)]
    assert 900 <= len(control) <= 1100  # 1000 expected, sd 30
    assert control == [u for u in USERS if holdout(u, "winback", 0.1)]
    assert not any(holdout(u, "winback", 0.0) for u in USERS)
    # a larger share keeps the smaller share's control users (same hash point)
    assert set(control) <= {u for u in USERS if holdout(u, "winback", 0.2)}
    # rules are assigned independently: overlap of two 50% holdouts ~ 25%
    a = {u for u in USERS if holdout(u, "rule_a", 0.5)}
    b = {u for u in USERS if holdout(u, "rule_b", 0.5)}
    assert 4800 <= len(a) <= 5200 and 2300 <= len(a & b) <= 2700


def test_held_out_firing_is_recorded_and_counts_for_cooldown() -> None:
    rules = ruleset({"holdout": 0.5, "cooldown": "7d"}, daily_cap=1)
    control = next(u for u in USERS if holdout(u, "r0", 0.5))
    treated = next(u for u in USERS if not holdout(u, "r0", 0.5))
    t0 = utc(2026, 3, 1, 12)
    memory = DeliveryMemory()
    [held] = step(rules, t0, memory=memory, user=control)
    assert (held.outcome, held.reason, held.group) == ("suppressed", "holdout", "control")
    assert memory.sent == {} and memory.last_fired == {"r0": t0}
    assert memory.recent[-1].reason == "holdout"
    assert outcome(step(rules, t0 + DAY, memory=memory, user=control)) == "cooldown"
    assert outcome(step(rules, t0, user=treated)) == "send"


# --- memory --------------------------------------------------------------------------------------


def test_memory_round_trips_through_json_and_is_bounded() -> None:
    rules = ruleset({"cooldown": "1h"}, daily_cap=30)
    memory = DeliveryMemory()
    t0 = utc(2026, 3, 1, 0)
    for i in range(25):
        step(rules, t0 + i * 600, memory=memory)  # r0 every 10 min: 1 send then cooldown until t0+3600
    assert len(memory.recent) == 20
    assert memory.recent[0].at == t0 + 5 * 600  # the 6th step is the oldest kept
    restored = DeliveryMemory.from_doc(json.loads(json.dumps(memory.to_doc())))
    assert restored == memory
    assert DeliveryMemory.from_doc(None) == DeliveryMemory() and DeliveryMemory().to_doc() == {}


def test_memory_prunes_old_days_and_expired_cooldowns() -> None:
    rules = ruleset({"cooldown": "1d"})
    memory = DeliveryMemory()
    t0 = utc(2026, 3, 1, 12)
    for day in range(3):
        step(rules, t0 + day * DAY, memory=memory)
    assert memory.sent == {"2026-03-02": {"sms": 1}, "2026-03-03": {"sms": 1}}  # today and yesterday
    assert memory.last_fired == {"r0": t0 + 2 * DAY}
    evaluate_rules(rules, "u1", ON, ON, t0 + 3 * DAY - 1, memory)  # nothing fires; cooldown still running
    assert memory.last_fired == {"r0": t0 + 2 * DAY}
    evaluate_rules(rules, "u1", ON, ON, t0 + 3 * DAY, memory)  # the cooldown is over
    assert memory.last_fired == {}
    assert memory.sent == {"2026-03-03": {"sms": 1}}  # 4 March now: yesterday is 3 March
    step(rules, t0 + 4 * DAY, memory=memory)
    evaluate_rules(ruleset({"id": "other", "cooldown": "1d"}), "u1", ON, ON, t0 + 4 * DAY + 1, memory)
    assert memory.last_fired == {}  # r0 is no longer in the rule set


# --- effect tracking (stream.rules.effect: the one definition of exposure and conversion) ---------


def _exposed(*users_groups: tuple[str, str], at: float, window: float) -> dict[str, UserState]:
    return {u: UserState(exposures=[Exposure("winback", g, at, at + window)]) for u, g in users_groups}


def _order(state: UserState, t: float, settled: float, counters: dict[str, int]) -> None:
    state.last_order = max(t, state.last_order or t)
    track_conversions(state, settled, counters)


def test_conversion_window_is_half_open_and_rates_are_over_closed_exposures() -> None:
    t0 = utc(2026, 3, 1)
    week = 7 * DAY
    groups = (("a", "treated"), ("b", "treated"), ("c", "treated"), ("d", "control"), ("e", "control"))
    states = _exposed(*groups, at=t0, window=week)
    counters: dict[str, int] = {"effect:winback:treated:exposed": 3, "effect:winback:control:exposed": 2}
    _order(states["a"], t0, t0, counters)  # at the firing time: inside [t0, t0 + 7d)
    _order(states["a"], t0 + 2 * DAY, t0 + 2 * DAY, counters)  # converts once
    _order(states["b"], t0 + week, t0 + week, counters)  # at the end: outside, and the window closes
    _order(states["d"], t0 + week - 1, t0 + week - 1, counters)
    _order(states["e"], t0 - 1, t0, counters)  # before the exposure
    assert counters["effect:winback:treated:converted"] == 1 and counters["effect:winback:control:converted"] == 1
    assert counters["effect:winback:treated:expired"] == 1  # b
    assert states["e"].exposures and states["c"].exposures  # still open
    track_conversions(states["e"], t0 + week - 1, counters)
    assert states["e"].exposures, "open until the settled time reaches the end"
    for user in "ce":
        track_conversions(states[user], t0 + week, counters)
    assert not any(s.exposures for s in states.values())
    report = effects(counters)["winback"].to_dict()
    assert report["treated"] == {"exposures": 3, "conversions": 1, "open": 0, "rate": 1 / 3}
    assert report["control"] == {"exposures": 2, "conversions": 1, "open": 0, "rate": 1 / 2}
    assert report["uplift"] == pytest.approx(1 / 3 - 1 / 2)
    assert report["relative_uplift"] == pytest.approx((1 / 3 - 1 / 2) / (1 / 2))


def test_an_order_already_seen_converts_nothing_new() -> None:
    t0 = utc(2026, 3, 1)
    state = UserState(last_order=t0, order_seen=t0, exposures=[Exposure("winback", "treated", t0, t0 + DAY)])
    counters: dict[str, int] = {}
    track_conversions(state, t0, counters)  # the order the rule fired on does not convert its own firing
    assert counters == {} and len(state.exposures) == 1
    assert exposure_due(state, t0) == t0 + DAY
    # still open at its end (not settled up to it yet): due at once, so the time path closes it
    assert exposure_due(state, t0 + 2 * DAY) == t0 + DAY
    track_conversions(state, t0 + DAY, counters)
    assert exposure_due(state, t0 + DAY) is None and counters


def test_exposures_use_groups_and_conversion_window() -> None:
    rules = ruleset({"holdout": 0.5, "conversion_window": "3d"}, {}, daily_cap=1)
    control = next(u for u in USERS if holdout(u, "r0", 0.5))
    t0 = utc(2026, 3, 1, 12)
    state, counters = UserState(), {}  # type: ignore[var-annotated]
    open_exposures(state, step(rules, t0, user=control), t0, rules, counters)  # r0 held out, r1 sent
    assert [(e.rule, e.group, e.until) for e in state.exposures] == [
        ("r0", "control", t0 + 3 * DAY),
        ("r1", "treated", t0 + 7 * DAY),
    ]
    assert counters == {"effect:r0:control:exposed": 1, "effect:r1:treated:exposed": 1}
    rules_capped = ruleset({}, {}, daily_cap=1)
    capped = UserState()
    open_exposures(capped, step(rules_capped, t0), t0, rules_capped, counters)
    assert len(capped.exposures) == 1  # r1 capped: not exposed


def test_counter_keys_round_trip() -> None:
    for counter in (
        RuleCounter("r0", "send"),
        RuleCounter("r0", "quiet_hours"),
        EffectCounter("r0", "control", "expired"),
    ):
        assert parse(counter.encode()) == counter
    assert parse("events_applied") is None and parse("rule:r0:bogus") is None and parse("effect:r0:x:exposed") is None


# --- shipped rules and schema --------------------------------------------------------------------


def test_shipped_rules_scenarios() -> None:
    rules = load_rules(ROOT / "deploy/rules.yaml")
    noon = utc(2026, 3, 1, 12)
    user = next(u for u in USERS if not holdout(u, "winback_at_risk", 0.1))
    before = {"rfm_segment": "Loyal", "value_tier": "vip", "complaints_90d": "0", "timezone": "UTC"}
    after = {**before, "rfm_segment": "At Risk", "complaints_90d": "1", "nps_class": "detractor"}
    decisions = evaluate_rules(rules, user, before, after, noon, DeliveryMemory())
    assert [(d.rule.id, d.outcome) for d in decisions] == [
        ("winback_at_risk", "send"),
        ("care_after_complaint", "send"),
    ]
    winback, care = decisions
    assert winback.topic_suffix == "triggers.coupon" and winback.trigger.channel == "email"
    assert care.trigger.explanation.fired_by == ["complaints_90d crosses_above 0.0", "nps_class enters ['detractor']"]
    # 22:30 in Shanghai: the shipped quiet hours drop the cart coupon
    late = evaluate_rules(
        rules,
        user,
        {"cart_abandoned": "false", "timezone": "Asia/Shanghai"},
        {"cart_abandoned": "true", "timezone": "Asia/Shanghai"},
        utc(2026, 3, 1, 14, 30),
        DeliveryMemory(),
    )
    assert [(d.rule.id, d.reason) for d in late] == [("cart_abandoned_coupon", "quiet_hours")]


def test_trigger_schema_document_is_current() -> None:
    published = json.loads((ROOT / "docs/schemas/trigger.schema.json").read_text())
    assert published == trigger_json_schema()
    assert set(published["required"]) == {
        "trigger_id",
        "rule_id",
        "rule_version",
        "user_id",
        "action",
        "channel",
        "event_time",
        "explanation",
    }
