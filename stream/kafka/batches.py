"""Batch delivery: the fetched records of the input topics reach the ingest agent as batches.

Why: for every fetched record Faust builds a Message and an Event, routes it through the
conductor, a channel queue and a stream iterator (``take_events``' buffer) and acks it one by one:
~110-130 µs of CPU per message here, more than the pipeline's own work. The ingest agent wants
batches anyway, so the consumer (``stream.kafka.transport.Consumer``) takes the records of the
input topics out of each fetch, per partition, and puts them here as one ``Batch``; everything
else (the privacy topic, agents, timers, web, rebalancing, the commit timer) stays Faust's.

Contract (the one ``take_events`` gave the agent):

- **Ack after the work.** ``take`` hands out up to ``max_records`` records (whole partition
  batches or a slice of one, in fetch order); ``done`` marks them processed and only then is
  the next offset of each partition committable. Faust's commit timer commits it
  (``Consumer._new_offset``); a crash before ``done`` means redelivery, which the processor
  absorbs (per-user applied offsets).
- **Rebalances.** A revocation (``revoke``) starts a new epoch: queued batches are dropped and the
  acks of batches handed out in the old epoch are discarded, so the old owner never commits
  records of a partition after it was revoked. Faust's assignment then seeks every assigned
  partition back to its committed offset, so dropped records come again (at-least-once, none
  skipped). Like Faust waits for its streams, the revocation waits for the batch in flight
  (``idle``), so old and new owner do not work on the same records at once.
- **Backpressure.** ``put`` waits while ``bound`` records are queued, then lets the whole fetch in.
- **In step** (event time): records go out merged by event time, none past a partition that has
  not been fetched up to it (``Inbox``).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from stream.core.intake import message_time


@dataclass(frozen=True, slots=True)
class Batch:
    """Consecutive fetched records of one partition (aiokafka ``ConsumerRecord``s: ``topic``,
    ``partition``, ``offset``, ``key``, ``value``), from the consumer epoch they were fetched in."""

    tp: Any  # Faust's / aiokafka's TP: a (topic, partition) named tuple
    records: Sequence[Any]
    epoch: int

    @property
    def next_offset(self) -> int:
        """The offset to commit once this batch is processed."""
        return int(self.records[-1].offset) + 1


TimeOf = Callable[[Any], float | None]  # a record's event time (None: cannot tell)


def record_time(record: Any) -> float | None:
    """A fetched record's event time (``message_time`` of its value): the inbox's ``time_of``
    in event time."""
    value = record.value
    return message_time(value) if isinstance(value, bytes) else None


# How long ``take`` waits for a partition that holds the others back (it has unread records but
# none fetched) before it hands out the others' records anyway: a fetch is a round trip of well
# under this, so only a partition that cannot be fetched (paused, a broker fault) waits it out.
ALIGN_WAIT_S = 2.0


class Inbox:
    """The queue between the consumer's fetch loop and the ingest agent (one event loop, one agent).

    With ``time_of`` (event time: ``Settings.clock == "event"``) ``take`` hands the partitions out
    **in step by event time** instead of sharing records round-robin: a record goes out only once
    every partition that still has unread records (``note_behind``) has been fetched up to its
    time. Why: a fetch brings up to ``consumer_max_fetch_size`` of one partition at a time (about
    100 days of a backfill), so round-robin let one partition run months ahead of another, and
    whatever is decided at an event-time boundary (the RFM thresholds of a period, the users due
    before it) saw one partition's later events and missed another's earlier ones."""

    def __init__(
        self,
        topics: Sequence[str],
        bound: int,
        time_of: TimeOf | None = None,
        align_wait_s: float = ALIGN_WAIT_S,
    ) -> None:
        self.topics = frozenset(topics)
        self.bound = bound
        self.time_of = time_of
        self.align_wait_s = align_wait_s
        self.epoch = 0
        self.committable: dict[Any, int] = {}  # tp -> next offset, read by the commit timer
        self.read_through: dict[str, float] = {}  # in step: "topic/partition" -> see ``take``
        self._queue: dict[Any, deque[Any]] = {}  # tp -> its queued records, in offset order
        self._times: dict[Any, deque[float]] = {}  # in step: tp -> its queued records' event times
        self._handed: dict[Any, float] = {}  # in step: tp -> event time of its last record handed out
        self._behind: set[Any] = set()  # in step: tps with records not fetched yet
        self._queued = 0
        self._stalled = False  # in step: nothing can go out until a held-back partition is fetched
        self._in_flight: list[Batch] = []
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()

    async def put(self, fetch: Sequence[Batch]) -> None:
        """Queue the batches of one fetch (one per partition), once fewer than ``bound`` records
        are queued (or, in step, at once while ``take`` waits for a partition: the fetch may be
        the one it waits for). A fetch goes in whole: one put per partition let the first
        partition's batch fill the bound, and the others waited until it was nearly worked off.
        Batches of an earlier epoch (a revocation came in between) are dropped."""
        while self._queued >= self.bound and not self._stalled:
            self._room.clear()
            await self._room.wait()
        for batch in fetch:
            if batch.epoch != self.epoch or not batch.records:
                continue
            self._queue.setdefault(batch.tp, deque()).extend(batch.records)
            self._queued += len(batch.records)
            if self.time_of is not None:
                times = self._times.setdefault(batch.tp, deque())
                last = times[-1] if times else self._handed.get(batch.tp, -math.inf)
                for record in batch.records:
                    t = self.time_of(record)
                    last = last if t is None else t  # one that cannot tell goes with its neighbour
                    times.append(last)
        self._ready.set()

    def note_behind(self, tps: set[Any]) -> None:
        """In step: the partitions the consumer has not read to their high-water mark yet (the
        ones whose later records may still hold the others back); the consumer tells after
        every fetch."""
        if tps != self._behind:
            self._behind = set(tps)
            self._ready.set()

    async def take(self, max_records: int) -> list[Batch]:
        """Wait for records, then hand out at most ``max_records`` of what is queued (each
        partition's records in offset order; what is left stays queued).

        Round-robin (no ``time_of``): shared between the queued partitions. A user's events sit
        on several topics (clickstream, transactions, ...), and a batch filled from one partition
        would apply its days of events before the other partitions' events of the same days.

        In step (``time_of``): merged by event time, up to the earliest time a partition that is
        behind has been fetched to; ``read_through`` then tells, per partition, the event time
        before which all its records are handed out (``inf``: all of them). Waits for a
        partition that holds everything back at most ``align_wait_s``, then hands out anyway."""
        stalled_at: float | None = None
        while True:
            while not self._queued:
                self._ready.clear()
                await self._ready.wait()
            if self.time_of is None:
                taken = self._take_shared(max_records)
            else:
                waited = stalled_at is not None and time.monotonic() - stalled_at >= self.align_wait_s
                taken = self._take_in_step(max_records, math.inf if waited else self._frontier())
            if taken:
                self._stalled = False
                if self._queued < self.bound:
                    self._room.set()
                self._in_flight = taken
                self._idle.clear()
                return taken
            # in step and held back: wait for a fetch (or news that the partition is read)
            if stalled_at is None:
                stalled_at = time.monotonic()
            self._stalled = True
            self._room.set()
            self._ready.clear()
            left = self.align_wait_s - (time.monotonic() - stalled_at)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), max(left, 0.0))

    def _take_shared(self, max_records: int) -> list[Batch]:
        shares = dict.fromkeys(self._queue, 0)
        room = max_records
        while room > 0:
            open_tps = [tp for tp, records in self._queue.items() if shares[tp] < len(records)]
            if not open_tps:
                break
            share = max(1, room // len(open_tps))
            for tp in open_tps:
                n = min(share, len(self._queue[tp]) - shares[tp], room)
                shares[tp] += n
                room -= n
                if room == 0:
                    break
        return [Batch(tp, self._pop(tp, n), self.epoch) for tp, n in shares.items() if n]

    def _frontier(self) -> float:
        """The event time up to which every partition that is behind has been fetched: its last
        queued record's time (its unread ones are later), or else its last handed out."""
        frontier = math.inf
        for tp in self._behind:
            times = self._times.get(tp)
            frontier = min(frontier, times[-1] if times else self._handed.get(tp, -math.inf))
        return frontier

    def _take_in_step(self, max_records: int, frontier: float) -> list[Batch]:
        heads = [(times[0], i, tp) for i, (tp, times) in enumerate(self._times.items())]
        heapq.heapify(heads)
        counts: dict[Any, int] = {}
        for _ in range(max_records):
            if not heads or heads[0][0] > frontier:
                break
            t, i, tp = heads[0]
            counts[tp] = counts.get(tp, 0) + 1
            self._handed[tp] = t
            times = self._times[tp]
            times.popleft()
            if times:
                heapq.heapreplace(heads, (times[0], i, tp))
            else:
                heapq.heappop(heads)
                del self._times[tp]
        batches = [Batch(tp, self._pop(tp, n), self.epoch) for tp, n in counts.items()]
        if batches:
            self.read_through = {
                f"{tp.topic}/{tp.partition}": self._read_through(tp)
                for tp in {*self._handed, *self._behind, *self._times}
            }
        return batches

    def _read_through(self, tp: Any) -> float:
        times = self._times.get(tp)
        if times:
            return times[0]  # everything before its next queued record is handed out
        return self._handed.get(tp, -math.inf) if tp in self._behind else math.inf

    def _pop(self, tp: Any, n: int) -> list[Any]:
        queue = self._queue[tp]
        records = [queue.popleft() for _ in range(n)]
        if not queue:
            del self._queue[tp]
        self._queued -= n
        return records

    def done(self, batches: Sequence[Batch]) -> None:
        """The batches handed out by ``take`` are processed: their offsets become committable,
        unless a revocation came in between (then they are redelivered)."""
        for batch in batches:
            if batch.epoch == self.epoch:
                offset = batch.next_offset
                if offset > self.committable.get(batch.tp, -1):
                    self.committable[batch.tp] = offset
        self.release()

    def release(self) -> None:
        """Nothing is in flight any more (after ``done``, or without acking on cancellation)."""
        self._in_flight = []
        self._idle.set()

    def revoke(self) -> None:
        """A rebalance began: a new epoch; queued batches and pending acks are dropped."""
        self.epoch += 1
        for state in (self._queue, self._times, self._handed, self.committable, self.read_through):
            state.clear()
        self._behind = set()
        self._queued = 0
        self._stalled = False
        self._room.set()

    async def idle(self) -> None:
        """Return once no batch is in flight."""
        await self._idle.wait()

    def pop_committable(self, tp: Any) -> int | None:
        return self.committable.pop(tp, None)
