"""Erasure on the real broker + Valkey: every key goes, late events are refused, no trigger follows."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from portrait_dev import synth

from stream.contracts.topics import Topics
from stream.kafka import dlq
from stream.service import privacy
from stream.settings import Settings
from stream.storage.keys import erased_token
from stream.storage.store import Store
from tests.integration.helpers import (
    event_time,
    producer,
    read_topics,
    replay_and_settle,
    worker,
)
from tests.integration.triggers import read_triggers

pytestmark = pytest.mark.integration
WELCOME = """
version: 1
rules:
  - id: welcome
    version: 1
    when: {tag: events_30d, crosses_above: 0}
    action: {type: coupon, params: {campaign: welcome, value: 3.0}}
    cooldown: 365d
"""


async def _request_erasures(settings: Settings, users: list[str]) -> None:
    topic = Topics(settings.topic_prefix).erase_requests
    async with producer(settings) as kafka:
        await kafka.send_and_wait(topic, b"{not json", key=b"junk")
        for uid in users:
            request = {"user_id": uid, "request_id": f"req-{uid}"}
            await kafka.send_and_wait(topic, orjson.dumps(request), key=uid.encode())


async def _confirmations(settings: Settings, expected: int) -> list[dict]:
    topic = Topics(settings.topic_prefix).erase_confirmations
    return (await read_topics(settings, [topic], idle_s=0.5, at_least=expected)).get(topic, [])


async def _traces(settings: Settings, uid: str) -> list[str]:
    """Every key whose name holds ``uid`` and every set / sorted set that has it as a member."""
    async with Store.open(settings) as store:
        found = []
        async for raw in store.client.scan_iter(match=f"{settings.key_prefix}:*", count=1000):
            key = raw.decode()
            if uid in key:
                found.append(key)
                continue
            kind = (await store.client.type(raw)).decode()
            if (kind == "set" and await store.client.sismember(raw, uid)) or (
                kind == "zset" and await store.client.zscore(raw, uid) is not None
            ):
                found.append(f"{key} (member)")
        return found


def test_erase_a_user_mid_replay(make_settings, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(WELCOME)
    settings = make_settings(clock="event", rules_file=rules, delivery_horizon_s=0)
    events = synth.generate(users=120, events=4000, seed=31, days=60)
    half = len(events) // 2
    split = event_time(events[half])
    by_user: dict[str, list[int]] = {}
    for i, e in enumerate(events):
        by_user.setdefault(e["user_id"], []).append(i)
    # A: active on both sides of the erasure; B: first seen after it (the welcome rule would fire)
    both = [u for u, idx in by_user.items() if idx[0] < half <= idx[-1]]
    a = max(both, key=lambda u: sum(1 for i in by_user[u] if i >= half))
    b = next(u for u, idx in by_user.items() if idx[0] >= half)
    late = sum(1 for u in (a, b) for i in by_user[u] if i >= half)

    with worker(settings, tmp_path / "worker.log"):
        replay_and_settle(settings, events[:half])
        before = asyncio.run(privacy.export_json(settings, a))
        assert before["profile"] and before["audiences"] and before["state"] and not before["erased"]
        assert asyncio.run(_traces(settings, a)), "the user has keys before the erasure"

        asyncio.run(_request_erasures(settings, [a, b]))
        confirmations = asyncio.run(_confirmations(settings, 2))
        assert {(c["user_id"], c["request_id"]) for c in confirmations} == {(a, f"req-{a}"), (b, f"req-{b}")}
        removed = {c["user_id"]: c["removed"] for c in confirmations}
        assert removed[b] == [] and any(":profile:" in k for k in removed[a])
        assert asyncio.run(_traces(settings, a)) == []

        replay_and_settle(settings, events[half:])
        assert asyncio.run(_traces(settings, a)) == [] and asyncio.run(_traces(settings, b)) == []
        letters = asyncio.run(dlq.read(settings, idle_s=1.0))
        triggers = asyncio.run(read_triggers(settings, idle_s=1.0)).get("triggers.coupon", [])

    erased = [d for d in letters if d.reason == "erased_user"]
    assert len(erased) == late
    assert {d.error.split("token ")[1].split(")")[0] for d in erased} == {erased_token(a), erased_token(b)}
    assert all(d.original == b"" and d.key is None for d in erased), "an erased user's data is not kept"
    assert [d.reason for d in letters if d.source_topic.endswith("privacy.erase")] == ["invalid_json"]
    fired = {t["user_id"]: t["event_time"] for t in triggers}
    assert b not in fired
    assert all(t["event_time"] < split for t in triggers if t["user_id"] == a)
    newcomers = {u for u, idx in by_user.items() if idx[0] >= half and u != b}
    assert newcomers and newcomers <= set(fired), "the rule still fires for everyone else"
    after = asyncio.run(privacy.export_json(settings, a))
    assert after["erased"] and after["profile"] == {} and after["state"] is None


def test_cli_erase_is_idempotent_and_confirmed(make_settings) -> None:
    settings = make_settings()
    first = asyncio.run(privacy.erase_and_confirm(settings, "u-none", "r1"))
    again = asyncio.run(privacy.erase_and_confirm(settings, "u-none", "r2"))
    assert first.removed == [] and again.removed == []
    assert first.suppression_token == again.suppression_token == erased_token("u-none")
    assert [c["request_id"] for c in asyncio.run(_confirmations(settings, 2))] == ["r1", "r2"]
