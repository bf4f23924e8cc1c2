"""Models learn live from the stream: churn beats the recency baseline, segments separate the
seeded personas, and a worker restart continues from the published checkpoint."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest
import yaml
from portrait_dev import synth

from stream.models.config import default_models_path
from stream.storage.store import Store, position_covers
from tests.integration.helpers import replay_and_settle, worker

pytestmark = pytest.mark.integration
AUC_MARGIN = 0.0  # measured (14-day horizon): 0.733 vs 0.700; the cutoff evaluation is the quality figure


async def _model_state(settings) -> tuple[dict, int, dict[str, str]]:
    async with Store.open(settings) as store:
        # wait until a published checkpoint covers every item written so far (not the streams'
        # length: a trim keeps each shard's last covered entry, so it never falls to zero)
        head = await store.model_examples_head()
        for _ in range(300):
            _, position, _ = await store.model_checkpoint()
            if await store.model_status() and (head is None or position_covers(position, head, store.keys.shards)):
                break
            await asyncio.sleep(0.2)
        else:
            pytest.fail(f"no checkpoint covers the items written up to {head} after 60 s")
        status = await store.model_status()
        _, _, version = await store.model_checkpoint()
        segments: dict[str, str] = {}
        async for key in store.client.scan_iter(match=store.keys.audience_pattern, count=1000):
            tag, seg = store.keys.parse_audience(key.decode())
            if tag != "behaviour_segment":
                continue
            for member in await store.client.smembers(key):
                segments[member.decode()] = seg
        return status, version, segments


def purity(segments: dict[str, str], personas: dict[str, str]) -> float:
    by_segment: dict[str, Counter[str]] = {}
    for user, seg in segments.items():
        by_segment.setdefault(seg, Counter())[personas[user]] += 1
    return sum(c.most_common(1)[0][1] for c in by_segment.values()) / max(1, len(segments))


def _short_horizon(tmp_path: Path) -> Path:
    """The shipped models.yaml with a 14-day horizon and a weekly cadence: 85 days of data close
    label windows (the shipped 90 days would close none)."""
    doc = yaml.safe_load(default_models_path().read_text())
    doc["churn"].update({"horizon": "14d", "snapshot_interval": "7d"})
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_models_learn_live_and_survive_a_restart(make_settings, tmp_path: Path) -> None:
    settings = make_settings(clock="event", model_checkpoint_interval_s=1.0, models_file=_short_horizon(tmp_path))
    users, seed = 400, 7
    events = synth.generate(users=users, events=12000, seed=seed, days=85)
    personas = synth.personas(users=users, seed=seed)
    half = len(events) // 2
    log = tmp_path / "worker.log"
    with worker(settings, log):
        replay_and_settle(settings, events[:half], counter="events_applied")
        status1, version1, _ = asyncio.run(_model_state(settings))
    with worker(settings, log):  # a new process: must resume, not reset
        replay_and_settle(settings, events[half:], counter="events_applied")
        status2, version2, segments = asyncio.run(_model_state(settings))

    assert "trainer resumed model checkpoint" in log.read_text()
    assert version2 > version1 > 0
    churn1, churn2 = status1["churn"], status2["churn"]
    assert churn2["examples"] > churn1["examples"] > 0
    print(f"churn: {churn2['examples']} examples, AUC {churn2['auc']:.3f} vs recency {churn2['baseline_auc']:.3f}")
    assert churn2["auc"] > churn2["baseline_auc"] + AUC_MARGIN
    score = purity(segments, personas)
    print(f"segments: {len(set(segments.values()))} for {len(segments)} users, purity {score:.3f}")
    assert len(segments) > 0.9 * users
    assert score > 0.3  # one segment for everyone scores ~0.18 on this persona mix
    descriptions = status2["segments"]
    assert descriptions and all(d["text"] and 0 <= d["share"] <= 1 for d in descriptions)
