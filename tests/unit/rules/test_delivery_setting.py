"""The delivery setting (``Delivery``): a backfill of history is decided as live, nothing is sent.

Expected outcomes by hand from docs/rules.md "Delivery": a firing more than the horizon behind the
wall clock is withheld as ``backfill``; dry-run withholds every firing as ``dry_run``; a withheld
firing counts for the cooldown as the live decision would, and opens no exposure.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stream.rules import Delivery, DeliveryMemory, RuleSet, evaluate_rules, holdout, parse_rules
from stream.rules.effect import open_exposures
from stream.tagging.state import UserState

DAY = 86400.0
WALL = datetime(2026, 12, 1, 12, tzinfo=UTC).timestamp()
OFF = {"value_tier": "vip", "recency_days": "13"}
ON = {"value_tier": "vip", "recency_days": "14"}


def _rules(**rule: Any) -> RuleSet:
    full = {
        "id": "r0",
        "version": 1,
        "when": {"tag": "recency_days", "ge": 14},
        "action": {"type": "care_sms", "params": {"template": "t"}},
    }
    return parse_rules({"version": 1, "rules": [{**full, **rule}]}, Path("t.yaml"), {"recency_days", "value_tier"})


def _fire(rules: RuleSet, at: float, delivery: Delivery, memory: DeliveryMemory) -> tuple[str, str | None]:
    [d] = evaluate_rules(rules, "u1", OFF, ON, at, memory, delivery)
    return d.outcome, d.reason


def test_a_firing_older_than_the_horizon_is_withheld_as_backfill_and_a_recent_one_is_sent() -> None:
    rules, live = _rules(), Delivery.at("live", WALL, horizon_s=DAY)
    assert _fire(rules, WALL - 2 * DAY, live, DeliveryMemory()) == ("suppressed", "backfill")
    assert _fire(rules, WALL - 3600, live, DeliveryMemory()) == ("send", None)
    assert _fire(rules, WALL - 400 * DAY, Delivery.at("live", WALL, horizon_s=0), DeliveryMemory()) == ("send", None)


def test_dry_run_withholds_every_firing() -> None:
    assert _fire(_rules(), WALL, Delivery.at("dry-run", WALL, DAY), DeliveryMemory()) == ("suppressed", "dry_run")


def test_a_withheld_firing_counts_for_the_cooldown_like_the_live_send_and_is_recorded() -> None:
    rules, live, memory = _rules(cooldown="30d"), Delivery.at("live", WALL, DAY), DeliveryMemory()
    first = WALL - 40 * DAY
    assert _fire(rules, first, live, memory) == ("suppressed", "backfill")
    # 10 days later a live run would be in the cooldown of the first send: so is the backfill
    assert _fire(rules, first + 10 * DAY, live, memory) == ("suppressed", "cooldown")
    assert [(r.at, r.outcome, r.reason) for r in memory.recent] == [
        (first, "suppressed", "backfill"),
        (first + 10 * DAY, "suppressed", "cooldown"),
    ]


def test_a_withheld_holdout_stays_withheld_and_no_exposure_opens() -> None:
    rules, state = _rules(holdout=0.99), UserState()
    assert holdout("u1", "r0", 0.99)  # the live decision would be a held-out (control) firing
    decisions = evaluate_rules(rules, "u1", OFF, ON, WALL - 5 * DAY, state.delivery, Delivery.at("live", WALL, DAY))
    assert [(d.outcome, d.reason, d.group) for d in decisions] == [("suppressed", "backfill", None)]
    open_exposures(state, decisions, WALL - 5 * DAY, rules, {})
    assert state.exposures == []
