"""``CHANGES_AT`` (which change points can move which tag) against ``evaluate`` itself.

Synthetic users of every persona: each tick-free tag is evaluated every 2 hours over the 100 days
after the user's last event (no event in between, so only time moves the tags), and wherever its
value differs between two samples, one of the change points ``change_points`` gives for that tag
alone must lie between them. The reference is ``evaluate``; the mapping is what is checked.
"""

from __future__ import annotations

from collections import defaultdict

import orjson
from portrait_dev import synth

from stream.contracts.events import parse_event
from stream.tagging.definitions import load_catalogue
from stream.tagging.engine import CHANGES_AT, RfmThresholds, apply_event, change_points, evaluate, retention_end
from stream.tagging.state import UserState

DAY = 86400.0
PARAMS = load_catalogue().params
STEP = 2 * 3600.0  # finer than the 6 h cart timer


def _states() -> list[UserState]:
    by_user: dict[str, UserState] = defaultdict(UserState)
    for offset, raw in enumerate(synth.generate(users=12, events=900, seed=5, days=60)):
        event = parse_event(orjson.dumps(raw))
        apply_event(by_user[event.subject_id], event, "t/0", offset, PARAMS)
    return [s for s in by_user.values() if s.last_seen is not None]


def test_each_tick_free_tag_changes_only_at_its_own_change_points() -> None:
    thresholds = RfmThresholds(version=1, r=(1.0, 2.0, 3.0, 4.0), f=(1, 2, 3, 4), m=(100, 200, 300, 400))
    states = _states()
    assert len(states) >= 10
    moved: set[str] = set()
    for state in states:
        assert state.last_seen is not None
        start = state.last_seen
        times = [start + i * STEP for i in range(int(100 * DAY / STEP))]
        samples = [evaluate(state, t, thresholds, PARAMS) for t in times]
        for tag in CHANGES_AT:
            points = sorted(change_points(state, PARAMS, tags=[tag]))
            for i in range(1, len(times)):
                t1, t2, a, b = times[i - 1], times[i], samples[i - 1], samples[i]
                if a.get(tag) != b.get(tag):
                    moved.add(tag)
                    assert any(t1 < p <= t2 for p in points), (tag, t1, t2, a.get(tag), b.get(tag))
    # the check bites: the window, trend, daypart and cart tags do move over those days
    assert {"events_7d", "events_30d", "frequency_90d", "activity_trend", "cart_abandoned"} <= moved


def test_a_tag_of_unknown_timing_gets_every_change_point() -> None:
    state = _states()[0]
    every = sorted(change_points(state, PARAMS))
    assert sorted(change_points(state, PARAMS, tags=["recency_days"])) == every
    # thresholds and events move the RFM tags, never time: only the deletion remains
    assert change_points(state, PARAMS, tags=["rfm_segment"]) == [retention_end(state)]
