"""Component tier (real Valkey, in-process processor): in wall time the time-driven path gives way
to events (issue 16 goal 4).

A claim of re-evaluations (after an RFM refresh: hundreds of users) used to be planned in one
synchronous stretch and written at once; the events arriving meanwhile waited behind it (~650 ms
measured). Now a wall-time claim is worked in slices of ``WALL_DUE_SLICE`` users, and a slice
waits while a batch of events is being processed.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from stream.contracts.topics import Topics
from stream.core.pipeline import Message
from stream.metrics import Metrics
from stream.service.processor import INGEST_FIRST_S, WALL_DUE_SLICE, Processor
from stream.tagging.definitions import load_catalogue
from tests.integration.helpers import no_dead_letters, store_for

pytestmark = pytest.mark.integration
USERS = 2 * WALL_DUE_SLICE + 5


def _view(topic: str, n: int, user: str) -> Message:
    doc = {"event_id": f"e{n}", "type": "page_view", "user_id": user, "ts": datetime.now(UTC).isoformat()}
    return Message(topic, 0, n, user.encode(), orjson.dumps(doc))


def test_wall_time_re_evaluations_wait_for_the_batch_of_events_and_come_in_slices(make_settings) -> None:
    settings = make_settings(clock="wall")
    clicks = Topics(settings.topic_prefix).clickstream

    async def run() -> tuple[list[int], list[int], int]:
        store = store_for(settings)
        try:
            proc = Processor(settings, load_catalogue(), store, no_dead_letters, Metrics())
            await proc.process([_view(clicks, n, f"u{n}") for n in range(USERS)])
            await store.mark_all_due()  # as an RFM refresh or a catalogue sweep does
            write, gate = store.write, asyncio.Event()
            timed: list[int] = []  # users per time-driven write
            while_ingesting: list[int] = []  # time-driven writes made while the batch of events ran

            async def held(writes: Any, *args: Any) -> Any:
                if any(w.uid == "live" for w in writes):
                    await gate.wait()  # the batch of events is busy (in its write) until released
                else:
                    timed.append(len(writes))
                    if not gate.is_set():
                        while_ingesting.append(len(writes))
                return await write(writes, *args)

            store.write = held  # type: ignore[method-assign]
            ingest = asyncio.create_task(proc.process([_view(clicks, USERS, "live")]))
            await asyncio.sleep(0.05)
            reevaluation = asyncio.create_task(proc.reevaluate_due())
            await asyncio.sleep(INGEST_FIRST_S / 2)
            gate.set()
            await ingest
            return timed, while_ingesting, await reevaluation
        finally:
            await store.close()

    timed, while_ingesting, done = asyncio.run(run())
    assert while_ingesting == []
    assert done == USERS
    assert timed == [WALL_DUE_SLICE, WALL_DUE_SLICE, 5]


def test_a_saturated_worker_leaves_the_rest_of_its_claim_to_the_lease(make_settings) -> None:
    """While events keep the worker busy, each slice waits its full ``INGEST_FIRST_S``; once half
    the claim's lease is spent the rest of the claim is left (its lease expires and the users are
    claimed again), so the time-driven path never works on users whose lease another claim may
    already hold. Nothing is lost: every user is re-evaluated once the events let go."""
    settings = make_settings(clock="wall", due_lease_s=1.0)
    clicks = Topics(settings.topic_prefix).clickstream

    async def run() -> tuple[int, int]:
        store = store_for(settings)
        try:
            proc = Processor(settings, load_catalogue(), store, no_dead_letters, Metrics())
            await proc.process([_view(clicks, n, f"u{n}") for n in range(USERS)])
            await store.mark_all_due()
            write, gate = store.write, asyncio.Event()

            async def held(writes: Any, *args: Any) -> Any:
                if any(w.uid == "live" for w in writes):
                    await gate.wait()
                return await write(writes, *args)

            store.write = held  # type: ignore[method-assign]
            ingest = asyncio.create_task(proc.process([_view(clicks, USERS, "live")]))
            await asyncio.sleep(0.05)
            while_busy = await proc.reevaluate_due()
            gate.set()
            await ingest
            rest, deadline = 0, asyncio.get_running_loop().time() + 30
            while while_busy + rest < USERS and asyncio.get_running_loop().time() < deadline:
                rest += await proc.reevaluate_due()
                await asyncio.sleep(0.2)
            return while_busy, rest
        finally:
            await store.close()

    while_busy, rest = asyncio.run(run())
    assert while_busy == WALL_DUE_SLICE  # one slice, after its full wait; then half the lease was gone
    assert while_busy + rest == USERS
