"""Tags decay without events: only the worker's timer (the due set) re-evaluates users."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from portrait_dev import synth
from portrait_dev.harness import settle

from stream.storage.store import Store
from tests import oracle
from tests.integration.helpers import read_profiles, replay_and_settle, worker

pytestmark = pytest.mark.integration
RFM_TAGS = {"r_score", "f_score", "m_score", "rfm_segment"}
DAY = 86400


async def _advance_and_drain(settings, to: float) -> None:
    async with Store.open(settings) as store:
        await store.advance_clock(to)
        # due re-evaluations drained, and every profile at the clock (in event time the worker
        # evaluates only the change points a decision needs until the input stops)
        await settle(store, event_clock=True, timeout=60)


async def _all_keys(settings) -> list[str]:
    async with Store.open(settings) as store:
        return [k.decode() async for k in store.client.scan_iter(match=f"{store.keys.base}:*", count=1000)]


def _without_rfm(profiles: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    # RFM scores depend on population thresholds, which only a refresh moves; not under test here
    return {u: {k: v for k, v in p.items() if k not in RFM_TAGS} for u, p in profiles.items()}


def test_tags_decay_and_users_expire_without_events(make_settings, tmp_path: Path) -> None:
    # a 90-day lifecycle retention: users are deleted when their data leaves the daily window
    settings = make_settings(clock="event", timer_interval_s=0.2, lifecycle_retention_days=90)
    events = synth.generate(users=150, events=4000, seed=31, days=40)
    with worker(settings, tmp_path / "worker.log"):
        replay_and_settle(settings, events)
        before, now = asyncio.run(read_profiles(settings))

        later = now + 20 * DAY + 7 * 3600  # crosses day boundaries, 7/30-day windows, cart timers
        asyncio.run(_advance_and_drain(settings, later))
        after, clock = asyncio.run(read_profiles(settings))
        assert clock == later
        expected = _without_rfm(after)
        want = _without_rfm(oracle.compute_profiles(events, later))
        assert_profiles_match_plain(want, expected)
        changed = sum(1 for u in before if _without_rfm(before)[u] != expected[u])
        assert changed > 100, f"only {changed} profiles changed after 20 days without events"

        # past the 90-day window every trace of every user is deleted by the time-driven path
        asyncio.run(_advance_and_drain(settings, now + 95 * DAY))
        personal = (":state:", ":profile:", ":alias:", ":aud:", ":rank:", "}:due")  # per-user keys, memberships
        shard_keys = [k for k in asyncio.run(_all_keys(settings)) if "{g}" not in k]  # not the per-store keys
        leftovers = [k for k in shard_keys if any(part in k for part in personal)]
        assert leftovers == []


def assert_profiles_match_plain(want: dict[str, dict[str, str]], got: dict[str, dict[str, str]]) -> None:
    assert set(want) == set(got)
    diffs = [
        (u, {k: (got[u].get(k), want[u].get(k)) for k in set(got[u]) | set(want[u]) if got[u].get(k) != want[u].get(k)})
        for u in want
        if want[u] != got[u]
    ]
    assert not diffs, f"{len(diffs)} profiles differ, e.g. {diffs[:3]}"
