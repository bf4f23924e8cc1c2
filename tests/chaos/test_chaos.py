"""`make chaos`: SIGKILLs, a Valkey kill -9 and a broker restart during one event-time replay.

Not part of `make test` (it runs for minutes): pyproject's pytest options ignore this folder and
`make chaos` runs it on its own. It owns its services (Apache Kafka from the Maven jars, an
embedded Valkey with its append-only file) so it can kill and restart them:

* ``CHAOS_EVENTS`` (default 100,000) synthetic events of ``CHAOS_USERS`` (2,000) users over 85
  days are produced to the input topics; two workers consume them in event-time mode with the
  test rules, small batches and a 3 s commit interval, so every kill lands with work in flight;
* ``CHAOS_KILLS`` (20) SIGKILLs of a random worker, spread over the replay (each restarted at
  once); at a third of the way Valkey is killed with SIGKILL and restarted on its data directory;
  at two thirds the broker is stopped and started again on its log directory;
* then every profile is compared with the independent offline computation (tests/oracle.py), the
  applied-event counter with the number of events, and the delivered triggers with the oracle's.

The report (also written to results/chaos-latest.txt) is what docs/reliability.md quotes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from portrait_dev import synth
from portrait_dev.harness import outbox_drained, settle, start_worker, stop_worker, wait_healthy
from portrait_dev.infra import InfraHandle, ManagedProcess, embedded, free_port, wait_for_broker, wait_for_redis

from stream.contracts.topics import Topics
from stream.kafka import replay
from stream.settings import Settings
from tests.integration.helpers import profile_differences, read_profiles, read_stats, store_for
from tests.integration.triggers import RULES, expected_triggers, read_triggers

EVENTS = int(os.environ.get("CHAOS_EVENTS", "100000"))
USERS = int(os.environ.get("CHAOS_USERS", "2000"))
KILLS = int(os.environ.get("CHAOS_KILLS", "20"))
TIMEOUT_S = float(os.environ.get("CHAOS_TIMEOUT_S", "1800"))
RESULTS = Path(__file__).resolve().parents[2] / "results"


@dataclass
class Report:
    produced: int = 0
    kills: int = 0
    worker_restart_s: list[float] = field(default_factory=list)
    valkey_recovery_s: float | None = None
    broker_recovery_s: float | None = None
    applied: int = 0
    redelivered: int = 0
    users_expected: int = 0
    users_off: int = 0
    missing_users: int = 0
    triggers: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)  # raw, unique, expected, missing
    seconds: float = 0.0

    def lines(self) -> list[str]:
        lost = max(0, self.produced - self.applied)
        double = max(0, self.applied - self.produced)
        restarts = sorted(self.worker_restart_s)
        median = restarts[len(restarts) // 2] if restarts else 0.0
        out = [
            f"chaos run: {self.produced:,} events of {USERS:,} users, 2 workers, Apache Kafka, {self.seconds:.0f} s",
            f"  SIGKILLs of a worker        {self.kills} (restart to healthy: median {median:.1f} s, "
            f"max {max(restarts, default=0.0):.1f} s)",
            f"  Valkey kill -9 + restart    consuming again after {_secs(self.valkey_recovery_s)}",
            f"  broker stop + start         consuming again after {_secs(self.broker_recovery_s)}",
            f"  events produced / applied   {self.produced:,} / {self.applied:,} "
            f"(redeliveries recognised and skipped: {self.redelivered:,})",
            f"  lost / double-applied       {lost} / {double}",
            f"  users off the oracle        {self.users_off} of {self.users_expected:,} "
            f"(missing profiles: {self.missing_users})",
        ]
        for suffix, (raw, unique, expected, missing) in sorted(self.triggers.items()):
            out.append(f"  {suffix:<26}  {raw:,} delivered, {unique:,} unique, oracle {expected:,}, missing {missing}")
        return out


def _secs(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} s"


def _stats(settings: Settings) -> dict[str, int] | None:
    """The worker counters, or None while Valkey is down."""
    try:
        return asyncio.run(read_stats(settings))
    except (redis.exceptions.ConnectionError, OSError):
        return None


def _applied(settings: Settings) -> int | None:
    stats = _stats(settings)
    return None if stats is None else stats.get("events_applied", 0)


def _wait_for_progress(settings: Settings, since: int, started: float, timeout: float = 300.0) -> float:
    """Seconds from ``started`` until the applied counter moves past ``since``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        applied = _applied(settings)
        if applied is not None and applied > since:
            return time.monotonic() - started
        time.sleep(0.1)
    raise TimeoutError(f"no progress within {timeout:.0f}s after the outage")


