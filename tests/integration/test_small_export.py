"""Issue 15 "small exports just work" / issue 11 §4: RFM thresholds follow event time in a replay.

A CSV of 500 orders replayed in event time used to leave every profile without r/f/m scores or an
RFM segment until a manual `portrait rfm refresh --reevaluate` (thresholds refreshed every 10 s of
wall time while the replay swept months, and nobody was re-scored when they moved). Now the
thresholds refresh on an event-time cadence and when they move, the users whose scores can change
are re-scored, so once the worker is idle the scores equal those after a full refresh.
"""

from __future__ import annotations

import asyncio
import csv
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from portrait_dev.harness import settle
from portrait_dev.infra import free_port

from stream.kafka import replay
from stream.storage.store import Store
from tests.integration.helpers import processed, read_profiles, worker

pytestmark = pytest.mark.integration
RFM = ("r_score", "f_score", "m_score", "rfm_segment")


def _write_orders(path: Path, rows: int = 500, users: int = 120) -> None:
    rng = random.Random(17)
    start = datetime(2026, 6, 1, tzinfo=UTC)
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["customer", "date", "total"])
        times = sorted(start + timedelta(seconds=rng.randrange(120 * 86400)) for _ in range(rows))
        for when in times:  # in time order, as an export of an order table usually is
            out.writerow([f"c{rng.randrange(users):03d}", when.strftime("%Y-%m-%d %H:%M:%S"), rng.randint(5, 400)])


async def _idle(settings, polls: int = 600) -> None:
    """Until nothing is due and the thresholds version stayed put over a few wall refreshes."""
    async with Store.open(settings) as store:
        stable, version = 0, -1
        for _ in range(polls):
            clock = await store.clock() or 0.0
            due, _ = await store.due_stats(clock)
            current = (await store.rfm_thresholds()).version
            stable = stable + 1 if due == 0 and current == version else 0
            version = current
            if stable >= 15:  # 15 polls of 0.2 s: three refresh intervals of 1 s without a change
                return
            await asyncio.sleep(0.2)
    raise AssertionError("the worker did not become idle")


def _scores(profiles: dict[str, dict[str, str]]) -> dict[str, tuple[str | None, ...]]:
    return {uid: tuple(p.get(t) for t in RFM) for uid, p in profiles.items()}


def test_a_small_csv_replayed_in_event_time_has_rfm_scores_without_a_manual_refresh(
    make_settings, tmp_path: Path
) -> None:
    settings = make_settings(clock="event", web_port=free_port(), rfm_refresh_interval_s=1.0)
    export = tmp_path / "orders.csv"
    _write_orders(export)
    rows = list(
        replay.read_events(
            export,
            mapping=replay.parse_mapping("customer=user_id,date=ts,total=amount"),
            default_type="order_paid",
        )
    )
    with worker(settings, tmp_path / "worker.log"):
        asyncio.run(replay.replay(settings, rows, progress=False))
        asyncio.run(processed(settings, len(rows), timeout=120, counter="events_applied"))
        asyncio.run(_idle(settings))
        after_replay, _ = asyncio.run(read_profiles(settings))

        async def full_refresh() -> None:
            async with Store.open(settings) as store:
                await settle(store, event_clock=True)  # refresh + re-evaluate everyone until stable

        asyncio.run(full_refresh())
        refreshed, _ = asyncio.run(read_profiles(settings))
    buyers = {uid: p for uid, p in after_replay.items() if p.get("frequency_90d", "0") != "0"}
    assert len(buyers) > 50
    assert all(all(p.get(t) for t in RFM) for p in buyers.values()), "a buyer without RFM scores"
    assert _scores(after_replay) == _scores(refreshed)
