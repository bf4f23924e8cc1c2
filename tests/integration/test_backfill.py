"""Backfills (issue 11 §4): an event-time replay of history on two workers loses no valid event
to ``too_old`` however far one partition runs ahead, and messages nobody about the past.

One worker reads 500 messages per batch, the other 20: the second's partitions fall months
behind the first's while a 7-month purchase history is replayed. Before the fix a worker judged an
event's age against the largest event time any worker had reached, and dead-lettered the slow
worker's events more than 90 days behind it. Later, on a busy box, a partition recorded as read to
the end of a stale fetch (or not reported yet) let the time-driven path evaluate the slow worker's
users ahead of their unread events (``too_old`` again), and time-driven writes racing a batch
dead-lettered its events after 5 conflicts (tests/component/test_backfill_races.py shows both).
Expected values are independent: the offline oracle's window tags, and the rule's firings
counted by hand from the orders (``frequency_90d crosses_above 0`` fires on an order day with no
order in the 89 days before it). Every one fires: a batch evaluates a user's change points up to
the lowest read time of the user's own partitions, not of all (before, 327 of 342 fired: the
change points a user's next order overtook while the other worker's partitions held the watermark
back were skipped; earlier still, 349 "fired", with users evaluated back at the watermark after
their later orders were applied).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import urllib.request
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import pytest
from portrait_dev import synth
from portrait_dev.infra import free_port

from stream.kafka import replay
from stream.rules.counters import RuleCounter
from stream.settings import Settings
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


async def wait_assigned(*workers: Settings, timeout: float = 60.0) -> None:
    """Until the group has settled: each worker owns some input partitions (readiness JSON)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        owned = []
        for s in workers:
            try:
                with urllib.request.urlopen(f"http://{s.web_host}:{s.web_port}/readyz", timeout=2) as resp:
                    owned.append(json.loads(resp.read())["checks"]["progress"]["assigned"])
            except OSError:
                owned.append(0)
        if all(owned) and sum(owned) >= 16:
            return
        await asyncio.sleep(0.5)
    raise AssertionError("the two workers did not split the partitions")


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
    fast = make_settings(clock="event", rules_file=rules, batch_size=500)
    # the second worker reads 20 messages per batch: its partitions fall far behind the first's
    slow = fast.model_copy(update={"web_port": free_port(), "batch_size": 20})
    # a purchase log (one topic): a user's events all come from one partition, as in an export
    events = synth.purchase_history(customers=300, orders=1500, months=7, seed=11)
    with worker(fast, tmp_path / "w1.log"), worker(slow, tmp_path / "w2.log"):
        asyncio.run(wait_assigned(fast, slow))
        sent = asyncio.run(replay.replay(fast, events, progress=False)).total
        asyncio.run(processed_and_settled(fast, sent))
        stats = asyncio.run(read_stats(fast))
        assert {k: n for k, n in stats.items() if k.startswith("dlq_")} == {}
        actual, now = asyncio.run(read_profiles(fast))
        expected = oracle.compute_profiles(events, now)
        # every customer of the window has a profile (the lifecycle memory keeps quieter ones too),
        # with the oracle's window tags (it models the 90-day window only)
        assert set(expected) <= set(actual) and len(expected) > 100
        got = {u: {t: actual[u].get(t) for t in WINDOW_TAGS} for u in expected}
        assert got == {u: {t: p.get(t) for t in WINDOW_TAGS} for u, p in expected.items()}

        # history: its firings are decided as live would and recorded as backfill suppressions,
        # none is sent (their exact count is compared with the per-day path in test_backfill_exact)
        outcomes = {k: n for k, n in stats.items() if k.startswith("rule:first_order:")}
        assert outcomes == {RuleCounter("first_order", "backfill").encode(): outcomes.get("rule:first_order:backfill")}
        # every change point of a user is evaluated before their next event, however far the other
        # worker's partitions lag (the user's events are all on one partition): each firing counted
        assert outcomes["rule:first_order:backfill"] == _expected_firings(events)
        assert asyncio.run(read_triggers(fast, idle_s=1.0)) == {}

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
        sent += asyncio.run(replay.replay(fast, [order], progress=False)).total
        asyncio.run(processed(fast, sent, timeout=60))
        triggers = asyncio.run(read_triggers(fast, idle_s=2.0))
    assert [(t["rule_id"], t["user_id"]) for t in triggers.get("triggers.coupon", [])] == [("first_order", "live-user")]
