"""Issue 11 §4 regressions (real Valkey, in-process processor): two ways a multi-worker backfill
lost valid events.

* A worker records a partition as read to its end (CAUGHT) against the consumer's last fetch while
  the producer keeps appending to it. Trusting that flag, the time-driven path evaluated the
  partition's users at another partition's clock, months ahead of their unread events, and those
  events were then dead-lettered as ``too_old``. With fresh end offsets (``Processor.input_ends``)
  the watermark holds the clock back to that partition.
* A time-driven re-evaluation (any worker) moves a user's state version without applying events;
  a batch whose write kept losing the compare-and-set to such writes dead-lettered the user's
  events after 5 attempts. Only writes that applied events count toward that storm now.

Expected values are counted by hand from the messages.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from stream.contracts.deadletter import DeadLetter
from stream.core.pipeline import Message
from stream.metrics import Metrics
from stream.service.processor import Processor
from stream.storage.store import Ends
from stream.tagging.definitions import load_catalogue
from tests.integration.helpers import no_dead_letters, store_for

pytestmark = pytest.mark.integration
START = datetime(2026, 1, 5, 12, tzinfo=UTC)


def _order(n: int, user: str, day: int) -> bytes:
    return orjson.dumps(
        {
            "event_id": f"o{n}",
            "type": "order_paid",
            "user_id": user,
            "ts": (START + timedelta(days=day)).isoformat(),
            "order_id": f"o{n}",
            "amount": 10.0,
            "currency": "EUR",
        }
    )


def _backfill(settings: Any, fresh_ends: bool) -> tuple[list[DeadLetter], int]:
    """Partition 1 (slow) has one order of "slow" on day 0 when its owner reads it to the end of
    that fetch; partition 0 (fast) is read on to day 300; then the time-driven path freshens every
    profile, and only then does partition 1 deliver "slow"'s day-100 order, appended meanwhile.
    Returns (dead letters, events applied)."""
    orders = f"{settings.topic_prefix}.transactions"
    fast, slow = f"{orders}/0", f"{orders}/1"
    letters: list[DeadLetter] = []

    async def collect(found: list[DeadLetter]) -> None:
        letters.extend(found)

    async def ends() -> Ends:  # the broker now: partition 1 has a second message
        return {fast: (0, 2), slow: (0, 2)}

    async def run() -> int:
        store = store_for(settings)
        try:
            proc = Processor(settings, load_catalogue(), store, collect, Metrics())
            if fresh_ends:
                proc.input_ends = ends
            stale = {fast: 2, slow: 1}  # the consumer's last fetch of partition 1 ended at offset 1
            applied = (await proc.process([Message(orders, 1, 0, b"slow", _order(0, "slow", 0))], stale)).applied
            batch = [
                Message(orders, 0, 0, b"fast", _order(1, "fast", 0)),
                Message(orders, 0, 1, b"fast", _order(2, "fast", 300)),
            ]
            applied += (await proc.process(batch, stale)).applied
            for _ in range(3):  # the worker's timer ticks: drain what is due, then freshen
                mark = await proc.now()
                while await proc.reevaluate_due(mark):
                    pass
                await proc.freshen(await proc.now())
            late = [Message(orders, 1, 1, b"slow", _order(3, "slow", 100))]
            applied += (await proc.process(late, {fast: 2, slow: 2})).applied
            return applied
        finally:
            await store.close()

    return letters, asyncio.run(run())


def test_a_partition_read_to_a_stale_end_holds_the_time_driven_path_back(make_settings, names) -> None:
    # the failure, shown to be observable: trusting the stale CAUGHT flag, "slow" was freshened at
    # day 300 and its day-100 order is more than 90 days older than that evaluation
    base = names.key_prefix
    letters, applied = _backfill(make_settings(clock="event", key_prefix=f"{base}-stale"), fresh_ends=False)
    assert [d.reason for d in letters] == ["too_old"] and applied == 3
    letters, applied = _backfill(make_settings(clock="event", key_prefix=f"{base}-fresh"), fresh_ends=True)
    assert letters == [] and applied == 4


def test_time_driven_writes_racing_a_batch_cost_no_event(make_settings) -> None:
    """Six writes that apply no event (time-driven re-evaluations) move u1's version before six
    writes of the batch in a row: the batch is written on the seventh attempt, nothing is lost."""
    settings = make_settings(clock="event")
    orders = f"{settings.topic_prefix}.transactions"
    letters: list[DeadLetter] = []

    async def collect(found: list[DeadLetter]) -> None:
        letters.extend(found)

    async def run() -> tuple[int, dict[str, str]]:
        store = store_for(settings)
        try:
            proc = Processor(settings, load_catalogue(), store, collect, Metrics())
            first = [Message(orders, 0, 0, b"u1", _order(0, "u1", 0))]
            await proc.process(first, {f"{orders}/0": 1})
            write, rivals = store.write, [6]

            async def after_a_reevaluation(writes, *args):  # type: ignore[no-untyped-def]
                if rivals[0] and any(w.uid == "u1" for w in writes):
                    rivals[0] -= 1
                    await store.client.hincrby(store.keys.state("u1"), "ver", 1)
                return await write(writes, *args)

            store.write = after_a_reevaluation  # type: ignore[method-assign]
            batch = [Message(orders, 0, 1, b"u1", _order(1, "u1", 1)), Message(orders, 0, 2, b"u0", _order(2, "u0", 1))]
            report = await proc.process(batch, {f"{orders}/0": 3})
            return report.applied, await store.profile("u1")
        finally:
            await store.close()

    applied, profile = asyncio.run(run())
    assert letters == [] and applied == 2
    assert profile["frequency_30d"] == "2"


def test_a_user_made_due_now_is_never_evaluated_before_their_own_latest_evaluation(make_settings) -> None:
    """Partition 0 runs 300 days ahead of partition 1, which still has a message waiting, so the
    watermark stays at day 0 while "fast" was evaluated at day 300 with its day-300 order applied.
    Made due now (as an RFM re-score or a freshen does), "fast" was evaluated at the watermark,
    300 days before its own order: recency_days -300 and every rule comparing against that profile.
    It is evaluated at its own day 300 instead."""
    settings = make_settings(clock="event")
    orders = f"{settings.topic_prefix}.transactions"
    fast, slow = f"{orders}/0", f"{orders}/1"

    async def ends() -> Ends:  # partition 1 has a second message not read yet
        return {fast: (0, 2), slow: (0, 2)}

    async def run() -> tuple[float, dict[str, str]]:
        store = store_for(settings)
        try:
            proc = Processor(settings, load_catalogue(), store, no_dead_letters, Metrics())
            proc.input_ends = ends
            await proc.process([Message(orders, 1, 0, b"slow", _order(0, "slow", 0))], {slow: 1})
            batch = [
                Message(orders, 0, 0, b"fast", _order(1, "fast", 0)),
                Message(orders, 0, 1, b"fast", _order(2, "fast", 300)),
            ]
            await proc.process(batch, {fast: 2, slow: 1})
            mark = await proc.now()
            await store.mark_all_due()
            while await proc.reevaluate_due(mark):
                pass
            return mark, await store.profile("fast")
        finally:
            await store.close()

    mark, profile = asyncio.run(run())
    day300 = (START + timedelta(days=300)).timestamp()
    assert mark == START.timestamp()  # the watermark held at partition 1's day 0
    assert float(profile["_evaluated_at"]) == day300
    assert profile["recency_days"] == "0" and profile["days_since_last_order"] == "0"


def test_a_time_driven_write_that_conflicts_on_one_shard_writes_the_others_once_and_retries_that_shard(
    make_settings,
) -> None:
    """A batch of events writes one user of a claim between its load and its write: the claim's
    write conflicts on that user's shard only. The other shards' users were written once (not
    planned and written again), and the conflicting shard's users (the raced one and its innocent
    neighbour) are re-read and written in the same claim, not left in flight for the lease."""
    settings = make_settings(clock="wall")
    clicks = f"{settings.topic_prefix}.clickstream"

    async def run() -> tuple[dict[str, int], dict[str, int], int, int]:
        store = store_for(settings)
        try:
            keys = store.keys
            by_shard: dict[int, list[str]] = {}
            for n in range(1000):
                by_shard.setdefault(keys.shard(f"u{n}"), []).append(f"u{n}")
            raced, neighbour = next(users for users in by_shard.values() if len(users) >= 2)[:2]
            other = next(users[0] for s, users in by_shard.items() if s != keys.shard(raced))
            users = [raced, neighbour, other]
            proc = Processor(settings, load_catalogue(), store, no_dead_letters, Metrics())
            now = datetime.now(UTC).isoformat()
            views = [
                orjson.dumps({"event_id": f"v{i}", "type": "page_view", "user_id": u, "ts": now})
                for i, u in enumerate(users)
            ]
            await proc.process(
                [Message(clicks, 0, i, u.encode(), v) for i, (u, v) in enumerate(zip(users, views, strict=True))]
            )

            async def versions() -> dict[str, int]:
                return {u: int(await store.client.hget(keys.state(u), "ver") or 0) for u in users}

            before = await versions()
            await store.mark_all_due()
            write, raced_once = store.write, [True]

            async def raced_by_a_batch(writes: Any, *args: Any) -> Any:
                if raced_once[0]:
                    raced_once[0] = False
                    await store.client.hincrby(keys.state(raced), "ver", 1)  # a batch of events wrote it
                return await write(writes, *args)

            store.write = raced_by_a_batch  # type: ignore[method-assign]
            written = await proc.reevaluate_due()
            in_flight = sum([await store.client.zcard(keys.inflight(s)) for s in range(keys.shards)])
            return before, await versions(), written, in_flight
        finally:
            await store.close()

    before, after, written, in_flight = asyncio.run(run())
    raced, neighbour, other = before
    assert written == 3 and in_flight == 0
    assert after[other] == before[other] + 1  # written once
    assert after[neighbour] == before[neighbour] + 1  # re-read and written in the same claim
    assert after[raced] == before[raced] + 2  # the batch's write, then the claim's


def test_a_batch_far_ahead_of_the_time_driven_path_waits_for_it(make_settings, monkeypatch) -> None:
    """``PORTRAIT_EVENT_TIME_LEAD_S``: in a backfill the batches ran 130-250 days of event time
    ahead of the time-driven path, and the trainer, which learns a label once that path has passed
    its deadline, left the batches scoring with a model months behind them. A batch whose last
    event is more than the lead past how far that path has evaluated every due user now waits
    until it is not, or until that path has drained up to the latest watermark, or (a stuck path)
    for at most ``LEAD_WAIT_S``. The waits are counted by outcome."""
    orders = "transactions"
    settings = make_settings(clock="event", event_time_lead_s=7 * 86400.0)
    topic = f"{settings.topic_prefix}.{orders}"
    part = f"{topic}/0"

    async def run() -> list[object]:
        store = store_for(settings)
        try:
            metrics = Metrics()
            proc = Processor(settings, load_catalogue(), store, no_dead_letters, metrics)
            waited = lambda outcome: metrics.lead_wait.labels(outcome)._value.get()  # noqa: E731
            seen: list[object] = []

            async def batch(offset: int, day: int) -> asyncio.Task[object]:
                message = Message(topic, 0, offset, b"u", _order(offset, "u", day))
                task = asyncio.create_task(proc.process([message], {part: offset + 1}))
                await asyncio.sleep(0.3)
                return task

            first = await batch(0, 0)  # no drain yet: nothing to wait for (not LEAD_WAIT_S)
            await asyncio.wait_for(first, 5)
            seen.append(first.done())
            mark = await proc.now()  # the watermark moves to day 0
            await proc.drain_due(mark)  # and the time-driven path evaluates up to it
            await proc.process([Message(topic, 0, 1, b"u", _order(1, "u", 5))], {part: 2})  # within the lead
            await proc.now()  # the watermark: day 5, not drained yet
            ahead = await batch(2, 60)
            seen.append(ahead.done())  # waits: 55 days past the drained day 0
            await proc.drain_due(await proc.now())  # drained up to the watermark: nothing to gain
            await asyncio.wait_for(ahead, 5)  # not LEAD_WAIT_S (10 s)
            seen += [ahead.done(), waited("caught_up") > 0.2, waited("timed_out")]
            monkeypatch.setattr("stream.service.processor.LEAD_WAIT_S", 0.5)
            await proc.now()  # the watermark: day 60, never drained: a stuck time-driven path
            stuck = await batch(3, 120)
            seen.append(stuck.done())
            await asyncio.wait_for(stuck, 5)  # goes on after LEAD_WAIT_S
            seen += [stuck.done(), waited("timed_out") >= 0.5]
            return seen
        finally:
            await store.close()

    assert asyncio.run(run()) == [True, False, True, True, 0.0, False, True, True]
