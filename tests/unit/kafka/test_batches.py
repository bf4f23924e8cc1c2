"""Batch delivery (stream/kafka/batches.py, the consumer hooks in stream/kafka/transport.py):
records are handed out in fetch order, committable only once processed, and a revocation
drops what was queued or in flight so the old owner commits nothing of it."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
from faust.transport.consumer import Consumer as FaustConsumer

from stream.kafka.batches import Batch, Inbox
from stream.kafka.transport import Consumer

A0, A1, P0 = ("in.a", 0), ("in.a", 1), ("privacy", 0)


class TP(tuple[str, int]):
    """Stands in for Faust's / aiokafka's TP named tuple (compares and hashes as a tuple)."""

    @property
    def topic(self) -> str:
        return self[0]

    @property
    def partition(self) -> int:
        return self[1]


def records(tp: tuple[str, int], first: int, count: int) -> list[Any]:
    topic, partition = tp
    span = range(first, first + count)
    return [SimpleNamespace(topic=topic, partition=partition, offset=o, key=b"", value=b"") for o in span]


def offsets(batches: list[Batch]) -> list[tuple[tuple[str, int], list[int]]]:
    return [(b.tp, [r.offset for r in b.records]) for b in batches]


def test_take_shares_max_records_between_partitions_and_keeps_the_rest() -> None:
    async def run() -> None:
        inbox = Inbox(["in.a"], bound=100)
        await inbox.put([Batch(A0, records(A0, 10, 4), inbox.epoch)])
        await inbox.put([Batch(A1, records(A1, 0, 2), inbox.epoch)])
        await inbox.put([Batch(A0, records(A0, 14, 2), inbox.epoch)])  # a later fetch of A0
        # one each, then the last place to the first partition in line
        assert offsets(await inbox.take(3)) == [(A0, [10, 11]), (A1, [0])]
        inbox.done([])
        # A0's two fetches are one run of offsets; a partition that runs out leaves its share
        assert offsets(await inbox.take(4)) == [(A0, [12, 13, 14]), (A1, [1])]
        inbox.done([])
        assert offsets(await inbox.take(4)) == [(A0, [15])]

    asyncio.run(run())


def test_offsets_become_committable_only_when_done() -> None:
    async def run() -> None:
        inbox = Inbox(["in.a"], bound=100)
        await inbox.put([Batch(A0, records(A0, 10, 4), inbox.epoch)])
        taken = await inbox.take(10)
        assert inbox.committable == {}
        inbox.done(taken)
        assert inbox.committable == {A0: 14}  # the next offset to read
        assert inbox.pop_committable(A0) == 14 and inbox.pop_committable(A0) is None

    asyncio.run(run())


def test_a_revocation_drops_queued_batches_and_the_ack_in_flight() -> None:
    async def run() -> None:
        inbox = Inbox(["in.a"], bound=100)
        await inbox.put([Batch(A0, records(A0, 0, 2), inbox.epoch)])
        await inbox.put([Batch(A1, records(A1, 0, 2), inbox.epoch)])
        in_flight = await inbox.take(2)
        stale = Batch(A1, records(A1, 2, 2), inbox.epoch)  # fetched before the revocation
        inbox.revoke()
        idle = asyncio.ensure_future(inbox.idle())
        await asyncio.sleep(0)
        assert not idle.done()  # the revocation waits for the batch in flight
        inbox.done(in_flight)
        await idle
        assert inbox.committable == {}  # the old owner commits nothing of it
        await inbox.put([stale])
        await inbox.put([Batch(A0, records(A0, 0, 1), inbox.epoch)])  # refetched after the seek
        assert offsets(await inbox.take(10)) == [(A0, [0])]

    asyncio.run(run())


def test_put_waits_while_the_bound_is_queued() -> None:
    async def run() -> None:
        inbox = Inbox(["in.a"], bound=3)
        await inbox.put([Batch(A0, records(A0, 0, 5), inbox.epoch)])  # one fetch is always let in
        blocked = asyncio.ensure_future(inbox.put([Batch(A1, records(A1, 0, 1), inbox.epoch)]))
        await asyncio.sleep(0)
        assert not blocked.done()
        assert offsets(await inbox.take(3)) == [(A0, [0, 1, 2])]
        await asyncio.wait_for(blocked, 1)  # two left: room again

    asyncio.run(run())


def test_a_fetch_goes_in_whole_and_its_partitions_share_the_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fetch whose first partition alone is more than the bound: every partition of it is
    queued, and the batches taken share them out (one put per partition let A0 fill the bound,
    and A1 waited until A0 was nearly worked off: in event time, one partition months ahead)."""
    a0, a1 = TP(A0), TP(A1)
    fetched = {a0: records(A0, 0, 8), a1: records(A1, 0, 8)}

    async def fetch(self: Any, timeout: float) -> Any:
        return dict(fetched), {a0, a1}

    monkeypatch.setattr(FaustConsumer, "_wait_next_records", fetch)

    async def run() -> None:
        inbox = Inbox(["in.a"], bound=4)
        consumer = _consumer(inbox)
        await asyncio.wait_for(consumer._wait_next_records(1.0), 1)
        assert offsets(await inbox.take(4)) == [(A0, [0, 1]), (A1, [0, 1])]
        assert offsets(await inbox.take(4)) == [(A0, [2, 3]), (A1, [2, 3])]

    asyncio.run(run())


