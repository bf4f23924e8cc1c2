"""The model trainer: exactly one worker at a time (a Redis lease) learns and publishes.

Workers score with the last published checkpoint and append what there is to learn (resolved
churn examples, segment vectors) to a Redis stream in the same atomic write as the user's state.
The lease holder reads that stream in order, learns (progressive validation happens in
``ChurnModel.learn``), and periodically publishes a checkpoint together with the stream position
it covers. A new lease holder (after a crash or rebalance) restores that checkpoint and continues
from its position, so learning is neither reset nor repeated. A corrupt or incompatible
checkpoint is reported and replaced by a fresh model. Every worker scores with the last checkpoint
(``Scoring``).

In event time (a backfill) the trainer learns churn examples in the order their labels resolved
(each at its deadline, snapshot time + horizon), not in the order workers wrote them: a worker
applies a user's events ahead of the watermark, and the labels those resolve (mostly returns) were
written months before the ones the time-driven path resolves at the watermark (mostly churned); the
model followed each skewed stretch, and the high band at the end of a 5,000-customer backfill held
291 to 4,463 of 4,502 customers across runs. So an example is held until the time-driven path has
evaluated every user due up to its deadline (``Store.timed``: every label due by then has been
written) and the trainer has read every item written before it read that time (the trainer reads
behind the writes), and the held ones are learned by deadline. They are checkpointed with the model
(``Store.publish_checkpoint``), so a new lease holder neither loses nor repeats them. Live, labels
are written in deadline order and nothing waits.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import os
import socket
import time
import zlib
from typing import Any

import orjson

from stream.metrics import Metrics
from stream.models import CheckpointError, Models, ModelsConfig, dump, restore
from stream.service.retry import RedisRetry
from stream.storage.store import Store, position_covers

log = logging.getLogger(__name__)
READ_BATCH = 5000
# Learning costs ~65 µs per item and the trainer shares the event loop with ingest: yield every
# LEARN_SLICE items (~2 ms) so a second's worth of examples does not stall a batch for 30+ ms.
LEARN_SLICE = 32
# In event time (a backfill) no event waits on a latency goal, and between slices the trainer
# waited on whole batches: it read the items 10-20 s of wall time behind the workers (months of
# event time), so they scored with a model that had not learned the latest labels. ~65 ms.
EVENT_TIME_LEARN_SLICE = 1024


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
        self.published_release = -math.inf  # ``release`` at the last publish
        self.tick_clock: float | None = None  # event clock at the end of the last tick
        self.lease_ms = int(lease_s * 1000)
        self.holder = f"{socket.gethostname()}-{os.getpid()}"
        self.models: Models | None = None
        self.position = "0-0"
        self.unpublished = 0
        self.last_publish = 0.0
        self.drifts_reported = 0  # churn drifts already counted in the metric
        # items read and not learned yet, by (release time, read order): see the module docstring
        self.held: list[tuple[float, int, dict[str, Any]]] = []
        self.read_count = 0
        self.release = -math.inf  # held churn examples with a deadline up to this are learned
        # (stream head, Store.timed read just before it): releases once the position covers the head
        self.releases: list[tuple[str | None, float]] = []

    def _hold(self, item: dict[str, Any]) -> None:
        """Queue a read item: a churn example (in event time) until its deadline, anything else
        to be learned in read order at once."""
        release = -math.inf
        if self.event_time and item.get("kind") == "churn":
            release = float(item["ts"]) + self.config.churn.horizon
        heapq.heappush(self.held, (release, self.read_count, item))
        self.read_count += 1

    async def _learn_released(self, until: float) -> int:
        """Learn the held items released by ``until`` (release order); returns how many."""
        assert self.models is not None
        learned, slice_size = 0, EVENT_TIME_LEARN_SLICE if self.event_time else LEARN_SLICE
        while self.held and self.held[0][0] <= until:
            if learned and learned % slice_size == 0:
                await asyncio.sleep(0)  # a cancellation here keeps the rest held (and checkpointed)
            _, _, item = heapq.heappop(self.held)
            learned += 1
            try:
                self.models.learn_item(item)
            except Exception:
                self.metrics.processing_errors.labels("model_learn").inc()
                log.exception("cannot learn model item %r", item.get("kind"))
        return learned

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
            clock = await self._note_release() if self.event_time else 0.0
            batch = await self.store.read_model_items(self.position, READ_BATCH)
            for _, entry_id, raw in batch.items:
                try:
                    self._hold(orjson.loads(raw))
                except Exception:
                    self.metrics.processing_errors.labels("model_learn").inc()
                    log.exception("cannot read model item %s", entry_id)
            self.position = batch.position_after(len(batch.items))
            n = await self._learn_released(self._release_time())
            learned += n
            self.unpublished += n
            self.metrics.model_items_held.set(len(self.held))
            # also between rounds: a tick that never catches up (a backfill writing items as fast
            # as they are learned) published nothing until the input stopped, and the workers
            # scored the whole history with the first checkpoints (churn band never "high")
            if self.unpublished and self._publish_due(clock):
                await self.publish()
            if not batch.more:
                break
        if self.event_time:
            # The event clock stood still for a tick (the input stopped or pauses): what can be
            # learned is, so publish it now, not a wall interval later. The workers wait for that
            # checkpoint before they bring every profile to the clock (``Processor.freshen``).
            idle, self.tick_clock = clock == self.tick_clock, clock
            if idle and (self.unpublished or self.release > self.published_release):
                await self.publish()
        return learned

    async def _note_release(self) -> float:
        """Note how far the time-driven path has drained (``Store.timed``) with the stream head
        written by then; returns the store's event clock."""
        clock, timed = await self.store.timed()
        if timed > (self.releases[-1][1] if self.releases else self.release):  # noted ones only grow
            self.releases.append((await self.store.model_examples_head(), timed))
        return clock

    def _release_time(self) -> float:
        """The deadline up to which held churn examples are learned (every later one: in wall
        time): the latest drained time whose stream head the position covers."""
        if not self.event_time:
            return math.inf
        shards = self.store.keys.shards
        while self.releases and ((head := self.releases[0][0]) is None or position_covers(self.position, head, shards)):
            self.release = self.releases.pop(0)[1]
        return self.release

    def _publish_due(self, clock: float) -> bool:
        """Whether a checkpoint is due, ``clock`` being the store's event clock (event time only)."""
        if time.monotonic() - self.last_publish >= self.checkpoint_interval_s:
            return True
        return self.event_time and clock - self.published_clock >= self.checkpoint_interval_s

    async def _resume(self) -> None:
        raw, position, version, held = await self.store.trainer_checkpoint()
        self.models, self.position, self.held = Models(self.config), "0-0", []
        self.release, self.releases = -math.inf, []
        if raw is None:
            log.info("no model checkpoint yet; training a fresh model")
            return
        try:
            models, items = restore(raw, self.config), orjson.loads(zlib.decompress(held)) if held else []
        except (CheckpointError, orjson.JSONDecodeError, zlib.error) as exc:
            log.error("model checkpoint v%d unusable (%s); training a fresh model", version, exc)
            self.metrics.processing_errors.labels("model_checkpoint").inc()
            return
        self.models, self.position = models, position
        for item in items:
            self._hold(item)
        log.info(
            "trainer resumed model checkpoint v%d at stream position %s (%d items held)", version, position, len(items)
        )

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
                "held": sum(1 for _, _, item in self.held if item.get("kind") == "churn"),
            },
            "segments": [d.__dict__ for d in self.models.segments.describe()],
            "published_at": time.time(),
        }

    async def publish(self) -> int:
        assert self.models is not None
        self.models.segments.publish()
        status = self.status()
        clock = await self.store.clock() if self.event_time else None
        # compressed: a backfill of 5,000 customers held ~12,000 examples (4.7 MB of JSON, ~0.7 MB)
        held = zlib.compress(orjson.dumps([item for _, _, item in sorted(self.held)]), 1) if self.held else None
        released = self.release if self.event_time else math.inf  # live, nothing is held back
        version = await self.store.publish_checkpoint(dump(self.models), self.position, status, held, released)
        self.unpublished, self.last_publish, self.published_release = 0, time.monotonic(), released
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
        log.info(
            "published model checkpoint v%d (churn examples %d, %d held)", version, churn["examples"], churn["held"]
        )
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
