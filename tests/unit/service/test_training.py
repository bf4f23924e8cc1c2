"""Where the trainer runs (stream/service/training.py), with a stand-in for the Trainer: a tick's
outcome in the metrics, readiness, the loop's stop and final publish, the web views."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from stream.metrics import Metrics
from stream.service.training import TrainerProcess, train_once


class StandInTrainer:
    """Holds the lease (``models`` set) or not, learns ``batches`` items per tick, may fail."""

    def __init__(self, batches: list[int], holds: bool = True, fail: bool = False) -> None:
        self.batches, self.holds, self.fail = batches, holds, fail
        self.models: Any = None
        self.unpublished = 0
        self.published: list[int] = []
        self.ticks = 0

    async def tick(self) -> int:
        self.ticks += 1
        if self.fail:
            raise ConnectionError("Redis went away")
        self.models = object() if self.holds else None
        learned = self.batches.pop(0) if self.batches else 0
        self.unpublished += learned
        return learned

    async def publish(self) -> int:
        self.published.append(self.unpublished)
        self.unpublished = 0
        return len(self.published)


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels or None)


def test_a_tick_sets_the_lease_gauge_and_counts_what_was_learned() -> None:
    metrics = Metrics()
    holder = StandInTrainer([3, 4])
    assert asyncio.run(train_once(holder, metrics))  # type: ignore[arg-type]
    assert asyncio.run(train_once(holder, metrics))  # type: ignore[arg-type]
    assert sample(metrics, "portrait_trainer_lease_held") == 1
    assert sample(metrics, "portrait_model_items_learned_total") == 7

    standby = StandInTrainer([5], holds=False)
    other = Metrics()
    assert asyncio.run(train_once(standby, other))  # type: ignore[arg-type]
    assert sample(other, "portrait_trainer_lease_held") == 0


def test_a_failing_tick_is_counted_not_raised() -> None:
    metrics = Metrics()
    metrics.trainer_lease_held.set(1)
    assert not asyncio.run(train_once(StandInTrainer([], fail=True), metrics))  # type: ignore[arg-type]
    assert sample(metrics, "portrait_processing_errors_total", stage="trainer") == 1
    assert sample(metrics, "portrait_trainer_lease_held") == 0


def test_readiness_follows_the_ticks() -> None:
    process = TrainerProcess(StandInTrainer([]), Metrics(), interval_s=1.0)  # type: ignore[arg-type]
    starting = process.readiness()
    assert not starting.ready and starting.error == "starting" and starting.last_tick_s_ago is None
    process.last_ok = process.started_at
    assert process.readiness().ready
    process.last_ok -= 11.0  # older than max(5 ticks, 10 s)
    process.failed = 11
    late = process.readiness()
    assert not late.ready and late.failed_ticks == 11 and "11 failed" in (late.error or "")


def run_until(process: TrainerProcess, trainer: StandInTrainer, ticks: int) -> None:
    """Run the loop until ``trainer`` has ticked ``ticks`` times, then stop it."""

    async def scenario() -> None:
        task = asyncio.create_task(process.run())
        while trainer.ticks < ticks:
            await asyncio.sleep(0.005)
        process.stop()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())


def test_stop_ends_the_loop_and_the_holder_publishes_what_it_learned() -> None:
    trainer = StandInTrainer([2, 3])
    process = TrainerProcess(trainer, Metrics(), interval_s=0.01)  # type: ignore[arg-type]
    run_until(process, trainer, 3)
    assert trainer.published == [5] and trainer.unpublished == 0
    assert process.failed == 0 and process.last_ok is not None


def test_a_standby_publishes_nothing_when_it_stops() -> None:
    trainer = StandInTrainer([], holds=False)
    trainer.unpublished = 4  # left over from a lease it lost: another holder owns the learning now
    process = TrainerProcess(trainer, Metrics(), interval_s=0.01)  # type: ignore[arg-type]
    run_until(process, trainer, 2)
    assert trainer.published == []


def test_web_views() -> None:
    trainer = StandInTrainer([6])
    metrics = Metrics()
    process = TrainerProcess(trainer, metrics, interval_s=1.0)  # type: ignore[arg-type]

    async def scenario() -> dict[str, Any]:
        async with TestClient(TestServer(process.web_app())) as client:
            answers: dict[str, Any] = {}
            for path in ("/livez", "/readyz"):
                resp = await client.get(path)
                answers[path] = (resp.status, orjson.loads(await resp.read()))
            await train_once(trainer, metrics)  # type: ignore[arg-type]
            process.last_ok = process.started_at
            resp = await client.get("/readyz")
            answers["ready"] = (resp.status, orjson.loads(await resp.read()))
            resp = await client.get("/metrics")
            answers["/metrics"] = (resp.status, await resp.text())
            return answers

    answers = asyncio.run(scenario())
    assert answers["/livez"][0] == 200 and answers["/livez"][1]["alive"] is True
    assert answers["/readyz"][0] == 503 and answers["/readyz"][1]["lease_held"] is False
    assert answers["ready"][0] == 200 and answers["ready"][1]["lease_held"] is True
    status, text = answers["/metrics"]
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}
    assert status == 200
    assert samples["portrait_trainer_lease_held"] == 1 and samples["portrait_model_items_learned_total"] == 6


def test_in_event_time_a_checkpoint_is_due_each_interval_of_event_time_too() -> None:
    """Wall time alone: a replay sweeping months of event time in a minute was scored with a
    checkpoint months behind it. In event time the input's event clock (the store's) also makes
    one due, each ``checkpoint_interval_s`` of it; in wall time it does not count."""
    import time

    from stream.models import load_models_config
    from stream.service.trainer import Trainer

    def trainer(event_time: bool) -> Trainer:
        made = Trainer(None, load_models_config(None), Metrics(), 10.0, event_time=event_time)  # type: ignore[arg-type]
        made.last_publish, made.published_clock = time.monotonic(), 1_000.0  # just published
        return made

    replay, live = trainer(event_time=True), trainer(event_time=False)
    assert not replay._publish_due(1_009.0)
    assert replay._publish_due(1_010.0) and not live._publish_due(1_010.0)
    live.last_publish -= 10.0  # ten seconds of wall time since the last publish
    assert live._publish_due(1_000.0)
