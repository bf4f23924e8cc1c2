"""Liveness and readiness of a worker: "the process is up" versus "it is consuming".

``/livez`` answers whenever the event loop does. ``/readyz`` (and ``/healthz``, the same answer)
is ready only when every check passes:

* ``redis``: no Redis call is failing (the processor's retry state, ``RedisRetry``) and Redis
  answered the last probe's ``PING`` in time (a Redis that hangs without closing its sockets
  fails no call, it just never answers);
* ``broker``: the last broker probe (a metadata and offsets read, the one that feeds
  ``portrait_consumer_lag``) succeeded and is recent (at most ``3 x`` the probe interval old);
* ``ingest``: the ingest agent's loop is running, has not crashed since its last batch, and no
  batch has been in flight for longer than ``readiness_stall_s``;
* ``progress``: no input partition assigned to this worker has had lag (log end beyond the
  group's committed offset) for ``readiness_stall_s`` without this worker finishing a batch
  from it.

Every probe also sets ``portrait_ready{check}`` (1 passing, 0 failing), so an alert can fire on a
worker nobody asks. Times are monotonic seconds; ages in the answers are seconds as numbers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from pydantic import BaseModel

from stream.kafka.lag import Lag, LagReader, record_lag
from stream.metrics import Metrics
from stream.service.retry import RedisRetry

log = logging.getLogger(__name__)
Partition = tuple[str, int]
CHECKS = ("redis", "broker", "ingest", "progress")


class Check(BaseModel):
    ok: bool
    error: str | None = None


class BrokerCheck(Check):
    checked_s_ago: float | None = None  # age of the last probe (None: not probed yet)


class IngestCheck(Check):
    running: bool
    crashes: int
    batches: int
    batch_in_flight_s: float | None = None
    last_batch_s_ago: float | None = None


class PartitionStall(BaseModel):
    topic: str
    partition: int
    lag: int
    stalled_s: float


class ProgressCheck(Check):
    assigned: int  # input partitions assigned to this worker (as far as the consumer tells)
    lag: int  # sum of the committed lag on those partitions at the last probe
    stall_limit_s: float
    stalled: list[PartitionStall] = []


class Checks(BaseModel):
    redis: Check
    broker: BrokerCheck
    ingest: IngestCheck
    progress: ProgressCheck


class Readiness(BaseModel):
    ready: bool
    checks: Checks


class Liveness(BaseModel):
    alive: bool
    uptime_s: float


class IngestState:
    """The ingest agent's heartbeat, kept by the agent's loop (``stream.agents.ingest``)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.running = False
        self.crashes = 0
        self.last_error: str | None = None
        self.crashed_at: float | None = None
        self.batches = 0
        self.batch_since: float | None = None
        self.last_batch_at: float | None = None
        self.partition_done: dict[Partition, float] = {}

    def started(self) -> None:
        self.running = True

    def stopped(self, error: BaseException | None = None) -> None:
        self.running, self.batch_since = False, None
        if error is not None:
            self.crashes += 1
            self.crashed_at = self.clock()
            self.last_error = _describe(error)

    def batch_begun(self) -> None:
        self.batch_since = self.clock()

    def batch_done(self, partitions: Iterable[Partition]) -> None:
        now = self.clock()
        self.batches += 1
        self.batch_since, self.last_batch_at = None, now
        for tp in partitions:
            self.partition_done[tp] = now


