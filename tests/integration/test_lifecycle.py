"""Issue 11 §1: the portrait remembers a customer after 90 quiet days.

Replayed in event time through the worker: a regular customer orders every two weeks, then goes
quiet while other customers keep the clock moving for 130 days. The worker's time-driven path
alone carries the quiet customer across the 90-day window; their profile must still exist with
the lifetime tags of the independent oracle, lifecycle stage ``lapsed`` and RFM scores (the high
lifetime frequency makes them "Can't Lose").
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from stream.storage.store import Store
from stream.tagging.lifecycle import LIFETIME_TAGS
from tests import oracle
from tests.integration.helpers import read_profiles, replay_and_settle, worker

pytestmark = pytest.mark.integration
START = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)


def _event(n: int, user: str, at: datetime, kind: str, **extra: object) -> dict[str, object]:
    return {"schema_version": 1, "event_id": f"e{n:05d}", "type": kind, "user_id": user, "ts": at.isoformat(), **extra}


def _history() -> list[dict[str, object]]:
    events: list[dict[str, object]] = []
    for k, days in enumerate((0, 14, 28, 43, 56)):  # the loyal customer, then silence
        at = START + timedelta(days=days, hours=k)
        events.append(_event(len(events), "loyal", at - timedelta(minutes=5), "page_view", category="books"))
        events.append(_event(len(events), "loyal", at, "order_paid", order_id=f"L{k}", amount=80.0 + k, items=[]))
    for day in range(60, 190, 6):  # newer one-order customers: the event clock moves on
        at = START + timedelta(days=day, hours=15)
        events.append(_event(len(events), f"new{day}", at, "order_paid", order_id=f"O{day}", amount=12.0, items=[]))
    return sorted(events, key=lambda e: str(e["ts"]))


def test_a_customer_quiet_for_more_than_90_days_keeps_a_lapsed_profile(make_settings, tmp_path: Path) -> None:
    settings = make_settings(clock="event", timer_interval_s=0.2, rfm_refresh_interval_s=1.0)
    events = _history()
    split = (START + timedelta(days=60)).isoformat()
    with worker(settings, tmp_path / "worker.log"):
        # in two parts: within one replay a partition that runs ahead moves the clock past the
        # loyal customer's orders, which are then dead-lettered as too old (issue 11 §4)
        replay_and_settle(settings, [e for e in events if str(e["ts"]) < split])
        replay_and_settle(settings, [e for e in events if str(e["ts"]) >= split])
        profiles, clock = asyncio.run(read_profiles(settings))

    loyal = profiles["loyal"]
    quiet_days = (clock - datetime.fromisoformat(str(events[-1]["ts"])).timestamp()) / 86400
    assert quiet_days < 1 and int(loyal["days_since_last_order"]) > 90
    users = sorted({str(e["user_id"]) for e in events})
    want = {u: oracle.lifecycle_tags([e for e in events if e["user_id"] == u], clock) for u in users}
    assert {u: {t: profiles[u].get(t) for t in LIFETIME_TAGS} for u in users} == {
        u: {t: want[u].get(t) for t in LIFETIME_TAGS} for u in users
    }
    assert loyal["lifecycle_stage"] == "lapsed" and loyal["lifetime_orders"] == "5"
    assert loyal["frequency_90d"] == "0" and loyal["activity_level"] == "dormant"
    assert (loyal["r_score"], loyal["f_score"], loyal["rfm_segment"]) == ("1", "5", "Can't Lose")

    async def audience() -> set[bytes]:
        async with Store.open(settings) as store:
            members = store.reads.audience_members(("lifecycle_stage", "lapsed"))
            return {m.encode() async for chunk in members for m in chunk}

    lapsed = {u.encode() for u in users if want[u]["lifecycle_stage"] == "lapsed"}
    assert b"loyal" in lapsed and asyncio.run(audience()) == lapsed
