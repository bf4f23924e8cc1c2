"""Component tier (real Valkey, in-process processor): RFM refreshes in step with the batches.

With ``rfm_event_refresh: batches`` a batch that spans several RFM periods (event-time days) is
applied in pieces: before the events of each new day the thresholds are refreshed from the rank
sets of the days before, as a replay in strict event-time order (the offline driver) does. With
"tick" (the default) only the timer refreshes, so a batch's later days are scored on the
thresholds of before the batch: none at all here, since no timer runs.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from stream.contracts.topics import Topics
from stream.core.pipeline import Message
from stream.metrics import Metrics
from stream.service.processor import Processor, refresh_points
from stream.tagging.definitions import load_catalogue
from tests import oracle
from tests.integration.helpers import no_dead_letters, store_for

pytestmark = pytest.mark.integration
START = datetime(2026, 8, 1, 12, tzinfo=UTC)
DAY = 86400.0


def _order(n: int, day: int, user: str, amount: float) -> bytes:
    ts = (START + timedelta(days=day, minutes=n)).isoformat()
    event = {"event_id": f"e{n}", "type": "order_paid", "user_id": user, "ts": ts}
    return orjson.dumps(event | {"order_id": f"o{n}", "amount": amount, "currency": "EUR", "items": []})


# day 0: five customers order; day 1: one more; day 2: u0 orders again
ORDERS = [(0, f"u{i}", 10.0 * (i + 1)) for i in range(5)] + [(1, "u5", 60.0), (2, "u0", 5.0)]


def _run(make_settings, names, mode: str) -> tuple[int, dict[str, str], dict[str, str]]:  # type: ignore[no-untyped-def]
    """One batch holding every order, its partition read to the end. Returns (thresholds
    version, u0's profile, u5's profile)."""
    settings = make_settings(clock="event", key_prefix=f"{names.key_prefix}-{mode}", rfm_event_refresh=mode)
    topics = Topics(settings.topic_prefix)
    batch = [
        Message(topics.transactions, 0, n, user.encode(), _order(n, day, user, amount))
        for n, (day, user, amount) in enumerate(ORDERS)
    ]

    async def run() -> tuple[int, dict[str, str], dict[str, str]]:
        store = store_for(settings)
        processor = Processor(settings, load_catalogue(), store, no_dead_letters, Metrics())
        try:
            report = await processor.process(batch, {f"{topics.transactions}/0": len(batch)})
            assert (report.messages, report.applied) == (len(batch), len(batch))
            version = (await store.rfm_thresholds()).version
            return version, await store.profile("u0"), await store.profile("u5")
        finally:
            await store.close()

    return asyncio.run(run())


def test_a_batch_over_several_days_is_scored_on_each_days_thresholds(make_settings, names) -> None:
    version, u0, u5 = _run(make_settings, names, "batches")
    # refreshed at the start of day 0 (nobody ranked yet: empty thresholds, version 1), day 1
    # and day 2
    assert version == 3
    assert u5["_rfm_version"] == "2"  # day 1: the thresholds of the day-0 customers
    assert u0["_rfm_version"] == "3"  # day 2: those of day 0 and day 1
    assert u0["f_score"] == "5"  # the only customer with two orders
    assert "rfm_segment" in u0


def test_without_it_the_batch_is_scored_on_the_thresholds_before_it(make_settings, names) -> None:
    version, u0, u5 = _run(make_settings, names, "tick")
    assert version == 0
    assert u0["_rfm_version"] == u5["_rfm_version"] == "0"
    assert "rfm_segment" not in u0


def test_refresh_points_are_the_period_starts_after_the_last_refresh() -> None:
    assert refresh_points(5.5 * DAY, 5.9 * DAY, DAY) == []
    assert refresh_points(5.5 * DAY, 8.2 * DAY, DAY) == [6 * DAY, 7 * DAY, 8 * DAY]
    assert refresh_points(6 * DAY, 7 * DAY, DAY) == [7 * DAY]
    assert refresh_points(0.0, 100 * DAY, DAY, limit=3) == [DAY, 2 * DAY, 3 * DAY]


def _run_with_a_lagging_partition(make_settings, names, read_through: dict[str, float] | None) -> int:  # type: ignore[no-untyped-def]
    """The same orders on partition 0, and one day-0 order on partition 1, which has more records
    to read (high-water mark 5): its applied time holds every cut back, unless ``read_through``
    (what the in-step inbox hands over) says all its records before a later time are out."""
    settings = make_settings(clock="event", key_prefix=f"{names.key_prefix}-lag", rfm_event_refresh="batches")
    topics = Topics(settings.topic_prefix)
    batch = [
        Message(topics.transactions, 0, n, user.encode(), _order(n, day, user, amount))
        for n, (day, user, amount) in enumerate(ORDERS)
    ] + [Message(topics.transactions, 1, 0, b"u9", _order(99, 0, "u9", 1.0))]

    async def run() -> int:
        store = store_for(settings)
        processor = Processor(settings, load_catalogue(), store, no_dead_letters, Metrics())
        try:
            ends = {f"{topics.transactions}/0": len(ORDERS), f"{topics.transactions}/1": 5}
            report = await processor.process(batch, ends, read_through)
            assert report.applied == len(batch)
            return (await store.rfm_thresholds()).version
        finally:
            await store.close()

    return asyncio.run(run())


def test_a_partition_not_read_up_to_a_period_start_holds_the_cut_back(make_settings, names) -> None:
    # only the first batch's refresh (day 0): partition 1 may still hold day-0 and day-1 events
    assert _run_with_a_lagging_partition(make_settings, names, None) == 1


def test_a_partition_handed_out_past_the_period_starts_lets_the_batch_be_cut(make_settings, names) -> None:
    topics = Topics(make_settings().topic_prefix)
    through = {f"{topics.transactions}/1": (START + timedelta(days=3)).timestamp()}
    assert _run_with_a_lagging_partition(make_settings, names, through) == 3


def test_customers_whose_retention_ended_leave_the_population_before_the_cut_points(make_settings, names) -> None:
    """Retention of 90 days: the customers of day 0 only are deleted at day 90, so the refresh at
    the start of day 95, in the same batch, ranks only the customers of day 50 (the independent
    quintiles of their order times), as the offline driver, which evaluates everyone due by a
    period start before refreshing there. Nothing but that refresh evaluates them here (no timer
    runs)."""
    settings = make_settings(
        clock="event", key_prefix=f"{names.key_prefix}-expiry", rfm_event_refresh="batches", lifecycle_retention_days=90
    )
    topics = Topics(settings.topic_prefix)
    orders = [(0, f"u{i}", 10.0 * (i + 1)) for i in range(5)]
    orders += [(50, f"u{i}", 7.0 * i) for i in range(5, 10)] + [(95, "u10", 1.0)]
    batch = [
        Message(topics.transactions, 0, n, user.encode(), _order(n, day, user, amount))
        for n, (day, user, amount) in enumerate(orders)
    ]
    alive = [(START + timedelta(days=day, minutes=n)).timestamp() for n, (day, _, _) in enumerate(orders) if day == 50]

    async def run() -> tuple[tuple[float, ...], dict[str, str], dict[str, str]]:
        store = store_for(settings)
        processor = Processor(settings, load_catalogue(), store, no_dead_letters, Metrics())
        try:
            report = await processor.process(batch, {f"{topics.transactions}/0": len(batch)})
            assert report.applied == len(batch)
            return (await store.rfm_thresholds()).r, await store.profile("u0"), await store.profile("u5")
        finally:
            await store.close()

    r, expired, kept = asyncio.run(run())
    assert expired == {}
    assert kept["_rfm_version"]  # evaluated, and still there
    assert list(r) == oracle.rfm_thresholds(alive)
