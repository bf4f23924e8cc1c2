"""Shared helpers for integration tests: run (and kill) workers, produce, wait, read the store,
compare with the oracle."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from portrait_dev.harness import outbox_drained, settle, start_worker, stop_worker, wait_healthy, wait_processed

from stream.contracts.deadletter import DeadLetter
from stream.kafka import replay
from stream.models import MODEL_TAGS
from stream.settings import Settings
from stream.storage.store import Store
from tests import oracle


async def no_dead_letters(letters: list[DeadLetter]) -> None:
    """A processor's dead-letter sink for tests whose input is all valid."""
    raise AssertionError(f"unexpected dead letters: {letters}")


def store_for(settings: Settings) -> Store:
    """A store on the settings' Redis (standalone or cluster) with the configured layout; a test
    that needs the layout a worker recorded calls ``adopt_layout`` (``Store.open`` does)."""
    return Store.from_settings(settings)


@contextlib.asynccontextmanager
async def producer(settings: Settings, **config: Any) -> AsyncIterator[AIOKafkaProducer]:
    """A started producer on the test's broker (``config``: aiokafka options), flushed and stopped
    on exit."""
    kafka = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers(), **config)
    await kafka.start()
    try:
        yield kafka
        await kafka.flush()
    finally:
        await kafka.stop()


async def send_raw(settings: Settings, messages: list[tuple[str, bytes, bytes | None]]) -> None:
    """Produce raw ``(topic, value, key)`` messages in order, up to 2 MB each (oversized tests)."""
    async with producer(settings, acks="all", linger_ms=5, max_request_size=2 * 1024 * 1024) as kafka:
        await asyncio.gather(*[await kafka.send(topic, value, key=key) for topic, value, key in messages])


async def flush_store(settings: Settings) -> None:
    """What a Redis that came back empty looks like: every key gone (FLUSHDB)."""
    async with Store.open(settings) as store:
        await store.client.flushdb()


