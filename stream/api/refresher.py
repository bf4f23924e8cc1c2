"""The API process's background work: the insights aggregate, the known audiences, the event
rate and the hourly trend snapshots. Requests only read what this keeps (docs/api.md).

* **Aggregate pass** (``refresh``): one scan of every published profile and state, folded into an
  ``Aggregate``, in a child process (``compute_aggregate``): parsing a million Redis replies and
  decoding the states is CPU work that would otherwise hold the event loop, and so every request,
  for the whole pass. The next pass starts ``api_insights_interval_s`` after one ends, so the cost
  per hour is bounded whatever the population (a pass over 1M users takes minutes, not requests).
* **Known audiences**: the catalogue's value domains plus every audience set found by the pass.
* **Event rate**: the shared ``events_applied`` counter sampled every ``RATE_SAMPLE_S``; the
  rate is the slope over the last ``RATE_WINDOW_S``.
* **Trends**: after each pass, the point of the current hour of the service clock (event time
  in event mode) is stored: users and every known audience's size, replacing the hour's earlier
  point, so an hour ends with the figures of its last pass. Several API processes write the same
  field with the same figures; snapshots older than the retention are dropped.
"""

from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError, TimeoutError as RedisTimeoutError

from stream.api.aggregate import Aggregate
from stream.models.config import ModelsConfig
from stream.rules.config import MODEL_TAG_DOMAINS
from stream.settings import Settings
from stream.storage.reads import Pair, Reads
from stream.tagging.definitions import TagCatalogue
from stream.tagging.state import UserState

log = logging.getLogger(__name__)

RATE_SAMPLE_S = 2.0
RATE_WINDOW_S = 30.0
HOUR = 3600
# Redis away, or the pass process killed: retried at the next pass, logged without a traceback
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, BrokenProcessPool, OSError)
CHURN_BANDS = tuple(MODEL_TAG_DOMAINS["churn_band"].values or ())  # low, medium, high


@dataclass(frozen=True)
class Snapshot:
    """One finished aggregate pass."""

    aggregate: Aggregate
    computed_at: float  # wall clock, end of the pass
    clock: float  # the service clock the pass read the profiles at
    seconds: float


def domain_pairs(catalogue: TagCatalogue, models: ModelsConfig | None) -> list[Pair]:
    """The audiences the catalogue declares: every value of each audience tag with a value domain
    (``values``, or whole numbers from ``min`` to ``max``), and the churn bands."""
    pairs: list[Pair] = []
    for tag in catalogue.tags:
        if not tag.audience:
            continue
        if tag.values is not None:
            pairs.extend((tag.name, v) for v in tag.values)
        elif tag.type == "bool":
            pairs.extend((tag.name, v) for v in ("true", "false"))
        elif tag.type == "int" and tag.min is not None and tag.max is not None and tag.max - tag.min <= 100:
            pairs.extend((tag.name, str(v)) for v in range(math.ceil(tag.min), math.floor(tag.max) + 1))
    if models is not None:
        pairs.extend(("churn_band", band) for band in CHURN_BANDS)
    return pairs


