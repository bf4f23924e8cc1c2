"""Running workers as child processes and waiting for them: shared by the demo, bench and tests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from stream.kafka.replay import Stalled as Stalled  # one exception for 'no progress', product and tools
from stream.models import ModelsConfig, load_models_config
from stream.rules import RuleSet, load_rules
from stream.settings import Settings
from stream.storage.store import Store
from stream.tagging.definitions import TagCatalogue, load_catalogue


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that reproduces ``settings`` in a child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTRAIT_")}
    for name, value in settings.model_dump(exclude_none=True).items():
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[f"PORTRAIT_{name.upper()}"] = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return env


def worker_definitions(settings: Settings) -> tuple[TagCatalogue, RuleSet | None, ModelsConfig | None]:
    """The tag catalogue, rules and models config a worker with ``settings`` loads (rules and
    models None when off): what the tools hand the offline driver to run the worker's code."""
    catalogue = load_catalogue(settings.tags_file)
    rules_file = settings.resolved_rules_file()
    rules = load_rules(rules_file, catalogue) if rules_file is not None else None
    models = load_models_config(settings.models_file) if settings.models_enabled else None
    return catalogue, rules, models


def start_worker(settings: Settings, log_path: Path, command: str = "worker") -> subprocess.Popen[bytes]:
    """``portrait <command>`` (``worker``; ``trainer`` for the trainer process) as a child process
    with ``settings``, its output appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "stream", command],
        env=settings_env(settings),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_worker(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def wait_healthy(
    settings: Settings, proc: subprocess.Popen[bytes] | None = None, timeout: float = 90.0, port: int | None = None
) -> None:
    """Wait until ``/healthz`` on ``port`` (default: the worker's ``web_port``) answers 200."""
    wait_http(f"http://{settings.web_host}:{port or settings.web_port}/healthz", proc, timeout)


def wait_http(url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 90.0) -> None:
    """Wait until ``url`` answers 200. RuntimeError when ``proc`` exits first, TimeoutError after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.pid} exited with {proc.returncode} before becoming healthy")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"not healthy at {url} after {timeout}s")


@dataclass
class Throughput:
    """Progress of a wait: ``rate`` is measured from the first processed message to the last."""

    seconds: float = 0.0
    first_at: float | None = None
    first_count: int = 0
    done_at: float = 0.0
    total: int = 0
    polls: int = 0  # reads of the counters while waiting (a bench subtracts their Redis commands)

    @property
    def rate(self) -> float:
        if self.first_at is None or self.done_at <= self.first_at:
            return 0.0
        return (self.total - self.first_count) / (self.done_at - self.first_at)


async def wait_processed(
    store: Store,
    messages: int,
    timeout: float | None = 300.0,
    progress: object = None,
    counter: str = "messages",
    stall_s: float | None = None,
) -> Throughput:
    """Wait until the stats ``counter`` reaches ``messages``.

    ``timeout`` bounds the whole wait (None: no bound); ``stall_s`` bounds how long the counter may
    stay put, so a slow machine that keeps making progress never fails and a stuck worker fails
    with where it stopped. ``messages`` counts every message handled, redeliveries included; after
    crashes wait on ``events_applied`` instead, which counts each event once. ``progress``: an
    object with ``update(n)`` (e.g. a progress bar) told of every increase.
    """
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    last, last_change = -1, started
    result = Throughput()
    while True:
        result.polls += 1
        done = (await store.stats()).get(counter, 0)
        now = time.monotonic()
        if done and result.first_at is None:
            result.first_at, result.first_count = now, done
        if done != last:
            if progress is not None:
                progress.update(done - max(last, 0))  # type: ignore[attr-defined]
            last, last_change = done, now
        if done >= messages:
            result.seconds, result.done_at, result.total = now - started, now, done
            return result
        if stall_s is not None and now - last_change > stall_s:
            raise Stalled(f"no progress for {stall_s:.0f}s: {counter} stopped at {done} of {messages}")
        if deadline is not None and now > deadline:
            raise TimeoutError(f"only {done} of {messages} {counter} after {timeout}s")
        await asyncio.sleep(0.05)


async def settle(store: Store, event_clock: bool, timeout: float = 120.0, reevaluate_all: bool = True) -> None:
    """Bring every profile to the tags at the current clock, with final RFM thresholds.

    Re-evaluating users moves their RFM metrics, which can move the population thresholds, so
    this repeats "refresh thresholds, re-evaluate everyone" until a refresh changes nothing and,
    in event time, every profile was evaluated at the clock: the worker's tick evaluates forced
    users at the watermark it read when the tick began, so a re-evaluation asked for just after
    the last batch can land at a watermark short of the clock, and a user with no change point
    up to the clock then drains with a profile from that moment (seen once in CI: events_30d 20
    for 13).
    """
    deadline = time.monotonic() + timeout

    async def drain() -> float:
        while time.monotonic() < deadline:
            now = (await store.clock() or 0.0) if event_clock else time.time()
            count, _ = await store.due_stats(now)
            if count == 0:
                return now
            await asyncio.sleep(0.1)
        raise TimeoutError("due re-evaluations did not drain")

    now = await drain()
    version = await store.refresh_rfm(now)
    if not reevaluate_all:
        return
    for _ in range(10):
        await store.mark_all_due()
        now = await drain()
        refreshed = await store.refresh_rfm(now)
        if refreshed == version and not (event_clock and await behind_clock(store, now)):
            return
        version = refreshed
    raise TimeoutError("profiles did not settle: RFM thresholds kept moving or profiles stayed behind the clock")


async def behind_clock(store: Store, clock: float) -> int:
    """How many stored profiles were last evaluated before ``clock`` (event time)."""
    uids = [uid async for uid in store.reads.stored_users()]
    profiles = await store.reads.profiles(uids)
    return sum(1 for p in profiles if p and float(p.get("_evaluated_at", clock)) < clock - 0.001)


async def outbox_drained(store: Store, timeout: float = 90.0) -> None:
    """Wait until every trigger in the outbox was delivered. A worker killed between reading
    its outbox entries and acknowledging them leaves them to another sender, which claims them
    only after ``OUTBOX_STALE_MS`` (30 s): a test that read the trigger topics before that found
    them missing (the crash test, 3 coupons)."""
    deadline = time.monotonic() + timeout
    while (pending := await store.outbox_pending()) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    if pending:
        raise TimeoutError(f"{pending} triggers still in the outbox after {timeout:.0f}s")
