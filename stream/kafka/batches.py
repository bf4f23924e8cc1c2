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
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


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


class Inbox:
    """The queue between the consumer's fetch loop and the ingest agent (one event loop, one agent)."""

    def __init__(self, topics: Sequence[str], bound: int) -> None:
        self.topics = frozenset(topics)
        self.bound = bound
        self.epoch = 0
        self.committable: dict[Any, int] = {}  # tp -> next offset, read by the commit timer
        self._queue: deque[Batch] = deque()
        self._queued = 0
        self._in_flight: list[Batch] = []
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()

    async def put(self, fetch: Sequence[Batch]) -> None:
        """Queue the batches of one fetch (one per partition), once fewer than ``bound`` records
        are queued. A fetch goes in whole: one put per partition let the first partition's batch
        fill the bound, and the others waited until it was nearly worked off, so in event time one
        partition ran months ahead of the rest (the watermark, and every change point the
        time-driven path evaluates, held back) instead of ``take`` sharing them out."""
        while self._queued >= self.bound:
            self._room.clear()
            await self._room.wait()
        for batch in fetch:
            self._queue.append(batch)
            self._queued += len(batch.records)
        self._ready.set()

    async def take(self, max_records: int) -> list[Batch]:
        """Wait for records, then hand out at most ``max_records`` of what is queued, shared
        round-robin between the queued partitions (each partition's records in offset order; what
        is left stays queued). Stale batches are skipped.

        Sharing matters in event time: a user's events sit on several topics (clickstream,
        transactions, ...), and a batch filled from one partition would apply its days of events
        before the other partitions' events of the same days, closing exposures (conversions)
        and deciding rules in another order than live processing. Faust's own delivery
        round-robins between partitions too; the processor orders a batch by event time."""
        while True:
            while not self._queue:
                self._ready.clear()
                await self._ready.wait()
            queued: dict[Any, list[Any]] = {}  # tp -> its records, in offset order
            for batch in self._queue:
                if batch.epoch == self.epoch:
                    queued.setdefault(batch.tp, []).extend(batch.records)
            self._queue.clear()
            shares = dict.fromkeys(queued, 0)
            room = max_records
            while room > 0:
                open_tps = [tp for tp, records in queued.items() if shares[tp] < len(records)]
                if not open_tps:
                    break
                share = max(1, room // len(open_tps))
                for tp in open_tps:
                    n = min(share, len(queued[tp]) - shares[tp], room)
                    shares[tp] += n
                    room -= n
                    if room == 0:
                        break
            taken = [Batch(tp, queued[tp][:n], self.epoch) for tp, n in shares.items() if n]
            rest = [Batch(tp, queued[tp][n:], self.epoch) for tp, n in shares.items() if n < len(queued[tp])]
            self._queue.extend(rest)
            self._queued = sum(len(b.records) for b in rest)
            if self._queued < self.bound:
                self._room.set()
            if taken:
                self._in_flight = taken
                self._idle.clear()
                return taken

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
        self._queue.clear()
        self._queued = 0
        self.committable.clear()
        self._room.set()

    async def idle(self) -> None:
        """Return once no batch is in flight."""
        await self._idle.wait()

    def pop_committable(self, tp: Any) -> int | None:
        return self.committable.pop(tp, None)
