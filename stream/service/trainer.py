"""The model trainer: exactly one worker at a time (a Redis lease) learns and publishes.

Workers score with the last published checkpoint and append what there is to learn (resolved
churn examples, segment vectors) to a Redis stream in the same atomic write as the user's state.
The lease holder reads that stream in order, learns (progressive validation happens in
``ChurnModel.learn``), and periodically publishes a checkpoint together with the stream position
it covers. A new lease holder (after a crash or rebalance) restores that checkpoint and continues
from its position, so learning is neither reset nor repeated. A corrupt or incompatible
checkpoint is reported and replaced by a fresh model. Every worker scores with the last checkpoint
(``Scoring``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
from typing import Any

import orjson

from stream.metrics import Metrics
from stream.models import CheckpointError, Models, ModelsConfig, dump, restore
from stream.service.retry import RedisRetry
from stream.storage.store import Store

log = logging.getLogger(__name__)
READ_BATCH = 5000
# Learning costs ~65 µs per item and the trainer shares the event loop with ingest: yield every
# LEARN_SLICE items (~2 ms) so a second's worth of examples does not stall a batch for 30+ ms.
LEARN_SLICE = 32


class Trainer:
    def __init__(
        self,
        store: Store,
        config: ModelsConfig,
        metrics: Metrics,
        checkpoint_interval_s: float,
        lease_s: float = 30.0,
        event_time: bool = False,
    ) -> None:
        """``checkpoint_interval_s``: a tick that learned something publishes once this many
        seconds of wall time have passed since the last publish, and with ``event_time``
        (``PORTRAIT_CLOCK=event``) also once the input's event clock (the store's) has moved on by
        as much: a replay sweeps months of event time in a minute, and on wall time alone the
        workers scored that history with a checkpoint months behind it (live, the two clocks
        agree)."""
        self.store = store
        self.config = config
        self.metrics = metrics
        self.checkpoint_interval_s = checkpoint_interval_s
        self.event_time = event_time
        self.published_clock = float("-inf")  # event clock at the last publish
        self.lease_ms = int(lease_s * 1000)
        self.holder = f"{socket.gethostname()}-{os.getpid()}"
        self.models: Models | None = None
        self.position = "0-0"
        self.unpublished = 0
        self.last_publish = 0.0
        self.drifts_reported = 0  # churn drifts already counted in the metric

    async def tick(self) -> int:
        """Learn what arrived since the last tick if this worker holds the lease; returns items learned."""
        if not await self.store.acquire_trainer_lease(self.holder, self.lease_ms):
            self.models = None  # someone else trains; reload their checkpoint if we ever get the lease
            return 0
        if self.models is None:
            await self._resume()
        assert self.models is not None
        learned = 0
        while True:
            batch = await self.store.read_model_items(self.position, READ_BATCH)
            for n, (_, entry_id, raw) in enumerate(batch.items):
                if n and n % LEARN_SLICE == 0:
                    self.position = batch.position_after(n)  # what a cancellation at the await keeps
                    await asyncio.sleep(0)
                try:
                    self.models.learn_item(orjson.loads(raw))
                except Exception:
                    self.metrics.processing_errors.labels("model_learn").inc()
                    log.exception("cannot learn model item %s", entry_id)
            self.position = batch.position_after(len(batch.items))
            learned += len(batch.items)
            self.unpublished += len(batch.items)
            # also between rounds: a tick that never catches up (a backfill writing items as fast
            # as they are learned) published nothing until the input stopped, and the workers
            # scored the whole history with the first checkpoints (churn band never "high")
            if self.unpublished and await self._publish_due():
                await self.publish()
            if not batch.more:
                break
        return learned

    async def _publish_due(self) -> bool:
        if time.monotonic() - self.last_publish >= self.checkpoint_interval_s:
            return True
        return (
            self.event_time and (await self.store.clock() or 0.0) - self.published_clock >= self.checkpoint_interval_s
        )

    async def _resume(self) -> None:
        raw, position, version = await self.store.model_checkpoint()
        self.models, self.position = Models(self.config), "0-0"
        if raw is not None:
            try:
                self.models, self.position = restore(raw, self.config), position
                log.info("trainer resumed model checkpoint v%d at stream position %s", version, position)
            except CheckpointError as exc:
                log.error("model checkpoint v%d unusable (%s); training a fresh model", version, exc)
                self.metrics.processing_errors.labels("model_checkpoint").inc()
        else:
            log.info("no model checkpoint yet; training a fresh model")

    def status(self) -> dict[str, Any]:
        assert self.models is not None
        m = self.models.churn.metrics()

        def num(x: float) -> float | None:
            return None if math.isnan(x) else round(x, 6)

        return {
            "churn": {
                "examples": m.examples,
                "auc": num(m.auc),
                "baseline_auc": num(m.baseline_auc),
                "log_loss": num(m.log_loss),
                "positive_rate": num(m.positive_rate),
                "drifts": m.drifts,
                "version": m.version,
            },
            "segments": [d.__dict__ for d in self.models.segments.describe()],
            "published_at": time.time(),
        }

    async def publish(self) -> int:
        assert self.models is not None
        self.models.segments.publish()
        status = self.status()
        clock = await self.store.clock() if self.event_time else None
        version = await self.store.publish_checkpoint(dump(self.models), self.position, status)
        self.unpublished, self.last_publish = 0, time.monotonic()
        if clock is not None:
            self.published_clock = clock
        churn = status["churn"]
        if churn["auc"] is not None:
            self.metrics.model_auc.labels("churn").set(churn["auc"])
            self.metrics.model_auc.labels("churn_recency_baseline").set(churn["baseline_auc"])
        if churn["log_loss"] is not None:
            self.metrics.model_log_loss.labels("churn").set(churn["log_loss"])
        new_drifts = churn["drifts"] - self.drifts_reported
        if new_drifts > 0:
            self.metrics.model_drift.labels("churn").inc(new_drifts)
            log.warning("churn model drift detected (%d so far)", churn["drifts"])
        self.drifts_reported = churn["drifts"]
        self.metrics.model_checkpoint_time.labels("models").set(time.time())
        log.info("published model checkpoint v%d (churn examples %d)", version, churn["examples"])
        return version


class Scoring:
    """The models a worker scores with (None: models disabled), kept at the trainer's last
    published checkpoint; an unusable checkpoint is reported and the current models kept."""

    def __init__(self, models: Models | None, store: Store, retry: RedisRetry, metrics: Metrics) -> None:
        self.models, self.store, self.retry, self.metrics = models, store, retry, metrics
        self.version = 0

    async def sync(self) -> None:
        """Load the trainer's newer checkpoint (its version arrived with the store's last ``load``)."""
        if self.models is None or self.store.models_version_seen <= self.version:
            return
        raw, _, version = await self.retry("models", self.store.model_checkpoint)
        if raw is None:
            return
        try:
            self.models = restore(raw, self.models.config)
        except CheckpointError as exc:
            self.metrics.processing_errors.labels("model_checkpoint").inc()
            log.error("model checkpoint v%d unusable (%s); keeping model v%d", version, exc, self.version)
        self.version = version
        self.metrics.model_version.set(version)