def _wait_applied(settings: Settings, target: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        applied = _applied(settings)
        if applied is not None and applied >= target:
            return
        time.sleep(0.1)
    raise TimeoutError(f"applied counter did not reach {target} ({_applied(settings)})")


def _replace(handle: InfraHandle, old: ManagedProcess, new: ManagedProcess) -> None:
    handle.processes[handle.processes.index(old)] = new  # so the embedded block stops the new one


class Feeder:
    """Produces the events in order, a chunk ahead of the schedule: produced all at once, the
    workers applied all 100,000 before the broker restart at 66 % came (the kills before it take
    ~6 s each), and no progress after that outage could be seen."""

    def __init__(self, settings: Settings, events: list[dict]) -> None:
        self.settings, self.events, self.sent = settings, events, 0
        self.ahead = max(1, len(events) // 20)

    def to(self, n: int) -> None:
        n = min(n, len(self.events))
        if n > self.sent:
            asyncio.run(replay.replay(self.settings, self.events[self.sent : n], progress=False))
            self.sent = n

    def more(self) -> None:
        """One chunk past what was produced (after an outage: work to show progress on)."""
        self.to(self.sent + self.ahead)


def _kill_valkey(handle: InfraHandle, settings: Settings, report: Report, feeder: Feeder) -> None:
    proc = next(p for p in handle.processes if p.name == "valkey")
    since = _applied(settings) or 0
    os.killpg(proc.pid, signal.SIGKILL)
    while proc.alive():
        time.sleep(0.01)
    time.sleep(2.0)  # an outage the workers notice (they retry with backoff, health goes red)
    started = time.monotonic()
    new = proc.respawn()
    _replace(handle, proc, new)
    wait_for_redis(handle.redis_url, new)
    feeder.more()
    report.valkey_recovery_s = _wait_for_progress(settings, since, started)


def _restart_broker(handle: InfraHandle, settings: Settings, report: Report, feeder: Feeder) -> None:
    proc = next(p for p in handle.processes if p.name == "kafka")
    since = _applied(settings) or 0
    proc.stop()  # SIGTERM: a controlled shutdown, then the same log directory comes back
    started = time.monotonic()
    new = proc.respawn()
    _replace(handle, proc, new)
    wait_for_broker(handle.bootstrap, new, timeout=120)
    feeder.more()
    report.broker_recovery_s = _wait_for_progress(settings, since, started)


@contextlib.contextmanager
def _workers(settings: list[Settings], logs: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = [start_worker(s, logs / f"worker-{i}.log") for i, s in enumerate(settings)]
    try:
        for s, p in zip(settings, procs, strict=True):
            wait_healthy(s, p)
        yield procs
    finally:
        for p in procs:
            stop_worker(p)


def test_chaos(tmp_path: Path) -> None:
    began = time.monotonic()
    report = Report()
    rng = random.Random(2026)
    events = synth.generate(users=USERS, events=EVENTS, seed=41, days=85)
    report.produced = len(events)
    with embedded(tmp_path / "infra", broker="kafka", keep_data=True) as handle:
        base = handle.settings(
            clock="event",
            rules_file=RULES,
            delivery_horizon_s=0,  # the triggers of the replayed history are checked: send them
            batch_size=100,
            commit_interval_s=3.0,
            topic_prefix="chaos",
            key_prefix="chaos",
            app_id="portrait-chaos",
            state_file=tmp_path / "infra.json",
            partitions=4,
        )
        handle.create_topics(Topics(base.topic_prefix).all, base.partitions)
        settings = [base.model_copy(update={"web_port": free_port()}) for _ in range(2)]
        feeder = Feeder(base, events)
        # the two outages at fixed fractions of the replay, the kills spread evenly around them
        marks = [(0.33, "valkey"), (0.66, "broker")] + [((i + 1) / (KILLS + 2), "kill") for i in range(KILLS)]
        deadline = time.monotonic() + TIMEOUT_S
        with _workers(settings, tmp_path) as procs:
            for fraction, what in sorted(marks):
                target = int(fraction * len(events))
                feeder.to(target + feeder.ahead)
                _wait_applied(base, target, deadline)
                if what == "valkey":
                    _kill_valkey(handle, base, report, feeder)
                elif what == "broker":
                    _restart_broker(handle, base, report, feeder)
                else:
                    victim = rng.randrange(len(procs))
                    os.kill(procs[victim].pid, signal.SIGKILL)
                    procs[victim].wait(10)
                    report.kills += 1
                    started = time.monotonic()
                    procs[victim] = start_worker(settings[victim], tmp_path / f"worker-{victim}.log")
                    wait_healthy(settings[victim], procs[victim])
                    report.worker_restart_s.append(time.monotonic() - started)
            feeder.to(len(events))
            _wait_applied(base, len(events), deadline)

            async def settled() -> None:
                store = store_for(base)
                try:
                    await settle(store, event_clock=True)
                    await outbox_drained(store)
                finally:
                    await store.close()

            asyncio.run(settled())
            stats = _stats(base) or {}
            report.applied = stats.get("events_applied", 0)
            report.redelivered = stats.get("events_redelivered", 0)
            actual, now = asyncio.run(read_profiles(base))
            delivered = asyncio.run(read_triggers(base))
        found = profile_differences(events, actual, now)
        report.users_expected, report.users_off = found.expected, len(found.mismatches) + len(found.missing)
        report.missing_users = len(found.missing)
        for suffix, ids in expected_triggers(events).items():
            seen = [t["trigger_id"] for t in delivered.get(suffix, [])]
            report.triggers[suffix] = (len(seen), len(set(seen)), len(ids), len(ids - set(seen)))
    report.seconds = time.monotonic() - began
    text = "\n".join(report.lines())
    print("\n" + text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "chaos-latest.txt").write_text(text + "\n")
    assert report.kills == KILLS
    assert report.applied == report.produced, "events lost or applied twice"
    assert report.users_off == 0 and report.missing_users == 0
    assert all(missing == 0 and unique == expected for _, unique, expected, missing in report.triggers.values())


pytestmark = pytest.mark.chaos
