"""Component tier (real Valkey): the trainer publishes a due checkpoint between its rounds of
reads, not only when it has caught up. In a backfill the workers write items as fast as a tick
learns them, so a tick ran until the input stopped, and the workers scored the whole history with
the first checkpoints (the churn band was never "high" during a 5,000-customer backfill)."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from stream.metrics import Metrics
from stream.models import Models, load_models_config
from stream.models.features import feature_columns
from stream.service.trainer import READ_BATCH, Trainer
from tests.integration.helpers import store_for

pytestmark = pytest.mark.integration


def test_a_tick_of_several_rounds_publishes_after_each_round_that_makes_one_due(make_settings) -> None:
    settings = make_settings()
    config = load_models_config(None)
    vector = dict.fromkeys(feature_columns(Models(config).segment_specs), 0.5)
    item = orjson.dumps({"kind": "segment", "x": vector})

    async def run() -> tuple[int, int]:
        store = store_for(settings)
        try:
            pipe = store.client.pipeline(transaction=False)
            for n in range(READ_BATCH + 1000):  # two rounds of reads
                pipe.xadd(store.keys.model_examples(n % store.keys.shards), {"i": item})
            await pipe.execute()
            trainer = Trainer(store, config, Metrics(), checkpoint_interval_s=0.0)  # every round is due
            learned = await trainer.tick()
            _, _, version = await store.model_checkpoint()
            return learned, version
        finally:
            await store.close()

    learned, version = asyncio.run(run())
    assert learned == READ_BATCH + 1000
    assert version == 2  # one checkpoint per round; before, one at the end of the tick
