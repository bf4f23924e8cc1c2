"""Unit tests of the pure engine: idempotency, time-driven correctness, state round trip."""

import dataclasses
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from stream.contracts.events import Event, parse_event
from stream.core.pipeline import PlanContext, plan_write
from stream.rules import RuleSet, parse_rules
from stream.tagging.definitions import load_catalogue
from stream.tagging.engine import Applied, RfmThresholds, apply_event, evaluate, next_due, rfm_segment, score
from stream.tagging.state import UserState

CATALOGUE = load_catalogue()
PARAMS = CATALOGUE.params
T0 = datetime(2026, 10, 1, tzinfo=UTC)
THRESHOLDS = RfmThresholds(1, (1.0, 2.0, 3.0, 4.0), (1, 2, 3, 4), (1000, 2000, 3000, 4000))
CONTEXT = PlanContext(catalogue=CATALOGUE, thresholds=THRESHOLDS, wall_now=0.0)


def ev(n: int, kind: str, at: datetime, **extra: object) -> Event:
    body = {"event_id": f"e{n}", "type": kind, "user_id": "u1", "ts": at.isoformat(), **extra}
    return parse_event(orjson.dumps(body))


def random_events(rng: random.Random, count: int) -> list[Event]:
    kinds = ["page_view", "search", "add_to_cart", "order_paid", "order_refunded", "feedback", "identify"]
    out = []
    for n in range(count):
        at = T0 + timedelta(seconds=rng.randrange(0, 40 * 86400))
        kind = rng.choice(kinds)
        extra: dict[str, object] = {}
        if kind == "page_view":
            extra = {"category": rng.choice(["a", "b", "c"])}
        elif kind == "search":
            extra = {"query": "q", "category": rng.choice(["a", "b"])}
        elif kind == "add_to_cart":
            extra = {"product_id": "p", "category": "c", "price": 3}
        elif kind == "order_paid":
            extra = {
                "order_id": f"o{n}",
                "amount": rng.choice([9.99, 120, 35.5]),
                "currency": rng.choice(["USD", "EUR"]),
                "items": [{"product_id": "p", "category": "b", "price": 1}],
            }
        elif kind == "order_refunded":
            extra = {"order_id": "o1", "amount": 5}
        elif kind == "feedback":
            extra = {"rating": rng.randint(1, 5), "nps": rng.randint(0, 10), "complaint": rng.random() < 0.2}
        else:
            extra = {"traits": {"timezone": rng.choice(["Asia/Kolkata", "America/New_York"]), "region": "eu"}}
        out.append(ev(n, kind, at, **extra))
    return out


def fold(events: list[Event]) -> UserState:
    state = UserState()
    for offset, event in enumerate(events):
        apply_event(state, event, "t/0", offset, PARAMS)
    return state


def test_redelivered_offsets_and_duplicate_ids_are_skipped() -> None:
    state = UserState()
    a = ev(1, "page_view", T0)
    assert apply_event(state, a, "t/0", 5, PARAMS) is Applied.APPLIED
    assert apply_event(state, a, "t/0", 5, PARAMS) is Applied.REDELIVERED
    assert apply_event(state, ev(2, "page_view", T0), "t/0", 3, PARAMS) is Applied.REDELIVERED
    # the same event re-sent by a producer gets a new offset: caught by its id
    assert apply_event(state, a, "t/0", 9, PARAMS) is Applied.DUPLICATE
    # another partition has its own offsets
    assert apply_event(state, ev(3, "page_view", T0), "t/1", 0, PARAMS) is Applied.APPLIED
    assert evaluate(state, T0.timestamp(), THRESHOLDS, PARAMS)["events_7d"] == "2"


def test_state_is_independent_of_arrival_order() -> None:
    rng = random.Random(3)
    events = random_events(rng, 120)
    now = (T0 + timedelta(days=41)).timestamp()
    expected = evaluate(fold(events), now, THRESHOLDS, PARAMS)
    for _ in range(5):
        shuffled = events[:]
        rng.shuffle(shuffled)
        got = evaluate(fold(shuffled), now, THRESHOLDS, PARAMS)
        assert got == expected


def test_state_round_trips_through_bytes() -> None:
    state = fold(random_events(random.Random(5), 80))
    again = UserState.from_bytes(state.to_bytes())
    assert again == state


@pytest.mark.parametrize("seed", range(12))
def test_tags_do_not_change_before_next_due(seed: int) -> None:
    """The time-driven path is only correct if no tag changes between evaluation and next_due."""
    rng = random.Random(seed)
    state = fold(random_events(rng, rng.randint(1, 60)))
    now = (T0 + timedelta(days=rng.uniform(0, 60))).timestamp()
    for _ in range(40):
        due = next_due(state, now, PARAMS)
        assert due > now
        before = evaluate(state, now, THRESHOLDS, PARAMS)
        for probe in (now + (due - now) * f for f in (0.25, 0.5, 0.999)):
            assert evaluate(state, probe, THRESHOLDS, PARAMS) == before, (now, probe, due)
        now = due


