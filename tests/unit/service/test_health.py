"""Readiness decisions (stream.service.health) on a fake clock and a scripted lag reader."""

from __future__ import annotations

import asyncio
from typing import Any

from stream.kafka.lag import Lag
from stream.metrics import Metrics
from stream.service.health import Health, IngestState
from stream.service.retry import RedisRetry

STALL_S = 60.0
TP = ("p.clickstream", 0)
OTHER = ("p.clickstream", 1)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ScriptedLag:
    """Stands in for LagReader: returns the next scripted answer (or raises it)."""

    def __init__(self) -> None:
        self.answer: Lag | Exception = {}
        self.started = False
        self.closes = 0

    async def start(self) -> None:
        self.started = True

    async def read(self) -> Lag:
        if isinstance(self.answer, Exception):
            raise self.answer
        return dict(self.answer)

    async def close(self) -> None:
        self.started = False
        self.closes += 1


def _health(assigned: set[tuple[str, int]] | None = None) -> tuple[Health, Clock, ScriptedLag, IngestState, Metrics]:
    clock, lag, metrics = Clock(), ScriptedLag(), Metrics()
    ingest = IngestState(clock)
    ingest.started()
    health = Health(
        RedisRetry(metrics),
        ingest,
        metrics,
        lag,
        lambda: assigned,
        STALL_S,
        5.0,
        5.0,
        clock=clock,  # type: ignore[arg-type]
    )
    return health, clock, lag, ingest, metrics


def _probe(health: Health) -> Any:
    return asyncio.run(health.probe())


def _gauge(metrics: Metrics, check: str) -> float | None:
    return metrics.registry.get_sample_value("portrait_ready", {"check": check})


def test_ready_when_every_check_passes_and_gauges_say_so() -> None:
    health, _, lag, _, metrics = _health({TP})
    lag.answer = {TP: 0}
    answer = _probe(health)
    assert answer.ready and answer.checks.broker.ok and answer.checks.progress.lag == 0
    assert [_gauge(metrics, c) for c in ("redis", "broker", "ingest", "progress")] == [1.0, 1.0, 1.0, 1.0]


def test_not_ready_before_the_first_probe() -> None:
    health, *_ = _health()
    answer = health.readiness()
    assert not answer.ready and answer.checks.broker.error == "not probed yet"


def test_broker_failure_is_named_and_the_reader_rebuilt() -> None:
    health, _clock, lag, _, metrics = _health()
    _probe(health)
    lag.answer = ConnectionError("broker down")
    answer = _probe(health)
    assert not answer.ready and answer.checks.broker.error == "ConnectionError: broker down"
    assert answer.checks.redis.ok and lag.closes == 1 and _gauge(metrics, "broker") == 0.0
    lag.answer = {}
    assert _probe(health).ready


def test_a_stale_probe_fails_the_broker_check() -> None:
    health, clock, *_ = _health()
    _probe(health)
    clock.now += 3 * 5.0 + 5.0 + 1
    answer = health.readiness()
    assert not answer.checks.broker.ok and answer.checks.broker.error == "no broker probe for 21s"


def test_lag_without_progress_on_an_assigned_partition_stalls_after_the_limit() -> None:
    health, clock, lag, ingest, _ = _health({TP})
    lag.answer = {TP: 7, OTHER: 50}  # OTHER belongs to another worker
    _probe(health)
    clock.now += STALL_S - 1
    assert _probe(health).checks.progress.ok
    clock.now += 2
    answer = _probe(health)
    assert not answer.ready and not answer.checks.progress.ok
    assert [(p.topic, p.partition, p.lag, p.stalled_s) for p in answer.checks.progress.stalled] == [
        (TP[0], TP[1], 7, STALL_S + 1)
    ]
    assert answer.checks.progress.assigned == 1 and answer.checks.progress.lag == 7
    ingest.batch_begun()
    ingest.batch_done([TP])  # progress on that partition: the quiet time restarts
    assert _probe(health).checks.progress.ok
    clock.now += STALL_S + 1
    assert not _probe(health).checks.progress.ok