class Health:
    """Runs the broker probe and answers readiness from the last probe and the live states."""

    def __init__(
        self,
        retry: RedisRetry,
        ingest: IngestState,
        metrics: Metrics,
        lag_reader: LagReader,
        assigned: Callable[[], set[Partition] | None],
        stall_s: float,
        probe_interval_s: float,
        probe_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
        ping: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        self.retry, self.ingest, self.metrics, self.lag_reader = retry, ingest, metrics, lag_reader
        self.ping = ping
        self.ping_error: str | None = None
        self.assigned, self.clock = assigned, clock
        self.stall_s, self.probe_interval_s, self.probe_timeout_s = stall_s, probe_interval_s, probe_timeout_s
        self.started_at = clock()
        self.probed_at: float | None = None
        self.broker_error: str | None = "not probed yet"
        self.lag: Lag = {}
        self.lagging_since: dict[Partition, float] = {}
        self.assigned_since: dict[Partition, float] = {}  # a partition handed over is not stalled at once

    async def probe(self) -> Readiness:
        """Read the lag (which needs the broker) and ping Redis, both bounded by the probe timeout;
        record the lag and publish the readiness gauges."""
        await asyncio.gather(self._probe_broker(), self._probe_redis())
        self.probed_at = self.clock()
        return self.readiness()

    async def _probe_redis(self) -> None:
        if self.ping is None:
            return
        try:
            await asyncio.wait_for(self.ping(), self.probe_timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = f"PING: {self._describe(exc)}"
            if self.ping_error != error:
                log.warning("redis probe failed: %s", error)
            self.ping_error = error
        else:
            self.ping_error = None

    async def _probe_broker(self) -> None:
        try:
            lag = await asyncio.wait_for(self._read_lag(), self.probe_timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = self._describe(exc)
            if self.broker_error != error:
                log.warning("broker probe failed: %s", error)
            self.broker_error = error
            await self._reset_reader()
        else:
            if self.broker_error is not None and self.probed_at is not None:
                log.info("broker reachable again")
            self.broker_error = None
            record_lag(self.metrics, lag)
            self._observe_lag(lag)

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError) and not str(exc):
            return f"no answer within {self.probe_timeout_s:g}s"
        return _describe(exc)

    async def _read_lag(self) -> Lag:
        if not self.lag_reader.started:
            await self.lag_reader.start()
        return await self.lag_reader.read()

    async def _reset_reader(self) -> None:
        # a reader whose connections broke is rebuilt on the next probe rather than trusted
        try:
            await asyncio.wait_for(self.lag_reader.close(), self.probe_timeout_s)
        except Exception as exc:
            log.debug("closing the lag reader failed: %r", exc)

    def _observe_lag(self, lag: Lag) -> None:
        now = self.clock()
        self.lag = lag
        for tp, value in lag.items():
            if value <= 0:
                self.lagging_since.pop(tp, None)
            else:
                self.lagging_since.setdefault(tp, now)
        for tp in set(self.lagging_since) - set(lag):
            del self.lagging_since[tp]

    def liveness(self) -> Liveness:
        return Liveness(alive=True, uptime_s=round(self.clock() - self.started_at, 3))

    def readiness(self) -> Readiness:
        now = self.clock()
        # both when both failed: a call's timeout and the probe's PING say different things
        redis_errors = [e for e in (self.retry.last_error, self.ping_error) if e]
        checks = Checks(
            redis=Check(ok=not redis_errors, error="; ".join(redis_errors) or None),
            broker=self._broker(now),
            ingest=self._ingest(now),
            progress=self._progress(now),
        )
        for name in CHECKS:
            self.metrics.ready.labels(name).set(1 if getattr(checks, name).ok else 0)
        return Readiness(ready=all(getattr(checks, name).ok for name in CHECKS), checks=checks)

    def _broker(self, now: float) -> BrokerCheck:
        age = None if self.probed_at is None else round(now - self.probed_at, 3)
        error = self.broker_error
        if error is None and age is not None and age > 3 * self.probe_interval_s + self.probe_timeout_s:
            error = f"no broker probe for {age:.0f}s"
        return BrokerCheck(ok=error is None, error=error, checked_s_ago=age)

    def _ingest(self, now: float) -> IngestCheck:
        s = self.ingest
        in_flight = None if s.batch_since is None else round(now - s.batch_since, 3)
        last = None if s.last_batch_at is None else round(now - s.last_batch_at, 3)
        error = None
        if not s.running:
            error = "ingest agent not running" + (f" (crashed: {s.last_error})" if s.last_error else "")
        elif s.crashed_at is not None and (s.last_batch_at is None or s.last_batch_at < s.crashed_at):
            error = f"ingest agent restarted after a crash and has processed no batch since ({s.last_error})"
        elif in_flight is not None and in_flight > self.stall_s:
            error = f"a batch has been in flight for {in_flight:.0f}s"
        return IngestCheck(
            ok=error is None,
            error=error,
            running=s.running,
            crashes=s.crashes,
            batches=s.batches,
            batch_in_flight_s=in_flight,
            last_batch_s_ago=last,
        )

    def _progress(self, now: float) -> ProgressCheck:
        assigned = self.assigned()
        mine = set(self.lag) if assigned is None else assigned & set(self.lag)
        for tp in set(self.assigned_since) - mine:
            del self.assigned_since[tp]
        stalled = []
        for tp in sorted(mine):
            owned = self.assigned_since.setdefault(tp, now)
            since = self.lagging_since.get(tp)
            if since is None:
                continue
            quiet = now - max(since, owned, self.ingest.partition_done.get(tp, since))
            if quiet > self.stall_s:
                stall = PartitionStall(topic=tp[0], partition=tp[1], lag=self.lag[tp], stalled_s=round(quiet, 3))
                stalled.append(stall)
        error = None
        if stalled:
            names = ", ".join(f"{p.topic}[{p.partition}] lag {p.lag}" for p in stalled[:5])
            error = f"no progress for over {self.stall_s:g}s with lag: {names}"
        return ProgressCheck(
            ok=not stalled,
            error=error,
            assigned=len(assigned) if assigned is not None else len(mine),
            lag=sum(self.lag[tp] for tp in mine),
            stall_limit_s=self.stall_s,
            stalled=stalled,
        )


def _describe(exc: BaseException) -> str:
    """``Type: message`` once (aiokafka's messages already start with their type)."""
    name, text = type(exc).__name__, str(exc)
    if not text:
        return name
    return text if text.startswith(name) else f"{name}: {text}"