def test_cart_abandonment_fires_after_six_hours_without_events() -> None:
    state = fold([ev(1, "add_to_cart", T0, product_id="p", price=5)])
    at = T0.timestamp()
    assert evaluate(state, at + 5.9 * 3600, THRESHOLDS, PARAMS)["cart_abandoned"] == "false"
    assert next_due(state, at + 3600, PARAMS) == at + 6 * 3600
    assert evaluate(state, at + 6 * 3600, THRESHOLDS, PARAMS)["cart_abandoned"] == "true"
    assert evaluate(state, at + 7 * 86400, THRESHOLDS, PARAMS)["cart_abandoned"] == "false"


def test_inactive_user_decays_to_zero() -> None:
    state = fold([ev(1, "order_paid", T0, order_id="o", amount=50)])
    later = evaluate(state, (T0 + timedelta(days=31)).timestamp(), THRESHOLDS, PARAMS)
    assert later["frequency_30d"] == "0" and later["frequency_90d"] == "1" and later["recency_days"] == "31"


def test_rfm_scoring_and_segments() -> None:
    assert score(5, (1, 2, 3, 4)) == 5 and score(1, (1, 2, 3, 4)) == 1 and score(2.5, (1, 2, 3, 4)) == 3
    # the whole R x F grid, read off the table in docs/tags.md (rows R5..R1, columns F1..F5)
    nc, pl, ch, pr, lo, ats, na, hib, ar, cl = (
        "New Customers",
        "Potential Loyalists",
        "Champions",
        "Promising",
        "Loyal",
        "About To Sleep",
        "Need Attention",
        "Hibernating",
        "At Risk",
        "Can't Lose",
    )
    assert [[rfm_segment(r, f) for f in range(1, 6)] for r in (5, 4, 3, 2, 1)] == [
        [nc, pl, pl, ch, ch],
        [pr, pl, pl, lo, lo],
        [ats, ats, na, lo, lo],
        [hib, hib, ar, ar, cl],
        [hib, hib, ar, ar, cl],
    ]
    with pytest.raises(ValueError):
        rfm_segment(0, 3)


def test_plan_write_diffs_audiences_and_expires() -> None:
    state = fold([ev(1, "page_view", T0)])
    first = plan_write("u1", 0, state, T0.timestamp(), CONTEXT)
    assert ("activity_level", "low") in first.audience_add and not first.audience_remove
    assert first.state is not None and first.profile["events_7d"] == "1"
    later = plan_write("u1", 1, state, (T0 + timedelta(days=8)).timestamp(), CONTEXT)
    assert ("funnel_stage_7d", "browsed") in later.audience_remove and ("funnel_stage_7d", "none") in later.audience_add
    kept = plan_write("u1", 2, state, (T0 + timedelta(days=91)).timestamp(), CONTEXT)  # default retention 400 days
    assert kept.state is not None and kept.profile["activity_level"] == "dormant" and kept.ttl_s > 300 * 86400
    assert ("activity_level", "low") in kept.audience_remove
    short = dataclasses.replace(CONTEXT, retention_days=90)
    gone = plan_write("u1", 3, state, (T0 + timedelta(days=91)).timestamp(), short)
    assert gone.state is None and ("activity_level", "dormant") in gone.audience_remove
    state = fold([ev(1, "page_view", T0)])
    assert plan_write("u1", 0, state, (T0 + timedelta(days=400)).timestamp(), CONTEXT).state is None


SMS = {"type": "care_sms", "params": {"template": "t"}}
WELCOME = {"id": "welcome", "version": 1, "when": {"tag": "events_30d", "crosses_above": 0}, "action": SMS}


def _rules(*extra: dict[str, object]) -> RuleSet:
    care = {"id": "care", "version": 1, "when": {"tag": "complaints_90d", "crosses_above": 0}, "action": SMS}
    return parse_rules({"version": 1, "rules": [care, *extra]}, Path("rules.yaml"), CATALOGUE.names)


def _fired(version: int, state: UserState, rules: RuleSet, at: float) -> list[str]:
    write = plan_write(
        "u1", version, state, at, PlanContext(catalogue=CATALOGUE, thresholds=THRESHOLDS, wall_now=at, rules=rules)
    )
    return [d.rule for d in write.decisions if d.outcome == "send"]


def test_rule_baselines_fire_new_users_and_never_a_whole_population() -> None:
    at = T0.timestamp() + 60
    # a brand-new user (no stored state) starts from nothing: the welcome fires
    assert _fired(0, fold([ev(1, "page_view", T0)]), _rules(WELCOME), at) == ["welcome"]
    # a stored user without a baseline (rules just deployed) only records one
    existing = fold([ev(1, "page_view", T0)])
    assert _fired(3, existing, _rules(WELCOME), at) == []
    assert existing.rule_baseline is not None and existing.rule_baseline.values["events_30d"] == "1"
    # a reload that adds a rule on a tag the baseline did not record: its value counts as unchanged
    reloaded = fold([ev(1, "page_view", T0)])
    assert _fired(0, reloaded, _rules(), at) == []
    assert reloaded.rule_baseline is not None and "events_30d" not in reloaded.rule_baseline.values
    assert _fired(1, reloaded, _rules(WELCOME), at + 60) == []
    assert reloaded.rule_baseline.values["events_30d"] == "1"
    # and a real change after that fires
    apply_event(reloaded, ev(2, "feedback", T0 + timedelta(minutes=3), complaint=True), "all/0", 2, PARAMS)
    assert _fired(2, reloaded, _rules(WELCOME), at + 180) == ["care"]