def test_lag_that_drains_resets_the_stall() -> None:
    health, clock, lag, _, _ = _health({TP})
    lag.answer = {TP: 3}
    _probe(health)
    clock.now += STALL_S / 2
    lag.answer = {TP: 0}
    _probe(health)
    clock.now += STALL_S / 2 + 1
    lag.answer = {TP: 3}
    assert _probe(health).checks.progress.ok


def test_ingest_not_running_then_restarted_without_a_batch_then_recovered() -> None:
    health, clock, _lag, ingest, metrics = _health()
    _probe(health)
    ingest.stopped(RuntimeError("boom"))
    answer = health.readiness()
    assert not answer.ready and answer.checks.ingest.error == "ingest agent not running (crashed: RuntimeError: boom)"
    assert answer.checks.ingest.crashes == 1 and _gauge(metrics, "ingest") == 0.0
    ingest.started()  # Faust's supervisor restarted the agent
    answer = health.readiness()
    assert not answer.checks.ingest.ok and "no batch since" in str(answer.checks.ingest.error)
    clock.now += 1
    ingest.batch_begun()
    ingest.batch_done([TP])
    assert health.readiness().checks.ingest.ok


def test_a_batch_in_flight_past_the_limit_fails_ingest() -> None:
    health, clock, _, ingest, _ = _health()
    _probe(health)
    ingest.batch_begun()
    clock.now += STALL_S - 1
    assert health.readiness().checks.ingest.ok
    clock.now += 2
    answer = health.readiness().checks.ingest
    assert not answer.ok and answer.batch_in_flight_s == STALL_S + 1


def test_redis_failure_comes_from_the_retry_state() -> None:
    health, *_ = _health()
    _probe(health)
    health.retry.healthy, health.retry.last_error = False, "load: Connection refused"
    answer = health.readiness()
    assert not answer.ready and answer.checks.redis.error == "load: Connection refused"


def test_the_answer_is_typed_json() -> None:
    health, _, lag, _, _ = _health({TP})
    lag.answer = {TP: 2}
    body = _probe(health).model_dump(mode="json")
    assert body["ready"] is True and body["checks"]["progress"]["lag"] == 2
    assert isinstance(body["checks"]["broker"]["checked_s_ago"], float)
    assert body["checks"]["ingest"]["crashes"] == 0


def test_a_partition_handed_over_with_old_lag_gets_the_full_limit() -> None:
    assigned: set[tuple[str, int]] = set()
    health, clock, lag, _, _ = _health()
    health.assigned = lambda: assigned
    lag.answer = {TP: 9}  # another worker's partition, lagging for a long time
    _probe(health)
    clock.now += 10 * STALL_S
    assert _probe(health).checks.progress.ok
    assigned.add(TP)  # rebalance: now it is ours
    assert _probe(health).checks.progress.ok
    clock.now += STALL_S + 1
    assert not _probe(health).checks.progress.ok


def test_a_redis_that_does_not_answer_the_ping_fails_the_redis_check() -> None:
    clock, lag, metrics = Clock(), ScriptedLag(), Metrics()
    answers: list[Exception | None] = [None]

    async def ping() -> None:
        if answers[0] is not None:
            raise answers[0]

    async def hang() -> None:
        await asyncio.sleep(10)

    ingest = IngestState(clock)
    ingest.started()
    health = Health(RedisRetry(metrics), ingest, metrics, lag, lambda: None, STALL_S, 5.0, 0.05, clock=clock, ping=ping)  # type: ignore[arg-type]
    assert _probe(health).checks.redis.ok
    answers[0] = ConnectionError("Connection refused")
    answer = _probe(health)
    assert not answer.ready and answer.checks.redis.error == "PING: ConnectionError: Connection refused"
    assert answer.checks.broker.ok and _gauge(metrics, "redis") == 0.0
    health.ping = hang
    assert _probe(health).checks.redis.error == "PING: no answer within 0.05s"
    health.ping = ping
    answers[0] = None
    assert _probe(health).checks.redis.ok
