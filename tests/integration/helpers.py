"""Shared helpers for integration tests: run workers, replay, compare with the oracle."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
from collections.abc import Iterator
from pathlib import Path

from portrait_dev.harness import settle, start_worker, stop_worker, wait_healthy, wait_processed

from stream.models import MODEL_TAGS
from stream.settings import Settings
from stream.storage.keys import Keys
from stream.storage.store import Store
from tests import oracle


def store_for(settings: Settings) -> Store:
    return Store.from_url(settings.resolved_redis_url(), Keys(settings.key_prefix))


@contextlib.contextmanager
def worker(settings: Settings, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = start_worker(settings, log)
    try:
        wait_healthy(settings, proc)
        yield proc
    except BaseException:
        print(log.read_text()[-5000:] if log.exists() else "(no worker log)")
        raise
    finally:
        stop_worker(proc)


async def processed_and_settled(
    settings: Settings, messages: int, timeout: float = 240, counter: str = "messages"
) -> None:
    store = store_for(settings)
    try:
        await wait_processed(store, messages, timeout=timeout, counter=counter)
        await settle(store, event_clock=settings.clock == "event")
    finally:
        await store.close()


async def read_profiles(settings: Settings, uids: set[str]) -> tuple[dict[str, dict[str, str]], float]:
    """Every stored profile (public tags only) and the event-time clock."""
    store = store_for(settings)
    try:
        found: dict[str, dict[str, str]] = {}
        base = store.keys.base
        async for key in store.client.scan_iter(match=f"{base}:*:profile", count=1000):
            name = key.decode()
            uid = name[len(base) + 2 : -len("}:profile")]
            profile = await store.profile(uid)
            # model outputs are not tags of docs/tags.md: the tag oracle does not compute them
            found[uid] = {k: v for k, v in profile.items() if not k.startswith("_") and k not in MODEL_TAGS}
        clock = await store.clock()
        assert clock is not None
        return found, clock
    finally:
        await store.close()


def assert_profiles_match(events: list[dict], actual: dict[str, dict[str, str]], now: float) -> None:
    """Exact equality with the independent offline computation (float near-ties aside)."""
    expected = oracle.compute_profiles(events, now)
    missing, extra = sorted(set(expected) - set(actual)), sorted(set(actual) - set(expected))
    assert not missing and not extra, f"users differ: missing {missing[:5]}, extra {extra[:5]}"
    mismatches = []
    for uid, want in expected.items():
        got = actual[uid]
        if got == want:
            continue
        diff = {k: (got.get(k), want.get(k)) for k in set(got) | set(want) if got.get(k) != want.get(k)}
        if set(diff) == {"top_categories"} and _near_tie(events, now, uid):
            continue
        mismatches.append((uid, diff))
    assert not mismatches, f"{len(mismatches)} of {len(expected)} profiles differ, e.g. {mismatches[:3]}"


def _near_tie(events: list[dict], now: float, uid: str) -> bool:
    scores = sorted(oracle.top_category_scores(events, now, uid).values(), reverse=True)
    return any(abs(a - b) <= 1e-9 * max(abs(a), 1.0) for a, b in itertools.pairwise(scores))


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]
