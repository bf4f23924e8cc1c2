"""The trainer in its own process (``portrait trainer``, workers with ``PORTRAIT_TRAINER=external``):
the worker never learns, the trainer consumes what the worker wrote and publishes a checkpoint the
worker then scores with, and stopping the trainer does not stop ingest."""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.request
from pathlib import Path

import pytest
from portrait_dev import synth
from portrait_dev.harness import start_worker, wait_healthy
from portrait_dev.infra import free_port
from prometheus_client.parser import text_string_to_metric_families

from stream.kafka import replay
from stream.settings import Settings
from stream.storage.store import Store
from tests.integration.helpers import processed, read_stats, worker

pytestmark = pytest.mark.integration


def scrape(settings: Settings, port: int) -> dict[str, float]:
    """Unlabelled samples of a process's /metrics, by sample name."""
    with urllib.request.urlopen(f"http://{settings.web_host}:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


async def model_items(settings: Settings) -> tuple[str | None, str, int]:
    """(id of the last item written to learn, stream position the published checkpoint covers,
    checkpoint version), read from Redis."""
    async with Store.open(settings) as store:
        last = await store.model_examples_head()
        _, position, version = await store.model_checkpoint()
        return last, position, version


def beyond(after: str, before: str) -> bool:
    """Whether position ``after`` covers an item ``before`` does not (positions are one stream
    entry id per state shard: "shard/ms-seq,...", docs/redis-keys.md)."""

    def ids(position: str) -> dict[str, tuple[int, int]]:
        out = {}
        for part in position.split(","):
            shard, _, eid = part.partition("/")
            if eid:
                millis, _, seq = eid.partition("-")
                out[shard] = (int(millis), int(seq))
        return out

    old = ids(before)
    return any(shard not in old or eid > old[shard] for shard, eid in ids(after).items())


async def stream_length(settings: Settings) -> int:
    async with Store.open(settings) as store:
        return await store.model_examples_pending()


def wait_published(settings: Settings, timeout: float = 30.0) -> tuple[str | None, str, int]:
    """Wait until a checkpoint covers every item written so far."""
    deadline = time.monotonic() + timeout
    while True:
        last, position, version = asyncio.run(model_items(settings))
        if (version > 0 and position == last) or time.monotonic() > deadline:
            return last, position, version
        time.sleep(0.2)


def replay_and_wait(settings: Settings, events: list[dict]) -> None:
    """Replay ``events`` and wait until the worker has applied them (no settling: models only)."""
    before = asyncio.run(read_stats(settings)).get("events_applied", 0)
    report = asyncio.run(replay.replay(settings, events, progress=False))
    asyncio.run(processed(settings, before + report.total, counter="events_applied"))


def test_external_trainer_learns_and_ingest_outlives_it(make_settings, tmp_path: Path) -> None:
    settings = make_settings(
        clock="event", trainer="external", model_checkpoint_interval_s=1.0, trainer_web_port=free_port()
    )
    events = synth.generate(users=100, events=1200, seed=5, days=60)
    half = len(events) // 2
    trainer_log = tmp_path / "trainer.log"
    with worker(settings, tmp_path / "worker.log") as running:
        # no trainer process: the worker writes items to learn but learns nothing itself
        replay_and_wait(settings, events[:half])
        written, _, version_before = asyncio.run(model_items(settings))
        assert written is not None and version_before == 0
        items_before = asyncio.run(stream_length(settings))

        trainer = start_worker(settings, trainer_log, command="trainer")
        try:
            wait_healthy(settings, trainer, timeout=30, port=settings.trainer_web_port)
            last, position, version = wait_published(settings)
            assert version > 0 and position == last, f"checkpoint v{version} at {position}, last item {last}"
            trainer_metrics = scrape(settings, settings.trainer_web_port)
            assert trainer_metrics["portrait_trainer_lease_held"] == 1
            assert trainer_metrics["portrait_model_items_learned_total"] >= items_before
        except BaseException:
            print(trainer_log.read_text()[-5000:] if trainer_log.exists() else "(no trainer log)")
            raise
        finally:
            trainer.send_signal(signal.SIGTERM)
            returncode = trainer.wait(20)
        assert returncode == 0  # a graceful stop
        _, position_stopped, version_stopped = asyncio.run(model_items(settings))

        # with the trainer gone, ingest goes on: every event is applied, the worker scores with the
        # trainer's last checkpoint (loaded with the first user it reads) and items queue up again
        replay_and_wait(settings, events[half:])
        last_after, position_after, version_after = asyncio.run(model_items(settings))
        assert (position_after, version_after) == (position_stopped, version_stopped)
        assert last_after is not None and beyond(last_after, position_stopped)  # no trainer learned them
        worker_metrics = scrape(settings, settings.web_port)
        assert worker_metrics["portrait_model_version"] == version_stopped
        assert worker_metrics["portrait_trainer_lease_held"] == 0
        assert worker_metrics["portrait_model_items_learned_total"] == 0
        assert running.proc.poll() is None
