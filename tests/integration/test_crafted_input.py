"""Issue 12 regressions (real Valkey, in-process processor): one crafted message costs only itself.

* ``amount: 1e20`` passed validation and then broke encoding the state of the whole batch (31
  events dead-lettered as processing_error): it is now a schema violation of that event alone.
* ``user_id: "anon:dev2"`` wrote into device dev2's anonymous profile: user ids may not use the
  reserved ``anon:`` namespace, so the device's profile is untouched.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest

from stream.contracts.deadletter import DeadLetter
from stream.core.pipeline import Message
from stream.metrics import Metrics
from stream.service.processor import Processor
from stream.tagging.definitions import load_catalogue
from tests.integration.helpers import store_for

pytestmark = pytest.mark.integration
TS = "2026-11-01T10:00:00+00:00"


def _message(offset: int, event: dict[str, object]) -> Message:
    key = str(event.get("user_id") or event.get("anonymous_id")).encode()
    return Message("t.transactions", 0, offset, key, orjson.dumps(event))


def test_crafted_values_dead_letter_only_themselves(make_settings) -> None:
    settings = make_settings(clock="event")
    events: list[dict[str, object]] = [
        {"event_id": "dev", "type": "page_view", "anonymous_id": "dev2", "ts": TS},
    ]
    events += [
        {"event_id": f"o{i}", "type": "order_paid", "user_id": f"u{i % 10}", "ts": TS, "order_id": f"o{i}", "amount": 5}
        for i in range(30)
    ]
    huge = {"event_id": "big", "type": "order_paid", "user_id": "u1", "ts": TS, "order_id": "big", "amount": 1e20}
    squatter = {"event_id": "sq", "type": "page_view", "user_id": "anon:dev2", "ts": TS}
    batch = [_message(i, e) for i, e in enumerate([*events[:15], huge, squatter, *events[15:]])]
    letters: list[DeadLetter] = []

    async def collect(found: list[DeadLetter]) -> None:
        letters.extend(found)

    async def run() -> tuple[int, list[dict[str, str]], dict[str, str]]:
        store = store_for(settings)
        try:
            proc = Processor(settings, load_catalogue(), store, collect, Metrics())
            report = await proc.process(batch)
            users = [await store.profile(f"u{i}") for i in range(10)]
            return report.applied, users, await store.profile("anon:dev2")
        finally:
            await store.close()

    applied, users, device = asyncio.run(run())
    assert sorted((d.reason, d.source_offset) for d in letters) == [("schema_violation", 15), ("schema_violation", 16)]
    assert "reserved prefix" in next(d.error for d in letters if d.source_offset == 16)
    assert applied == 31
    assert [u["frequency_30d"] for u in users] == ["3"] * 10
    assert [u["monetary_30d"] for u in users] == ["15.00"] * 10
    assert device["events_7d"] == "1"  # the device's own page view only
