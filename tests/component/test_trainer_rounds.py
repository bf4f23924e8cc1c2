"""Component tier (real Valkey): the trainer publishes a due checkpoint between its rounds of
reads, not only when it has caught up. In a backfill the workers write items as fast as a tick
learns them, so a tick ran until the input stopped, and the workers scored the whole history with
the first checkpoints (the churn band was never "high" during a 5,000-customer backfill)."""

from __future__ import annotations

import asyncio
import zlib

import orjson
import pytest

from stream.metrics import Metrics
from stream.models import Models, load_models_config
from stream.models.features import feature_columns
from stream.service.processor import Processor
from stream.service.trainer import READ_BATCH, Trainer
from stream.storage.store import Store
from stream.tagging.definitions import load_catalogue
from tests.integration.helpers import no_dead_letters, store_for

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


DAY = 86_400.0


def test_in_event_time_the_trainer_learns_churn_examples_in_deadline_order_and_checkpoints_the_held_ones(
    make_settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backfill writes a returning customer's example (applied ahead of the watermark) long
    before the churned ones the time-driven path resolves at it; learned in that order, the model
    followed each skewed stretch. In event time the trainer learns by deadline (snapshot time +
    horizon), holds an example until the time-driven path has drained past its deadline, and
    checkpoints what it holds: the next lease holder learns it once, and nothing twice. It reads two
    items a round here: what the time-driven path had drained when the trainer looked is released
    only once the trainer has read every item written by then (it reads behind the writes)."""
    monkeypatch.setattr("stream.service.trainer.READ_BATCH", 2)
    settings = make_settings()
    config = load_models_config(None)
    horizon = config.churn.horizon
    x = dict.fromkeys(feature_columns(Models(config).churn_specs), 0.5)
    # (deadline in days, label), in the order the workers wrote them
    written = [(50.0, 0), (20.0, 1), (200.0, 0), (30.0, 1)]

    async def write(store: Store) -> None:
        pipe = store.client.pipeline(transaction=False)
        for n, (deadline, label) in enumerate(written):
            item = {"kind": "churn", "x": x, "ts": deadline * DAY - horizon, "y": label}
            pipe.xadd(store.keys.model_examples(n % store.keys.shards), {"i": orjson.dumps(item)})
        await pipe.execute()

    async def run() -> tuple[list[tuple[int, float]], list[tuple[int, float]], bytes | None, list[tuple[int, float]]]:
        store = store_for(settings)
        try:
            await write(store)
            await store.advance_clock(250 * DAY)  # the events applied reach day 250
            await store.advance_timed(100 * DAY)  # and the time-driven path day 100

            def order(trainer: Trainer) -> list[tuple[int, float]]:
                assert trainer.models is not None and trainer.models.churn.record is not None
                return [(y, (ts + horizon) / DAY) for y, _, _, ts in trainer.models.churn.record]

            metrics = Metrics()
            first = Trainer(store, config, metrics, checkpoint_interval_s=0.0, event_time=True)
            await first._resume()
            assert first.models is not None
            first.models.churn.record = []
            assert await first.tick() == 3
            assert metrics.model_items_held._value.get() == 1  # the gauge an operator watches
            first.models.churn.record, learned_first = None, order(first)
            await first.publish()  # the checkpoint a crash leaves behind
            _, _, _, held = await store.trainer_checkpoint()
            assert (await store.model_status())["churn"]["held"] == 1  # what `models status` shows

            await store.client.delete(store.keys.model_trainer)  # the lease moves on
            await store.advance_timed(250 * DAY)
            second = Trainer(store, config, Metrics(), checkpoint_interval_s=0.0, event_time=True)
            await second._resume()
            assert second.models is not None
            second.models.churn.record = []
            assert await second.tick() == 1
            learned_second = order(second)
            assert second.status()["churn"]["examples"] == 4

            await store.client.delete(store.keys.model_trainer)
            await store.client.delete(*[store.keys.model_examples(s) for s in range(store.keys.shards)])
            await write(store)
            fresh = store_for(settings)  # no read-ahead of the streams just replaced
            try:
                live = Trainer(fresh, config, Metrics(), checkpoint_interval_s=0.0)  # wall time: read order
                live.models = Models(config)
                live.models.churn.record = []
                assert await live.tick() == 4
            finally:
                await fresh.close()
            return learned_first, learned_second, held, order(live)
        finally:
            await store.close()

    learned_first, learned_second, held, live = asyncio.run(run())
    assert learned_first == [(1, 20.0), (1, 30.0), (0, 50.0)]  # by deadline, up to day 100
    assert held is not None and [item["ts"] for item in orjson.loads(zlib.decompress(held))] == [200 * DAY - horizon]
    assert learned_second == [(0, 200.0)]  # the held one, once; none of the others again
    assert live == [(0, 50.0), (1, 20.0), (0, 200.0), (1, 30.0)]  # as written


def test_the_time_driven_path_records_how_far_every_due_user_is_evaluated(make_settings) -> None:
    """``clock:timed`` is the lower of the drained watermark and the earliest due score still
    indexed (a drain bounded per tick stops short of the watermark), and never moves back."""
    settings = make_settings()

    async def run() -> list[float]:
        store = store_for(settings)
        try:
            seen = [await store.advance_timed(100.0)]  # nothing due: the watermark
            await store.client.zadd(store.keys.due_index, {"3": 140.0, "7": 120.0})
            seen.append(await store.advance_timed(200.0))  # shard 7 still has a user due at 120
            await store.client.zadd(store.keys.due_index, {"7": 110.0})  # lower than recorded
            seen.append(await store.advance_timed(200.0))
            await store.client.zadd(store.keys.due_index, {"7": 300.0, "3": 300.0})
            seen.append(await store.advance_timed(250.0))
            seen.append((await store.timed())[1])
            return seen
        finally:
            await store.close()

    assert asyncio.run(run()) == [100.0, 120.0, 120.0, 250.0, 250.0]


def _churn_item(x: dict[str, float], deadline_day: float, label: int, horizon: float) -> bytes:
    return orjson.dumps({"kind": "churn", "x": x, "ts": deadline_day * DAY - horizon, "y": label})


def test_when_the_event_clock_stands_still_the_trainer_publishes_what_a_freshen_waits_for(make_settings) -> None:
    """When a backfill's input stops, the workers bring every profile to the clock
    (``Processor.freshen``) once a checkpoint has read every item written and learned every
    label resolved by then (``Store.models_cover``). The trainer publishes that checkpoint at its
    first tick after the event clock stood still, not a wall interval later; before, a
    5,000-customer backfill could end scored by a checkpoint that had learned 9,554 of its 37,229
    examples, and the churn bands stayed so until each user's next evaluation."""
    settings = make_settings()
    config = load_models_config(None)
    horizon = config.churn.horizon
    x = dict.fromkeys(feature_columns(Models(config).churn_specs), 0.5)

    async def run() -> list[tuple[str, bool, int]]:
        store = store_for(settings)
        seen: list[tuple[str, bool, int]] = []

        async def note(when: str) -> None:
            _, _, version = await store.model_checkpoint()
            seen.append((when, await store.models_cover(60 * DAY), version))

        try:
            await note("nothing written")
            pipe = store.client.pipeline(transaction=False)
            for n, (day, label) in enumerate([(20.0, 1), (40.0, 0)]):
                pipe.xadd(store.keys.model_examples(n % store.keys.shards), {"i": _churn_item(x, day, label, horizon)})
            await pipe.execute()
            await store.advance_clock(60 * DAY)  # the events applied reach day 60
            await store.advance_timed(30 * DAY)  # the time-driven path day 30
            # no wall interval falls due here: the first tick publishes on the event clock's move
            trainer = Trainer(store, config, Metrics(), checkpoint_interval_s=3600.0, event_time=True)
            assert await trainer.tick() == 1  # day 20; day 40 is held
            await note("clock moved, drained to day 30")
            await store.advance_timed(60 * DAY)  # the input stopped: drained up to the clock
            assert await trainer.tick() == 1
            await note("clock stood still, drained to day 60")
            assert await trainer.tick() == 0
            await note("nothing new")
            await store.client.xadd(store.keys.model_examples(0), {"i": _churn_item(x, 50.0, 0, horizon)})
            await note("an item written after the checkpoint")
            return seen
        finally:
            await store.close()

    assert asyncio.run(run()) == [
        ("nothing written", True, 0),
        ("clock moved, drained to day 30", False, 1),  # published, but learned up to day 30 only
        ("clock stood still, drained to day 60", True, 2),
        ("nothing new", True, 2),  # an idle tick with nothing to add publishes nothing
        ("an item written after the checkpoint", False, 2),
    ]


def test_a_freshen_waits_for_the_checkpoint_of_the_history_and_goes_on_without_a_trainer(
    make_settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Processor.freshen`` with models: while no checkpoint covers what was written it does not
    mark every user due; once one does, it does; with no trainer it goes on after
    ``MODEL_WAIT_S``."""
    settings = make_settings(clock="event")
    config = load_models_config(None)
    horizon = config.churn.horizon
    x = dict.fromkeys(feature_columns(Models(config).churn_specs), 0.5)

    async def run() -> list[bool]:
        store = store_for(settings)
        try:
            proc = Processor(settings, load_catalogue(), store, no_dead_letters, Metrics(), models=Models(config))
            await store.client.xadd(store.keys.model_examples(0), {"i": _churn_item(x, 20.0, 1, horizon)})
            await store.advance_clock(60 * DAY)
            await store.advance_timed(60 * DAY)
            mark = 60 * DAY
            seen = [await proc.freshen(mark), await proc.freshen(mark)]  # the second sees a stable mark
            trainer = Trainer(store, config, Metrics(), checkpoint_interval_s=3600.0, event_time=True)
            await trainer.tick()
            seen.append(await proc.freshen(mark))
            seen.append(await proc.freshen(mark))  # done for this mark
            # a second history, and no trainer any more
            await store.client.xadd(store.keys.model_examples(1), {"i": _churn_item(x, 90.0, 0, horizon)})
            later = 120 * DAY
            await store.advance_clock(later)
            seen += [await proc.freshen(later), await proc.freshen(later)]
            monkeypatch.setattr("stream.service.processor.MODEL_WAIT_S", 0.0)
            seen.append(await proc.freshen(later))
            return seen
        finally:
            await store.close()

    assert asyncio.run(run()) == [False, False, True, False, False, False, True]
