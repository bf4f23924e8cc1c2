"""Component tier (real Valkey, in-process processor): a bug isolates one user into the DLQ."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from stream.contracts.deadletter import DeadLetter
from stream.core.pipeline import Message
from stream.metrics import Metrics
from stream.service import processor as processor_module
from stream.service.processor import Processor
from stream.tagging.definitions import load_catalogue
from tests.integration.helpers import store_for

pytestmark = pytest.mark.integration


def _message(offset: int, user: str) -> Message:
    event = {"event_id": f"e{offset}", "type": "page_view", "user_id": user, "ts": "2026-11-01T10:00:00+00:00"}
    return Message("t.clickstream", 0, offset, user.encode(), orjson.dumps(event))


def test_a_bug_for_one_user_dead_letters_only_that_users_events(make_settings, monkeypatch) -> None:
    settings = make_settings(clock="event")
    real_apply = processor_module.apply_event

    def buggy_apply(state, event, *args):  # type: ignore[no-untyped-def]
        if event.user_id == "u-bad":
            raise ZeroDivisionError("simulated bug")
        return real_apply(state, event, *args)

    monkeypatch.setattr(processor_module, "apply_event", buggy_apply)
    letters: list[DeadLetter] = []

    async def collect(batch: list[DeadLetter]) -> None:
        letters.extend(batch)

    async def run() -> tuple[dict[str, str], dict[str, str], dict[str, int]]:
        store = store_for(settings)
        try:
            proc = Processor(settings, load_catalogue(), store, collect, Metrics())
            batch = [_message(0, "u-good"), _message(1, "u-bad"), _message(2, "u-good"), _message(3, "u-bad")]
            report = await proc.process(batch)
            assert report.applied == 2
            return await store.profile("u-good"), await store.profile("u-bad"), await store.stats()
        finally:
            await store.close()

    good, bad, stats = asyncio.run(run())
    assert good["events_7d"] == "2"
    assert bad == {}
    assert [(d.reason, d.source_offset) for d in letters] == [("processing_error", 1), ("processing_error", 3)]
    assert "simulated bug" in letters[0].error
    assert stats["events_applied"] == 2 and stats["dlq_processing_error"] == 2
