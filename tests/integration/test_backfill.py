"""Backfills (issue 11 §4): an event-time replay of history on two workers loses no valid event
to ``too_old`` however far one partition runs ahead, and messages nobody about the past.

Partitions 0-1 get their whole 200-day history first; partitions 2-3 get theirs (the same months)
only once the clock has reached the end. Before the fix the worker judged an event's age against
the largest event time any partition had reached, and dead-lettered every event of partitions 2-3
older than 90 days before the end. Expected values are independent: the offline oracle's window
tags, and an upper bound of the rule's firings counted by hand from the orders
(``frequency_90d crosses_above 0`` fires on an order day with no order in the 89 days before it).
Not all of them fire here: a change point that a user's next event overtakes while another
topic's partition holds the watermark back is not evaluated (docs/operations.md, "Backfills").
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka.partitioner import DefaultPartitioner
from portrait_dev import synth
from portrait_dev.infra import free_port

from stream.kafka import replay
from stream.rules.counters import RuleCounter
from tests import oracle
from tests.integration.helpers import (
    event_time,
    processed,
    processed_and_settled,
    read_profiles,
    read_stats,
    worker,
)
from tests.integration.triggers import read_triggers

pytestmark = pytest.mark.integration
DAY = 86400
WINDOW_TAGS = (
    *("events_7d", "events_30d", "active_days_7d", "active_days_30d", "frequency_30d", "frequency_90d"),
    *("monetary_30d", "monetary_90d", "value_tier", "complaints_90d", "avg_rating_90d", "funnel_stage_7d"),
)
RULES = """
version: 1
rules:
  - id: first_order
    version: 1
    description: an order after 90 days without one
    when: {tag: frequency_90d, crosses_above: 0}
    action: {type: coupon, params: {campaign: welcome_back, value: 5.0}}
"""


def _partition(event: dict) -> int:
    return int(DefaultPartitioner()(event["user_id"].encode(), [0, 1, 2, 3], [0, 1, 2, 3]))


def _expected_firings(events: list[dict]) -> int:
    days: dict[str, set[int]] = defaultdict(set)
    for e in events:
        if e["type"] == "order_paid":
            days[e["user_id"]].add(int(event_time(e) // DAY))
    fired = 0
    for user_days in days.values():
        ordered = sorted(user_days)
        fired += 1 + sum(1 for before, day in itertools.pairwise(ordered) if day - before >= 90)
    return fired


def test_two_workers_with_skewed_partitions_lose_nothing_and_send_no_history(make_settings, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    first = make_settings(clock="event", rules_file=rules, batch_size=100, timer_interval_s=0.2)
    second = first.model_copy(update={"web_port": free_port()})
    events = synth.generate(users=160, events=4000, seed=11, days=200)
    ahead = [e for e in events if _partition(e) < 2]
    behind = [e for e in events if _partition(e) >= 2]
    assert len(ahead) > 1000 and len(behind) > 1000
    with worker(first, tmp_path / "w1.log"), worker(second, tmp_path / "w2.log"):
        sent = asyncio.run(replay.replay(first, ahead, progress=False)).total
        asyncio.run(processed(first, sent, timeout=120))
        sent += asyncio.run(replay.replay(first, behind, progress=False)).total
        asyncio.run(processed_and_settled(first, sent))
        stats = asyncio.run(read_stats(first))
        assert {k: n for k, n in stats.items() if k.startswith("dlq_")} == {}
        actual, now = asyncio.run(read_profiles(first))
        expected = oracle.compute_profiles(events, now)
        assert set(actual) == set(expected)
        # the oracle models the 90-day window only (first_seen, traits, interest remember more)
        got = {u: {t: p.get(t) for t in WINDOW_TAGS} for u, p in actual.items()}
        assert got == {u: {t: p.get(t) for t in WINDOW_TAGS} for u, p in expected.items()}

        # history: its firings are decided as live would and recorded as backfill suppressions,
        # none is sent (their exact count is compared with the per-day path in test_backfill_exact)
        outcomes = {k: n for k, n in stats.items() if k.startswith("rule:first_order:")}
        assert outcomes == {RuleCounter("first_order", "backfill").encode(): outcomes.get("rule:first_order:backfill")}
        assert 0 < outcomes["rule:first_order:backfill"] <= _expected_firings(events)
        assert asyncio.run(read_triggers(first, idle_s=1.0)) == {}

        # a live order (a minute ago, wall clock) still fires and is sent
        live = time.time() - 60
        order = {
            "event_id": "live-1",
            "type": "order_paid",
            "user_id": "live-user",
            "ts": datetime.fromtimestamp(live, UTC).isoformat(),
            "order_id": "o-live-1",
            "amount": 20.0,
            "currency": "USD",
        }
        sent += asyncio.run(replay.replay(first, [order], progress=False)).total
        asyncio.run(processed(first, sent, timeout=60))
        triggers = asyncio.run(read_triggers(first, idle_s=2.0))
    assert [(t["rule_id"], t["user_id"]) for t in triggers.get("triggers.coupon", [])] == [("first_order", "live-user")]
