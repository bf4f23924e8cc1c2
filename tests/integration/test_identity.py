"""Identity resolution on the real broker + Valkey.

Users browse anonymously (events keyed by their device id, so mostly on another partition than
their user id), log in mid-stream (an event carrying both ids) and keep sending some events with
the device id only. The worker is SIGKILLed once mid-replay. Every profile must equal the offline
recomputation (tests/oracle.py) of an event list in which each accepted device id is replaced by
its user id; a blocked device id and a merge over the per-day limit are refused with reasons.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka.partitioner import DefaultPartitioner
from portrait_dev import synth
from portrait_dev.infra import free_port

from stream.kafka import dlq, replay
from stream.service import privacy
from stream.storage.keys import Keys
from stream.storage.store import Store
from tests.integration.helpers import (
    assert_profiles_match,
    event_time,
    processed_and_settled,
    read_profiles,
    worker,
)

pytestmark = pytest.mark.integration
PARTITIONS = 4


def _partition(key: str) -> int:
    return int(DefaultPartitioner()(key.encode(), list(range(PARTITIONS)), list(range(PARTITIONS))))


def _anonymise(event: dict, device: str) -> None:
    event.pop("user_id", None)
    event["anonymous_id"] = device


def _scenario(events: list[dict]) -> tuple[dict[str, str], dict[str, str], str, str]:
    """Rewrite ``events`` in place. Returns (device -> user for links that must merge,
    device -> user for the refused over-limit link, the blocked-id user, the over-limit user)."""
    acts: dict[str, list[int]] = {}
    for i, e in enumerate(events):
        if e["type"] != "identify":
            acts.setdefault(e["user_id"], []).append(i)
    eligible = sorted(u for u, idx in acts.items() if len(idx) >= 9)
    blocked_user, limit_user, ordinary = eligible[0], eligible[1], eligible[2::3]
    merges: dict[str, str] = {}
    for n, user in enumerate(ordinary):
        idx = acts[user]
        login = len(idx) // 2
        device = f"dev-{user}"
        for i in idx[:login]:
            _anonymise(events[i], device)
        events[idx[login]]["anonymous_id"] = device
        for i in idx[login + 1 :: 3]:  # the device keeps sending without the user id
            _anonymise(events[i], device)
        if n % 4 == 0:  # a second device, linked later
            second = f"tab-{user}"
            events[idx[-1]].update(user_id=user, anonymous_id=second)
            _anonymise(events[idx[-2]], second)
            merges[second] = user
        merges[device] = user
    # a device id that identifies nobody: its events are refused, its link too
    idx = acts[blocked_user]
    for i in idx[:4]:
        _anonymise(events[i], "null")
    events[idx[4]]["anonymous_id"] = "null"
    # three devices linked within a day with a limit of two per day: the third stays anonymous
    idx = acts[limit_user]
    devices = [f"d{k}-{limit_user}" for k in range(3)]
    for k, i in enumerate(idx[:6]):
        _anonymise(events[i], devices[k % 3])
    for k in range(3):
        events[idx[6 + k]]["anonymous_id"] = devices[k]
    span = event_time(events[idx[8]]) - event_time(events[idx[6]])
    assert span < 86400, "the over-limit links must fall within one day"
    merges.update({devices[0]: limit_user, devices[1]: limit_user})
    return merges, {devices[2]: limit_user}, blocked_user, limit_user


def _as_one_user(events: list[dict], merges: dict[str, str]) -> list[dict]:
    """The offline view: merged device ids replaced by their user; blocked-id events dropped."""
    out = []
    for e in events:
        if e.get("user_id") is None and e.get("anonymous_id") == "null":
            continue
        device = e.get("anonymous_id")
        if e.get("user_id") is None and device in merges:
            e = {**e, "user_id": merges[device]}
            del e["anonymous_id"]
        out.append(e)
    return out


async def _state(settings, merges: dict[str, str]) -> tuple[dict[str, int], dict[str, str | None]]:  # type: ignore[no-untyped-def]
    async with Store.open(settings) as store:
        aliases = {d: await store.client.get(store.keys.alias(f"anon:{d}")) for d in merges}
        return await store.stats(), {d: v.decode() if v else None for d, v in aliases.items()}


def test_anonymous_profiles_merge_into_known_users(make_settings, tmp_path: Path) -> None:
    settings = make_settings(
        clock="event",
        web_port=free_port(),
        partitions=PARTITIONS,
        batch_size=100,
        commit_interval_s=3.0,
        identity_max_merges_per_day=2,
    )
    events = synth.generate(users=160, events=6000, seed=43, days=60)
    merges, over_limit, blocked_user, limit_user = _scenario(events)
    crossing = [d for d, u in merges.items() if _partition(d) != _partition(u)]
    assert len(crossing) >= len(merges) // 2, "most links must cross partitions"

    asyncio.run(replay.replay(settings, events, progress=False))
    with worker(settings, tmp_path / "worker.log") as running:
        running.kill_when_processed(len(events) // 2)  # merges in flight are redelivered to the next worker
        blocked_events = sum(1 for e in events if e.get("user_id") is None and e.get("anonymous_id") == "null")
        asyncio.run(processed_and_settled(settings, len(events), counter="messages"))
        actual, now = asyncio.run(read_profiles(settings))
        stats, aliases = asyncio.run(_state(settings, {**merges, **over_limit}))
        letters = asyncio.run(dlq.read(settings, idle_s=1.0))

    assert_profiles_match(_as_one_user(events, merges), actual, now)
    assert aliases == {**merges, **dict.fromkeys(over_limit)}
    assert f"anon:{next(iter(over_limit))}" in actual, "the refused device keeps its own profile"
    assert stats["identity_merged"] == len(merges)
    assert stats["identity_refused_too_many_per_day"] == 1
    assert stats["identity_refused_blocked_id"] == 1
    # dead letters are at least once: a redelivered batch may dead-letter a message again
    refused = {
        (d.source_topic, d.source_partition, d.source_offset) for d in letters if d.reason == "blocked_identifier"
    }
    assert len(refused) == blocked_events
    assert blocked_user in actual and limit_user in actual
    # erasing a user also erases the anonymous ids merged into them
    user = next(u for d, u in merges.items() if d.startswith("tab-"))
    devices = sorted(d for d, u in merges.items() if u == user)
    assert len(devices) == 2
    confirmation = asyncio.run(privacy.erase_and_confirm(settings, user))
    assert {Keys(settings.key_prefix).alias(f"anon:{d}") for d in devices} <= set(confirmation.removed)
    left = asyncio.run(_state(settings, dict.fromkeys(devices, user)))[1]
    assert left == dict.fromkeys(devices)
    assert asyncio.run(_erased(settings, [user, *(f"anon:{d}" for d in devices)])) == 3


async def _erased(settings, subjects: list[str]) -> int:  # type: ignore[no-untyped-def]
    async with Store.open(settings) as store:
        return len(await store.erased(subjects))
