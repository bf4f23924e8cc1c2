"""Faust aiokafka transport: a settable fetch wait and batch delivery of the input topics.

- faust-streaming hard-codes ``fetch_max_wait_ms=1500``; on a quiet partition set that leaves the
  worker idle for most of each fetch (measured: ~6.6k vs ~9.2k events/s no-op on Tansu). The
  value comes from ``Settings.consumer_fetch_max_wait_ms`` via the app attribute set in
  ``stream.app.faust_app``.
- With an ``Inbox`` on the app (``app.portrait_inbox``, ``Settings.consumer == "batch"``) the
  records of the inbox's topics are taken out of each fetch and put there as one ``Batch`` per
  partition, before Faust's per-message path (``Consumer.getmany``: a Message and an Event per
  record, conductor, channel queue, stream, per-message acks) sees them; their commits come from
  ``Inbox.committable`` through Faust's own commit timer. The contract is in
  ``stream.kafka.batches``. In event time the consumer tells the inbox after every fetch which
  partitions it has not read to their end (``Inbox.note_behind``), for the inbox to hand the
  partitions out in step.

Selected with the ``portrait-kafka://`` broker scheme.
"""

from __future__ import annotations

from collections.abc import Iterator
from time import monotonic
from typing import Any, cast

from aiokafka.structs import TopicPartition
from faust.transport import drivers
from faust.transport.drivers import aiokafka as faust_aiokafka

from stream.kafka.batches import Batch, Inbox

SCHEME = "portrait-kafka"
DEFAULT_FETCH_MAX_WAIT_MS = 1500


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = getattr(self.app, "portrait_fetch_max_wait_ms", DEFAULT_FETCH_MAX_WAIT_MS)
        return consumer

    def fetch_position(self, tp: Any) -> int | None:
        """The offset after what the fetcher has handed out of ``tp``, past any control records
        (None: not known yet, e.g. while its offset is being reset). Read from the fetcher's
        assignment state as Faust's own livelock check reads it; aiokafka's ``position`` is a
        coroutine on the consumer's thread."""
        try:
            assignment = self._ensure_consumer()._fetcher._subscriptions.subscription.assignment
            state = assignment.state_value(TopicPartition(tp.topic, tp.partition))
        except Exception:  # no consumer or no assignment yet
            return None
        return int(state.position) if state is not None and state.has_valid_position else None


class Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    @property
    def inbox(self) -> Inbox | None:
        return getattr(self.app, "portrait_inbox", None)

    async def _wait_next_records(self, timeout: float) -> Any:
        # Faust's fetch step (called by its getmany): the inbox's records leave here, the rest
        # (other topics) goes on to Faust's per-message path.
        records, active = await super()._wait_next_records(timeout)
        inbox = self.inbox
        if inbox is None or not records or not self.flow_active or self.should_stop:
            if inbox is not None and inbox.time_of is not None and self.flow_active:
                inbox.note_behind(self._behind(inbox))
            return records, active  # flow stopped: Faust's getmany drops them and seeks back
        rest: dict[Any, Any] = {}
        fetch: list[Batch] = []
        epoch = inbox.epoch
        monitor = self.app.monitor
        for tp, fetched in records.items():
            if tp.topic not in inbox.topics:
                rest[tp] = fetched
                continue
            if inbox.epoch != epoch:
                continue  # a revocation began: Faust's assignment seeks back to the committed offsets
            if active is not None and tp not in active and tp not in self._buffered_partitions:
                continue  # paused, as Faust's getmany skips it
            fresh = _from_offset(fetched, self._read_offset[tp])
            if not fresh:
                continue
            self._read_offset[tp] = fresh[-1].offset
            if monitor is not None:  # what Faust's per-message path feeds its livelock detector
                monitor.stream_inbound_time[tp] = monotonic()
                monitor.track_tp_end_offset(tp, self.highwater(tp))
            fetch.append(Batch(tp, fresh, epoch))
        if fetch:
            await inbox.put(fetch)  # every partition of the fetch at once, for ``take`` to share out
        if inbox.time_of is not None and inbox.epoch == epoch:
            inbox.note_behind(self._behind(inbox))
        return rest, active

    def _behind(self, inbox: Inbox) -> set[Any]:
        """The inbox's assigned partitions with records not fetched yet: the fetcher's position
        is short of the high-water mark of its last fetch. Unknown counts as behind (the inbox
        waits for such a partition only ``align_wait_s``)."""
        behind = set()
        thread = cast(ConsumerThread, self._thread)
        for tp in self.assignment():
            if tp.topic not in inbox.topics:
                continue
            end, position = self.highwater(tp), thread.fetch_position(tp)
            if end is None or position is None or position < end:
                behind.add(tp)
        return behind

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:
        inbox = self.inbox
        if inbox is not None:
            inbox.revoke()  # before Faust forgets the partitions' offsets
        await super().on_partitions_revoked(revoked)

    async def wait_empty(self) -> None:
        # Faust waits for the events its streams are processing (on a revocation, and on stop
        # before the last commit); the batch in flight counts too
        inbox = self.inbox
        if inbox is not None and not self.should_stop:
            await self.wait(inbox.idle())
        await super().wait_empty()

    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Iterator[Any]:
        tps = list(super()._filter_tps_with_pending_acks(topics))
        inbox = self.inbox
        if inbox is not None:
            tps.extend(
                tp
                for tp in inbox.committable
                if tp not in tps and (topics is None or tp in topics or tp.topic in topics)
            )
        return iter(tps)

    def _new_offset(self, tp: Any) -> int | None:
        inbox = self.inbox
        if inbox is not None and tp.topic in inbox.topics:
            return inbox.pop_committable(tp)
        result: int | None = super()._new_offset(tp)
        return result


def _from_offset(records: list[Any], read_offset: int | None) -> list[Any]:
    """The records at or after the consumer's read offset (Faust drops older ones as stale)."""
    if read_offset is None or not records or records[0].offset >= read_offset:
        return records
    return [r for r in records if r.offset >= read_offset]


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer


drivers.TRANSPORTS.aliases.setdefault(SCHEME, f"{__name__}:Transport")


def faust_broker_url(bootstrap: str) -> str:
    """``host:port,host:port`` → the broker URL Faust needs for this transport."""
    return ";".join(f"{SCHEME}://{hp}" for hp in bootstrap.split(","))