def _consumer(inbox: Inbox) -> Any:
    consumer: Any = Consumer.__new__(Consumer)
    consumer.app = SimpleNamespace(portrait_inbox=inbox, monitor=None)
    consumer._read_offset = defaultdict(lambda: None)
    consumer._buffered_partitions = set()
    consumer._acked = defaultdict(list)
    consumer._acked_index = defaultdict(set)
    consumer._gap = defaultdict(list)
    consumer._committed_offset = defaultdict(lambda: None)
    consumer._stopped, consumer._crashed = asyncio.Event(), asyncio.Event()
    return consumer


def test_the_consumer_moves_input_records_to_the_inbox_and_leaves_the_rest_to_faust(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a0, a1, p0 = TP(A0), TP(A1), TP(P0)
    fetched = {a0: records(A0, 5, 3), p0: records(P0, 0, 1), a1: records(A1, 0, 2)}

    async def fetch(self: Any, timeout: float) -> Any:
        return dict(fetched), {a0, a1, p0}

    monkeypatch.setattr(FaustConsumer, "_wait_next_records", fetch)

    async def run() -> None:
        inbox = Inbox(["in.a"], bound=100)
        consumer = _consumer(inbox)
        consumer._read_offset[a0] = 6  # offset 5 was read before (Faust drops it as stale)
        rest, _ = await consumer._wait_next_records(1.0)
        assert list(rest) == [p0]
        assert offsets(await inbox.take(10)) == [(A0, [6, 7]), (A1, [0, 1])]
        assert consumer._read_offset[a0] == 7 and consumer._read_offset[a1] == 1

    asyncio.run(run())


def test_commits_come_from_the_inbox_for_its_topics_and_from_faust_for_the_others() -> None:
    async def run() -> None:
        inbox = Inbox(["in.a"], bound=100)
        consumer = _consumer(inbox)
        a0, p0 = TP(A0), TP(P0)
        consumer._acked[p0] = [0, 1, 2]  # acked by a Faust stream
        await inbox.put([Batch(a0, records(A0, 0, 4), inbox.epoch)])
        inbox.done(await inbox.take(10))
        assert set(consumer._filter_tps_with_pending_acks()) == {a0, p0}
        assert set(consumer._filter_tps_with_pending_acks({"privacy"})) == {p0}
        assert consumer._new_offset(a0) == 4 and consumer._new_offset(p0) == 3
        assert consumer._new_offset(a0) is None  # nothing new since

    asyncio.run(run())


def test_a_revocation_reaches_the_inbox_before_faust_forgets_the_offsets(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[Any, int]] = []

    async def faust_revoked(self: Any, revoked: set[Any]) -> None:
        seen.append(dict(self.app.portrait_inbox.committable))

    monkeypatch.setattr(FaustConsumer, "on_partitions_revoked", faust_revoked)

    async def run() -> None:
        inbox = Inbox(["in.a"], bound=100)
        consumer = _consumer(inbox)
        await inbox.put([Batch(TP(A0), records(A0, 0, 2), inbox.epoch)])
        inbox.done(await inbox.take(10))
        await consumer.on_partitions_revoked({TP(A0)})
        assert seen == [{}] and inbox.epoch == 1

    asyncio.run(run())


# -- in step by event time (Settings.clock == "event") -------------------------------------------


def timed(tp: tuple[str, int], first: int, times: list[float]) -> list[Any]:
    """Records of ``tp`` from offset ``first`` whose event times are ``times`` (the value is the time)."""
    return [
        SimpleNamespace(topic=tp[0], partition=tp[1], offset=first + i, key=b"", value=t) for i, t in enumerate(times)
    ]


def in_step(bound: int = 100, wait_s: float = 5.0) -> Inbox:
    return Inbox(["in.a"], bound, time_of=lambda record: record.value, align_wait_s=wait_s)


def test_in_step_hands_out_by_event_time_up_to_the_partition_that_is_behind() -> None:
    """A0 is fetched to day 10, A1 (with more to read) only to day 3: nothing of A0 after day 3
    goes out, and the batch is merged by event time; ``read_through`` tells how far each is out."""

    async def run() -> None:
        a0, a1 = TP(A0), TP(A1)
        inbox = in_step()
        await inbox.put([Batch(a0, timed(A0, 0, [1, 2, 4, 5, 7, 10]), 0), Batch(a1, timed(A1, 0, [1, 3]), 0)])
        inbox.note_behind({a1})
        taken = await inbox.take(100)
        assert offsets(taken) == [(a0, [0, 1]), (a1, [0, 1])]
        assert inbox.read_through == {"in.a/0": 4, "in.a/1": 3}
        inbox.done(taken)
        # A1's next fetch: up to day 7, and it is read to its end now
        await inbox.put([Batch(a1, timed(A1, 2, [6, 7]), 0)])
        inbox.note_behind(set())
        taken = await inbox.take(3)  # merged by time: A0's 4 and 5, A1's 6
        assert offsets(taken) == [(a0, [2, 3]), (a1, [2])]
        assert inbox.read_through == {"in.a/0": 7, "in.a/1": 7}

    asyncio.run(run())


def test_in_step_waits_for_a_partition_that_has_nothing_fetched_yet() -> None:
    """A1 is behind with nothing queued: take waits until its fetch comes (which gets in past the
    bound, since take waits for it), then hands out both partitions merged."""

    async def run() -> None:
        a0, a1 = TP(A0), TP(A1)
        inbox = in_step(bound=2)
        inbox.note_behind({a1})
        await inbox.put([Batch(a0, timed(A0, 0, [5, 6, 7]), 0)])
        taking = asyncio.ensure_future(inbox.take(100))
        await asyncio.sleep(0.05)
        assert not taking.done()
        await asyncio.wait_for(inbox.put([Batch(a1, timed(A1, 0, [4, 6]), 0)]), 1)  # not held by the bound
        assert offsets(await asyncio.wait_for(taking, 1)) == [(a1, [0, 1]), (a0, [0, 1])]

    asyncio.run(run())


def test_in_step_hands_out_anyway_once_the_wait_is_over() -> None:
    async def run() -> None:
        a0, a1 = TP(A0), TP(A1)
        inbox = in_step(wait_s=0.1)
        inbox.note_behind({a1})
        await inbox.put([Batch(a0, timed(A0, 0, [5, 6]), 0)])
        assert offsets(await asyncio.wait_for(inbox.take(100), 2)) == [(a0, [0, 1])]
        assert inbox.read_through == {"in.a/0": float("inf"), "in.a/1": float("-inf")}

    asyncio.run(run())


def test_in_step_a_record_without_a_time_goes_with_its_neighbour() -> None:
    async def run() -> None:
        a0, a1 = TP(A0), TP(A1)
        inbox = in_step()
        inbox.note_behind({a0, a1})
        await inbox.put([Batch(a0, timed(A0, 0, [1, None, 9]), 0), Batch(a1, timed(A1, 0, [2, 8]), 0)])
        # A1's last fetched time (8) holds A0's 9 back; A0's unreadable record counts as day 1
        assert offsets(await inbox.take(100)) == [(a0, [0, 1]), (a1, [0, 1])]

    asyncio.run(run())


def test_the_consumer_tells_the_inbox_which_partitions_are_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    """After every fetch, by the fetcher's position against the high-water mark: A0 is read to its
    end, A1 has records after the fetch, A2 is empty, A3's position is not known yet (its offset is
    being reset); the privacy topic is not the inbox's."""
    a0, a1, a2, a3 = TP(A0), TP(A1), TP(("in.a", 2)), TP(("in.a", 3))
    ends = {a0: 3, a1: 10, a2: 0, a3: 5}
    positions = {a0: 3, a1: 2, a2: 0, a3: None}
    fetched = {a0: timed(A0, 0, [1, 2, 3]), a1: timed(A1, 0, [1, 2])}

    async def fetch(self: Any, timeout: float) -> Any:
        return dict(fetched), {a0, a1, a2, a3}

    monkeypatch.setattr(FaustConsumer, "_wait_next_records", fetch)
    monkeypatch.setattr(Consumer, "assignment", lambda self: {a0, a1, a2, a3, TP(P0)})
    monkeypatch.setattr(Consumer, "highwater", lambda self, tp: ends[tp])

    async def run() -> None:
        inbox = in_step()
        consumer = _consumer(inbox)
        consumer.flow_active, consumer._thread = True, SimpleNamespace(fetch_position=positions.get)
        await consumer._wait_next_records(1.0)
        assert inbox._behind == {a1, a3}
        fetched.clear()
        ends[a2], positions[a3] = 4, 5  # new records on A2, nothing fetched; A3 reset to its end
        await consumer._wait_next_records(1.0)
        assert inbox._behind == {a1, a2}

    asyncio.run(run())