def _ignore_interrupts() -> None:
    """The pass process leaves Ctrl-C to the API process, which stops it (``Refresher.close``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def compute_aggregate(settings: Settings, clock: float) -> tuple[Aggregate, list[Pair]]:
    """One pass over every published profile and state at ``clock``, and the audience sets that
    exist. Runs in the pass process (its own Redis connection and event loop)."""

    async def scan() -> tuple[Aggregate, list[Pair]]:
        async with Reads.open(settings) as reads:
            aggregate = Aggregate(now=clock)
            async for batch in reads.scan_users(Aggregate.FIELDS):
                for record in batch:
                    hours = UserState.from_bytes(record.state).hours if record.state else None
                    aggregate.add(record.uid, record.profile, hours)
            return aggregate.without_caches(), await reads.audience_pairs()

    return asyncio.run(scan())


@dataclass
class Refresher:
    reads: Reads
    settings: Settings
    catalogue: TagCatalogue
    models: ModelsConfig | None = None
    latest: Snapshot | None = None
    pairs: list[Pair] = field(default_factory=list)
    _samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64))
    _ready: asyncio.Event = field(default_factory=asyncio.Event)
    _pool: ProcessPoolExecutor | None = None

    def __post_init__(self) -> None:
        self.pairs = sorted(set(domain_pairs(self.catalogue, self.models)))

    async def service_clock(self) -> float:
        """Event time (the shared clock) in event mode, else the wall clock."""
        if self.settings.clock == "event":
            clock = await self.reads.clock()
            return clock if clock is not None else time.time()
        return time.time()

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_ignore_interrupts
            )
        return self._pool

    def close(self) -> None:
        """Stop the pass process, also in the middle of a pass (a pass over 1M users takes minutes)."""
        if self._pool is not None:
            for proc in list((self._pool._processes or {}).values()):  # no public way to stop a running task
                proc.terminate()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    async def refresh(self) -> Snapshot:
        """One aggregate pass (in the pass process), then the known audiences and the trend snapshot."""
        started = time.monotonic()
        clock = await self.service_clock()
        loop = asyncio.get_running_loop()
        try:
            aggregate, found = await loop.run_in_executor(self._executor(), compute_aggregate, self.settings, clock)
        except BrokenProcessPool:
            self._pool = None  # the pass process died (killed, out of memory): a new one next time
            raise
        self.pairs = sorted(set(domain_pairs(self.catalogue, self.models)) | set(found))
        snapshot = Snapshot(aggregate, time.time(), clock, time.monotonic() - started)
        self.latest = snapshot
        self._ready.set()
        await self.snapshot_trend(clock, aggregate.users)
        return snapshot

    async def snapshot_trend(self, clock: float, users: int) -> bool:
        """Record the current hour's point (the latest pass of an hour is the one kept); True when
        it is the hour's first."""
        hour = int(clock // HOUR) * HOUR
        sizes = await self.reads.audience_sizes(self.pairs)
        named = {f"{t}:{v}": n for (t, v), n in zip(self.pairs, sizes, strict=True)}
        doc: dict[str, Any] = {"users": users, "sizes": named}
        keep_from = hour - self.settings.api_trends_retention_days * 86400
        return await self.reads.record_trend(hour, doc, keep_from)

    async def sample_rate(self) -> None:
        stats = await self.reads.stats()
        self._samples.append((time.monotonic(), stats.get("events_applied", 0)))

    def events_per_second(self) -> float | None:
        """Slope of ``events_applied`` over the last ``RATE_WINDOW_S`` (None before two samples)."""
        if len(self._samples) < 2:
            return None
        last_t, last_n = self._samples[-1]
        window = [s for s in self._samples if last_t - s[0] <= RATE_WINDOW_S]
        first_t, first_n = window[0]
        return (last_n - first_n) / (last_t - first_t) if last_t > first_t else None

    async def wait_ready(self, timeout: float) -> Snapshot | None:
        """The latest pass, waiting up to ``timeout`` for the first one."""
        if self.latest is None:
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except TimeoutError:
                return None
        return self.latest

    async def run_passes(self) -> None:
        def failed(exc: Exception) -> None:  # keep the last aggregate
            if isinstance(exc, UNREACHABLE):  # an outage, not a bug: one line, no traceback
                log.warning("insights pass failed (%s); keeping the previous aggregate", exc)
            else:
                log.exception("insights pass failed; keeping the previous aggregate")

        await _every(self.settings.api_insights_interval_s, self.refresh, failed)

    async def run_rate(self) -> None:
        def failed(exc: Exception) -> None:
            log.warning("event rate sample failed: %s", exc)

        await _every(RATE_SAMPLE_S, self.sample_rate, failed)

    def tasks(self) -> Iterable[asyncio.Task[None]]:
        return (asyncio.create_task(self.run_passes()), asyncio.create_task(self.run_rate()))


async def _every(pause_s: float, step: Callable[[], Awaitable[object]], failed: Callable[[Exception], None]) -> None:
    """Run ``step`` forever, ``pause_s`` after each end; a failure goes to ``failed`` and the
    loop goes on (only cancelling the task stops it)."""
    while True:
        try:
            await step()
        except Exception as exc:  # CancelledError is no Exception: it stops the loop
            failed(exc)
        await asyncio.sleep(pause_s)
