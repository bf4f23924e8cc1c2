"""A merge across state shards interrupted by a crash (real Valkey, in-process processor).

A merge whose anonymous subject is in another shard than its user is written in three steps:
fence the anonymous subject (its alias), write the user, delete the anonymous state. A worker that
dies after the fence leaves the alias pointing at the user while the anonymous state, with the
events it applied, is still there. The next worker redelivers those events; they now resolve to
the user through the alias. Applying them to the user and then, when the link is redelivered,
folding the anonymous state in as well counted them twice (CI, test_identity: an order and a page
view counted twice after the SIGKILL). The events must count once.

Expected values are counted by hand from the messages.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from stream.core.pipeline import Message
from stream.metrics import Metrics
from stream.service.processor import Processor
from stream.storage.store import Store
from stream.tagging.definitions import load_catalogue
from tests.integration.helpers import no_dead_letters, store_for

pytestmark = pytest.mark.integration
START = datetime(2026, 1, 5, 12, tzinfo=UTC)


class Crash(Exception):
    """The worker process dies (SIGKILL) at this point."""


def _view(n: int, day: float, **ids: str) -> bytes:
    ts = (START + timedelta(days=day)).isoformat()
    return orjson.dumps({"event_id": f"e{n}", "type": "page_view", "ts": ts, "page": "/p", **ids})


def _crash_after_the_fence(store: Store) -> None:
    """The next write fences its remote merges, then the process dies before any shard is written."""
    write_shards = store._write_shards

    async def die(*args: Any) -> list[str]:
        store._write_shards = write_shards  # type: ignore[method-assign]
        raise Crash

    store._write_shards = die  # type: ignore[method-assign]


def test_events_of_a_fenced_anonymous_profile_redelivered_after_a_crash_count_once(make_settings) -> None:
    settings = make_settings(clock="event")
    clicks = f"{settings.topic_prefix}.clickstream"

    async def run() -> tuple[dict[str, str], str | None]:
        store = store_for(settings)
        try:
            user = "u1"
            device = next(f"dev{n}" for n in range(100) if store.keys.shard(f"anon:dev{n}") != store.keys.shard(user))
            anonymous = [Message(clicks, 0, 0, device.encode(), _view(0, 0, anonymous_id=device))]
            link = [Message(clicks, 1, 0, user.encode(), _view(1, 0.5, user_id=user, anonymous_id=device))]
            ends = {f"{clicks}/0": 1, f"{clicks}/1": 1}
            first = Processor(settings, load_catalogue(), store, no_dead_letters, Metrics())
            await first.process(anonymous, ends)  # written; its offset not committed yet
            _crash_after_the_fence(store)
            with pytest.raises(Crash):
                await first.process(link, ends)
            # the next worker: both partitions come again from their committed offsets
            second = Processor(settings, load_catalogue(), store, no_dead_letters, Metrics())
            await second.process(anonymous, ends)
            await second.process(link, ends)
            alias = await store.client.get(store.keys.alias(f"anon:{device}"))
            return await store.profile(user), alias.decode() if alias else None
        finally:
            await store.close()

    profile, alias = asyncio.run(run())
    assert alias == "u1"
    assert profile["events_30d"] == "2"  # the anonymous page view and the link


def test_a_merge_over_the_daily_limit_is_refused_when_the_earlier_merges_were_fenced_before_a_crash(
    make_settings,
) -> None:
    """Two links within a day are fenced, then the worker dies. The next worker gets them again with
    a third link of the same day: with a limit of two merges per day the third is refused. It was
    accepted when the new link was decided before the fenced merges were completed."""
    settings = make_settings(clock="event", identity_max_merges_per_day=2)
    clicks = f"{settings.topic_prefix}.clickstream"

    async def run() -> tuple[dict[str, str | None], dict[str, int]]:
        store = store_for(settings)
        try:
            user = "u1"
            remote = [f"dev{n}" for n in range(100) if store.keys.shard(f"anon:dev{n}") != store.keys.shard(user)]
            devices = remote[:3]
            links = [
                Message(clicks, 1, n, user.encode(), _view(n, 0.1 * (n + 1), user_id=user, anonymous_id=d))
                for n, d in enumerate(devices)
            ]
            ends = {f"{clicks}/1": 3}
            first = Processor(settings, load_catalogue(), store, no_dead_letters, Metrics())
            _crash_after_the_fence(store)
            with pytest.raises(Crash):
                await first.process(links[:2], ends)
            second = Processor(settings, load_catalogue(), store, no_dead_letters, Metrics())
            await second.process(links, ends)
            aliases = {}
            for d in devices:
                alias = await store.client.get(store.keys.alias(f"anon:{d}"))
                aliases[d] = alias.decode() if alias else None
            return aliases, await store.stats()
        finally:
            await store.close()

    aliases, stats = asyncio.run(run())
    assert list(aliases.values()) == ["u1", "u1", None]
    assert stats["identity_merged"] == 2 and stats["identity_refused_too_many_per_day"] == 1