async def read_topics(
    settings: Settings, names: list[str], idle_s: float = 3.0, at_least: int = 0, timeout: float = 60.0
) -> dict[str, list[dict]]:
    """Every message (JSON) on the topics ``names`` from their beginning, duplicates included, by
    topic: read until none came for ``idle_s`` once ``at_least`` were read, or for ``timeout``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers(), enable_auto_commit=False)
    await consumer.start()
    out: dict[str, list[dict]] = {}
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(name, p) for name in names for p in sorted(consumer.partitions_for_topic(name) or [])]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline, read = time.monotonic() + timeout, 0
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=int(idle_s * 1000))
            if not batch and read >= at_least:
                break
            for tp, records in batch.items():
                out.setdefault(tp.topic, []).extend(orjson.loads(r.value) for r in records)
                read += len(records)
    finally:
        await consumer.stop()
    return out


def wait_logged(log: Path, text: str, timeout: float = 20.0) -> str:
    """The last line of ``log`` containing ``text``, once one does (AssertionError after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [line for line in log.read_text().splitlines() if text in line]
        if found:
            return found[-1]
        time.sleep(0.2)
    raise AssertionError(f"worker never logged {text!r}")


def event_time(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["ts"]).timestamp()


def reached(settings: Settings, messages: int, timeout: float = 120.0) -> None:
    """Return once the worker has handled ``messages`` messages, or after ``timeout`` at whatever
    point it is (for a disruption mid-stream: the caller checks the outcome, not this wait)."""
    deadline = time.monotonic() + timeout
    while asyncio.run(read_stats(settings)).get("messages", 0) < messages and time.monotonic() < deadline:
        time.sleep(0.05)


class RunningWorker:
    """A worker child process (``proc``) that a test may kill and replace."""

    def __init__(self, settings: Settings, log: Path) -> None:
        self.settings, self.log = settings, log
        self.proc = start_worker(settings, log)

    def kill_when_processed(self, messages: int, timeout: float = 120.0) -> None:
        """SIGKILL the worker once it has handled ``messages`` messages (or after ``timeout``, at
        whatever point it is), then start a new one and wait until it is healthy."""
        reached(self.settings, messages, timeout)
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = start_worker(self.settings, self.log)
        wait_healthy(self.settings, self.proc)


@contextlib.contextmanager
def worker(settings: Settings, log: Path) -> Iterator[RunningWorker]:
    """A healthy worker for the block; its log tail is printed when the block fails."""
    running = RunningWorker(settings, log)
    try:
        wait_healthy(settings, running.proc)
        yield running
    except BaseException:
        print(log.read_text()[-5000:] if log.exists() else "(no worker log)")
        raise
    finally:
        stop_worker(running.proc)


async def read_stats(settings: Settings) -> dict[str, int]:
    async with Store.open(settings) as store:
        return await store.stats()


async def processed(
    settings: Settings, messages: int, timeout: float = 60.0, counter: str = "messages"
) -> dict[str, int]:
    """Wait until the stats ``counter`` reaches ``messages``; the stats then."""
    async with Store.open(settings) as store:
        await wait_processed(store, messages, timeout=timeout, counter=counter)
        return await store.stats()


async def processed_and_settled(
    settings: Settings, messages: int, timeout: float = 240, counter: str = "messages"
) -> None:
    async with Store.open(settings) as store:
        await wait_processed(store, messages, timeout=timeout, counter=counter)
        await settle(store, event_clock=settings.clock == "event")
        await outbox_drained(store)


def replay_and_settle(settings: Settings, events: list[dict], counter: str = "messages") -> None:
    """Replay ``events`` into the topics, wait until the worker has handled them (the stats
    ``counter`` up by the messages sent) and bring every profile to the current clock."""
    before = asyncio.run(read_stats(settings)).get(counter, 0)
    report = asyncio.run(replay.replay(settings, events, progress=False))
    asyncio.run(processed_and_settled(settings, before + report.total, counter=counter))


async def public_profiles(store: Store) -> tuple[dict[str, dict[str, str]], float | None]:
    """Every profile in ``store`` (public tags only: what the oracle computes) and its clock."""
    found: dict[str, dict[str, str]] = {}
    uids = [uid async for uid in store.reads.stored_users()]
    for uid, profile in zip(uids, await store.reads.profiles(uids), strict=True):
        if not profile:  # a stored state without a published profile
            continue
        # model outputs are not tags of docs/tags.md: the tag oracle does not compute them
        found[uid] = {k: v for k, v in profile.items() if not k.startswith("_") and k not in MODEL_TAGS}
    return found, await store.clock()


async def read_profiles(settings: Settings) -> tuple[dict[str, dict[str, str]], float]:
    """Every stored profile (public tags only) and the event-time clock."""
    async with Store.open(settings) as store:
        found, clock = await public_profiles(store)
        assert clock is not None
        return found, clock


@dataclass
class ProfileDifferences:
    """How stored profiles differ from the independent offline computation (float near-ties aside)."""

    expected: int  # users the oracle has a profile for
    missing: list[str]  # expected, not stored
    extra: list[str]  # stored, not expected
    mismatches: list[tuple[str, dict[str, tuple[str | None, str | None]]]]  # (user, tag -> (got, want))


def profile_differences(events: list[dict], actual: dict[str, dict[str, str]], now: float) -> ProfileDifferences:
    expected = oracle.compute_profiles(events, now)
    mismatches = []
    for uid, want in expected.items():
        got = actual.get(uid)
        if got is None or got == want:
            continue
        diff = {k: (got.get(k), want.get(k)) for k in set(got) | set(want) if got.get(k) != want.get(k)}
        if set(diff) == {"top_categories"} and _near_tie(events, now, uid):
            continue
        mismatches.append((uid, diff))
    missing, extra = sorted(set(expected) - set(actual)), sorted(set(actual) - set(expected))
    return ProfileDifferences(len(expected), missing, extra, mismatches)


def assert_profiles_match(events: list[dict], actual: dict[str, dict[str, str]], now: float) -> None:
    """Exact equality with the independent offline computation (float near-ties aside)."""
    found = profile_differences(events, actual, now)
    assert not found.missing and not found.extra, f"users differ: missing {found.missing[:5]}, extra {found.extra[:5]}"
    mismatches = found.mismatches
    assert not mismatches, f"{len(mismatches)} of {found.expected} profiles differ, e.g. {mismatches[:3]}"


def _near_tie(events: list[dict], now: float, uid: str) -> bool:
    scores = sorted(oracle.top_category_scores(events, now, uid).values(), reverse=True)
    return any(abs(a - b) <= 1e-9 * max(abs(a), 1.0) for a, b in itertools.pairwise(scores))
