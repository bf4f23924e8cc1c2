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


@pytest.mark.both_stores
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


def _run_batch(settings, batch: list[Message], store_wrapper=None) -> tuple[list[DeadLetter], int, dict]:
    letters: list[DeadLetter] = []

    async def collect(found: list[DeadLetter]) -> None:
        letters.extend(found)

    async def run() -> tuple[int, dict]:
        store = store_for(settings)
        try:
            if store_wrapper is not None:
                store_wrapper(store)
            report = await Processor(settings, load_catalogue(), store, collect, Metrics()).process(batch)
            return report.applied, {u: await store.profile(u) for u in ("u0", "u1", "u2")}
        finally:
            await store.close()

    applied, profiles = asyncio.run(run())
    return letters, applied, profiles


def _views(users: list[str]) -> list[Message]:
    events = [{"event_id": f"v{i}", "type": "page_view", "user_id": u, "ts": TS} for i, u in enumerate(users)]
    return [_message(i, e) for i, e in enumerate(events)]


@pytest.mark.both_stores
def test_a_conflict_storm_on_one_user_dead_letters_only_that_user(make_settings) -> None:
    """A competing writer bumps u1's version before every write of this worker (a stuck rebalance
    twin, or a bug): u1's events go to the DLQ after a few attempts, u0 and u2 are written."""
    settings = make_settings(clock="event")

    def racing(store) -> None:  # type: ignore[no-untyped-def]
        write = store.write

        async def write_after_a_rival(writes, *args):  # type: ignore[no-untyped-def]
            await store.client.hincrby(store.keys.state("u1"), "ver", 1)
            return await write(writes, *args)

        store.write = write_after_a_rival

    letters, applied, profiles = _run_batch(settings, _views(["u0", "u1", "u2", "u1"]), racing)
    assert sorted((d.reason, d.source_offset) for d in letters) == [("processing_error", 1), ("processing_error", 3)]
    assert "write conflict" in letters[0].error
    assert applied == 2 and profiles["u0"]["events_7d"] == "1" and profiles["u2"]["events_7d"] == "1"


def test_a_state_that_cannot_be_encoded_breaks_only_its_user(make_settings, monkeypatch) -> None:
    """Encoding the state happens inside the per-user isolation of the batch plan."""
    from stream.tagging.state import UserState

    settings = make_settings(clock="event")
    real = UserState.to_bytes

    def to_bytes(self):  # type: ignore[no-untyped-def]
        if "v1" in self.recent_ids:  # u1's one event
            raise OverflowError("Integer exceeds 64-bit range")
        return real(self)

    monkeypatch.setattr(UserState, "to_bytes", to_bytes)
    letters, _, profiles = _run_batch(settings, _views(["u0", "u1", "u2"]))
    assert [(d.reason, d.source_offset) for d in letters] == [("processing_error", 1)]
    assert profiles["u0"]["events_7d"] == "1" and profiles["u2"]["events_7d"] == "1" and profiles["u1"] == {}
