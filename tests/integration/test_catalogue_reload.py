"""Issue 11 §5: a changed tag catalogue is applied without a restart, like rules.

On a running worker: a new catalogue version (a new tag, moved value-tier thresholds) reaches
every profile without any new event (the bounded background sweep), each profile says which
catalogue version it was computed with, and the values equal the oracle's under the new
definitions; an invalid change or one that does not raise the version is rejected with a one-line
error and the previous catalogue stays active.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest
from portrait_dev import synth

from stream.storage.store import Store
from stream.tagging.definitions import default_tags_path
from tests import oracle
from tests.integration.helpers import replay_and_settle, wait_logged, worker

pytestmark = pytest.mark.integration
SHIPPED = default_tags_path().read_text()
CV_TAG = re.compile(r"  - \{name: cv_interpurchase,.*?\}\}\n", re.S)


def _catalogue(version: int, tiers: str, with_cv: bool) -> str:
    text = SHIPPED.replace("version: 1\n", f"version: {version}\n", 1)
    text = text.replace("value_tiers: {vip: 1000, high: 300, medium: 50}", f"value_tiers: {tiers}")
    return text if with_cv else CV_TAG.sub("", text)


async def _profiles(settings) -> tuple[dict[str, dict[str, str]], float]:
    async with Store.open(settings) as store:
        found = {}
        async for key in store.client.scan_iter(match=store.keys.profile_pattern, count=1000):
            uid = store.keys.parse_profile(key.decode())
            found[uid] = await store.profile(uid)
        return found, await store.clock() or 0.0


def _all_on(settings, version: str, timeout: float = 60.0) -> tuple[dict[str, dict[str, str]], float]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        profiles, clock = asyncio.run(_profiles(settings))
        if profiles and all(p.get("_tags_version") == version for p in profiles.values()):
            return profiles, clock
        time.sleep(0.3)
    left = sum(1 for p in profiles.values() if p.get("_tags_version") != version)
    raise AssertionError(f"{left} of {len(profiles)} profiles not on catalogue version {version}")


def test_a_changed_catalogue_reaches_every_profile_without_a_restart(make_settings, tmp_path: Path) -> None:
    tags = tmp_path / "tags.yaml"
    tags.write_text(_catalogue(1, "{vip: 1000, high: 300, medium: 50}", with_cv=False))
    settings = make_settings(clock="event", tags_file=tags, timer_interval_s=0.2, due_batch=50)
    events = synth.generate(users=80, events=2000, seed=43, days=30)
    log = tmp_path / "worker.log"
    with worker(settings, log):
        replay_and_settle(settings, events)
        before, _ = _all_on(settings, "1")
        assert not any("cv_interpurchase" in p for p in before.values())

        tags.write_text(_catalogue(2, "{vip: 200, high: 80, medium: 20}", with_cv=True))
        wait_logged(log, "tag catalogue reloaded: version 2")
        after, clock = _all_on(settings, "2")  # no event since: the sweep re-evaluated everyone

        # rejected: an invalid field, and a change that keeps the version; version 2 stays active
        tags.write_text(_catalogue(3, "{vip: 10, high: 80, medium: 20}", with_cv=True))
        line = wait_logged(log, "tag catalogue change rejected")
        assert f"{tags}: params.value_tiers: need vip > high > medium" in line
        tags.write_text(_catalogue(2, "{vip: 500, high: 80, medium: 20}", with_cv=True))
        line = wait_logged(log, f"{tags}: version: 2 must be above the active version 2")
        assert "tag catalogue change rejected, previous catalogue stays active" in line
        time.sleep(1.0)
        still, _ = asyncio.run(_profiles(settings))

    params = {"value_tier_cents": {"vip": 20000, "high": 8000, "medium": 2000}}
    want = oracle.compute_profiles(events, clock, params)
    tiers = {u: (after[u].get("value_tier"), after[u].get("cv_interpurchase")) for u in want}
    assert tiers == {u: (w.get("value_tier"), w.get("cv_interpurchase")) for u, w in want.items()}
    moved = sum(1 for u in want if before[u].get("value_tier") != after[u].get("value_tier"))
    assert moved > 5, f"only {moved} value tiers moved"
    assert any("cv_interpurchase" in p for p in after.values())
    assert all(p.get("_tags_version") == "2" for p in still.values())
