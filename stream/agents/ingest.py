"""The ingest agent: take a batch of raw messages, hand it to the processor, then ack.

The batch comes from the consumer's ``Inbox`` (``Settings.consumer == "batch"``, one fetched
partition batch crosses Faust once: ``stream.kafka.batches``) or from Faust's ``take_events``.

The loop keeps a heartbeat (``IngestState``: running, crashed, batch in flight, last batch per
partition) that readiness reads (``stream.service.health``)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_never, wait_exponential

from stream.core.intake import Message
from stream.kafka.batches import Inbox
from stream.service.health import IngestState, Partition
from stream.service.processor import Processor
from stream.service.retry import FIRST_DELAY_S, MAX_DELAY_S
from stream.settings import Settings

log = logging.getLogger(__name__)


def register_ingest(
    app: Any,
    topic: Any,
    processor: Processor,
    settings: Settings,
    state: IngestState | None = None,
    inbox: Inbox | None = None,
) -> Any:
    """Register the agent consuming every input topic. Returns the agent.

    Without an ``inbox`` the agent iterates ``topic`` through Faust (``take_events``). With one
    (``Settings.consumer == "batch"``) the topic is only subscribed through Faust's conductor and
    the consumer hands its fetched records to the inbox (``stream.kafka.batches``); the agent runs
    on an idle channel so that Faust still supervises (restarts) it."""
    heartbeat = state if state is not None else IngestState()

    async def ingest(stream: Any) -> None:
        heartbeat.started()
        try:
            await (_consume(stream) if inbox is None else _consume_batches(inbox))
        except BaseException as exc:
            # Faust restarts a crashed agent; readiness stays red until the new one finishes a batch
            heartbeat.stopped(None if isinstance(exc, asyncio.CancelledError | GeneratorExit) else exc)
            raise
        heartbeat.stopped()

    async def _consume(stream: Any) -> None:
        # take_events acks a batch only after this loop body returns, so a crash mid-batch means
        # redelivery, which the processor absorbs (per-user applied offsets).
        async for events in stream.take_events(settings.batch_size, within=settings.batch_within):
            m = [e.message for e in events]
            await _apply([Message(e.topic, e.partition, e.offset, e.key, e.value) for e in m])

    async def _consume_batches(inbox: Inbox) -> None:
        # The same contract as take_events: the records' offsets become committable only after
        # the batch is applied or dead-lettered; cancelled (shutdown, rebalance) means redelivery.
        while True:
            batches = await inbox.take(settings.batch_size)
            messages = [Message(r.topic, r.partition, r.offset, r.key, r.value) for b in batches for r in b.records]
            try:
                await _apply(messages, inbox.read_through)  # empty unless in step
            except asyncio.CancelledError:
                inbox.release()
                raise
            except BaseException:
                inbox.done(batches)  # as take_events: a batch that crashed the loop is acked (not retried forever)
                raise
            inbox.done(batches)

    async def _apply(messages: list[Message], read_through: dict[str, float] | None = None) -> None:
        heartbeat.batch_begun()
        try:
            await processor.process(messages, _highwaters(app), read_through)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Faust would ack a batch whose agent raised; park it in the DLQ instead of losing it.
            first, last = messages[0], messages[-1]
            log.exception("bug processing batch %s[%d]@%d..%d", first.topic, first.partition, first.offset, last.offset)
            await park(processor, messages, exc)
        heartbeat.batch_done({(m.topic, m.partition) for m in messages})

    if inbox is None:
        return app.agent(topic, name="portrait-ingest")(ingest)
    app.topics.add(topic)  # Faust subscribes (and rebalances) the input topics; the records go to the inbox
    return app.agent(app.channel(), name="portrait-ingest")(ingest)


async def park(processor: Processor, messages: list[Message], error: BaseException) -> None:
    """Dead-letter a batch the processor could not handle, retrying until the DLQ has it.

    The agent returns (and Faust acks the batch) only after this: a batch is acked applied or
    dead-lettered, never neither, also while the broker refuses the dead letters for a while.
    Same backoff as the store's retries (``stream.service.retry``); cancellation is not retried.
    """

    def failed(attempt: RetryCallState) -> None:
        exc = attempt.outcome.exception() if attempt.outcome is not None else None
        delay = attempt.upcoming_sleep
        log.error("could not dead-letter the batch (%r); retrying in %.1fs, not acked meanwhile", exc, delay)

    retrying = AsyncRetrying(
        retry=retry_if_exception_type(Exception),
        wait=wait_exponential(multiplier=FIRST_DELAY_S, max=MAX_DELAY_S),
        stop=stop_never,
        before_sleep=failed,
        reraise=True,
    )
    await retrying(processor.dead_letter_batch, messages, error)


def assigned_partitions(app: Any) -> set[Partition] | None:
    """Input partitions assigned to this worker's consumer; None when the consumer cannot tell."""
    try:
        return {(tp.topic, tp.partition) for tp in app.consumer.assignment()}
    except Exception:  # no consumer thread yet
        return None


def _highwaters(app: Any) -> dict[str, int | None] | None:
    """High-water marks of the input partitions assigned to this worker, from the consumer's last
    fetches, for the event-time watermark; None when the consumer cannot tell."""
    try:
        consumer = app.consumer
        return {f"{tp.topic}/{tp.partition}": consumer.highwater(tp) for tp in consumer.assignment()}
    except Exception:  # no consumer thread yet or a transport without high-water marks
        return None
