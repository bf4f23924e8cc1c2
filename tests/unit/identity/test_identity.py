"""Identity merge (pure): folding one profile's state into another equals one profile from the start."""

from __future__ import annotations

import random

import orjson
import pytest
from portrait_dev import synth

from stream.contracts.events import parse_event
from stream.identity.merge import IdentityPolicy, merge_into, refusal
from stream.tagging.definitions import load_catalogue
from stream.tagging.engine import RfmThresholds, apply_event, evaluate
from stream.tagging.memory import DeliveryMemory, DeliveryRecord
from stream.tagging.state import MergedId, UserState

PARAMS = load_catalogue().params


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_merged_state_equals_a_single_profile(seed: int) -> None:
    rng = random.Random(seed)
    events = [e for e in synth.generate(users=5, events=400, seed=seed, days=40) if e["user_id"] == "u00001"]
    assert len(events) > 20
    together, known, anonymous = UserState(), UserState(), UserState()
    for offset, raw in enumerate(events):
        event = parse_event(orjson.dumps(raw))
        # the two ids' events arrive on different partitions, interleaved at random
        source = rng.choice(["clickstream/0", "clickstream/3"])
        apply_event(together, event, "all/0", offset, PARAMS)
        apply_event(known if source.endswith("0") else anonymous, event, source, offset, PARAMS)
    now = max(parse_event(orjson.dumps(e)).epoch for e in events) + 3600
    merge_into(known, anonymous, "anon:dev", now, PARAMS.dedupe_window_events)
    assert evaluate(known, now, RfmThresholds(), PARAMS) == evaluate(together, now, RfmThresholds(), PARAMS)
    assert known.merged == [MergedId("anon:dev", now)]
    # the offsets of both sources survive, so redelivered events of either id are recognised
    assert set(known.offsets) == {"clickstream/0", "clickstream/3"}


def test_safeguards_count_merges_per_day_and_in_total() -> None:
    policy = IdentityPolicy(frozenset({"null", "0"}), max_per_day=2, max_total=3)
    user = UserState(merged=[MergedId("anon:a", 1000.0), MergedId("anon:b", 2000.0)])
    assert refusal(policy, user, 3000.0) == "too_many_per_day"
    assert refusal(policy, user, 2000.0 + 86400) is None  # the first one is a day old by then
    user.merged.append(MergedId("anon:c", 200000.0))
    assert refusal(policy, user, 900000.0) == "too_many_total"
    assert refusal(policy, None, 0.0) is None
    assert policy.is_blocked(" NULL ") and policy.is_blocked("0") and not policy.is_blocked("dev-1")


def test_delivery_memories_merge_cooldowns_caps_and_history() -> None:
    def fired(at: float, rule: str) -> DeliveryRecord:
        return DeliveryRecord(at, rule, 1, f"t-{rule}-{at:.0f}", "sms", "send")

    a = DeliveryMemory({"r1": 100.0}, {"2026-01-01": {"sms": 1}}, [fired(10.0, "r1"), fired(100.0, "r1")])
    b = DeliveryMemory({"r1": 50.0, "r2": 70.0}, {"2026-01-01": {"sms": 2, "push": 1}}, [fired(70.0, "r2")])
    a.merge(b)
    assert a.last_fired == {"r1": 100.0, "r2": 70.0}
    assert a.sent == {"2026-01-01": {"sms": 3, "push": 1}}
    assert [(r.at, r.rule_id) for r in a.recent] == [(10.0, "r1"), (70.0, "r2"), (100.0, "r1")]
