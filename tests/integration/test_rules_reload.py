"""Hot reload: a changed rules file changes behaviour mid-stream without a restart; an invalid
change (an unknown tag, a value outside the tag's domain) is rejected and the previous rules stay
active; a reload does not fire at everyone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from portrait_dev import synth

from tests.integration.helpers import event_time, replay_and_settle, wait_logged, worker
from tests.integration.triggers import read_triggers

pytestmark = pytest.mark.integration
COMPLAINT = """
  - id: care_after_complaint
    version: 3
    when: {tag: complaints_90d, crosses_above: 0}
    action: {type: care_sms, params: {template: complaint_care}}
    cooldown: 365d
"""
WELCOME = """
  - id: welcome_first_activity
    version: 1
    when: {tag: events_30d, crosses_above: 0}
    action: {type: coupon, params: {campaign: welcome, value: 3.0}}
    cooldown: 365d
"""


def _activity(events: list[dict]) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {}
    for e in events:
        if e["type"] != "identify":
            times.setdefault(e["user_id"], []).append(event_time(e))
    return times


def test_rules_hot_reload(make_settings, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\nrules:" + COMPLAINT)
    settings = make_settings(clock="event", rules_file=rules, delivery_horizon_s=0)
    events = synth.generate(users=200, events=5000, seed=29, days=85)
    half = len(events) // 2
    log = tmp_path / "worker.log"
    with worker(settings, log):
        replay_and_settle(settings, events[:half], counter="events_applied")
        assert "triggers.coupon" not in asyncio.run(read_triggers(settings, idle_s=1.0))

        rules.write_text("version: 1\nrules:" + COMPLAINT + WELCOME)
        wait_logged(log, "rules reloaded: 2 active")
        rules.write_text("version: 1\nrules:" + COMPLAINT + WELCOME.replace("events_30d", "no_such_tag"))
        wait_logged(log, "rules change rejected")
        # a value outside the tag's domain is rejected by the same loader
        rules.write_text("version: 1\nrules:" + COMPLAINT + WELCOME.replace("crosses_above: 0", "crosses_above: -10"))
        wait_logged(log, "crosses_above: '-10' is not a events_30d value (allowed: numbers >= 0)")

        replay_and_settle(settings, events[half:], counter="events_applied")
        got = asyncio.run(read_triggers(settings))

    fired = {t["user_id"] for t in got.get("triggers.coupon", [])}
    split = event_time(events[half])
    activity = _activity(events)
    new_users = {u for u, ts in activity.items() if min(ts) >= split}
    returning = {  # a 30+ day gap lets events_30d fall to 0 and cross above it again
        u
        for u, ts in activity.items()
        if any(b - a >= 29 * 86400 for a, b in zip(sorted(ts), sorted(ts)[1:], strict=False))
    }
    early = {u for u, ts in activity.items() if min(ts) < split}
    assert new_users and new_users <= fired, "the reloaded rule must fire for users first seen after the reload"
    assert fired <= new_users | returning, (
        f"reload fired at established users: {sorted(fired - new_users - returning)[:5]}"
    )
    assert len(fired & early) < 0.5 * len(early)
    assert got.get("triggers.care_sms"), "the rule kept across reloads still fires"
