"""Event time: an event's age (``too_old``) is judged against its own partition, never another's.

Expected values by hand: the longest window is 90 days, so an event is too old when its UTC day is
more than 89 days before the day its own partition has reached.
"""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from stream.core.intake import Message, intake
from stream.core.progress import InputProgress
from stream.tagging.definitions import load_catalogue

CATALOGUE = load_catalogue()
DAY = 86400.0
T0 = datetime(2026, 10, 1, 12, tzinfo=UTC).timestamp()


def _message(partition: int, offset: int, at: float) -> Message:
    ts = datetime.fromtimestamp(at, UTC).isoformat()
    event = {"event_id": f"p{partition}-{offset}", "type": "page_view", "user_id": f"u{partition}", "ts": ts}
    return Message("t.clickstream", partition, offset, None, orjson.dumps(event))


def _intake(messages: list[Message], partition_clock: dict[str, float] | None, clock_now: float = T0):  # type: ignore[no-untyped-def]
    return intake(
        messages,
        CATALOGUE,
        wall_now=T0 + 400 * DAY,
        clock_now=clock_now,
        max_future_skew_s=300.0,
        processor_version="t",
        event_time=True,
        max_message_bytes=512 * 1024,
        partition_clock=partition_clock,
    )


def test_a_partition_running_ahead_makes_no_other_partitions_event_too_old() -> None:
    # partition 1 reached T0 + 200 d; partition 0 only T0: its event at T0 + 1 d is on time
    behind = _message(0, 5, T0 + DAY)
    valid, dead = _intake(
        [behind], {"t.clickstream/0": T0, "t.clickstream/1": T0 + 200 * DAY}, clock_now=T0 + 200 * DAY
    )
    assert [v.event.event_id for v in valid] == ["p0-5"] and dead == []


def test_an_event_late_within_its_own_partition_by_more_than_the_window_is_too_old() -> None:
    reached = T0 + 100 * DAY  # day D; the window keeps days >= D - 89
    on_edge = _message(0, 1, reached - 89 * DAY)
    late = _message(0, 2, reached - 90 * DAY)
    valid, dead = _intake([on_edge, late], {"t.clickstream/0": reached})
    assert [v.event.event_id for v in valid] == ["p0-1"]
    assert [(d.reason, d.source_offset) for d in dead] == [("too_old", 2)]


def test_a_partition_with_no_known_time_judges_nothing_too_old() -> None:
    valid, dead = _intake([_message(3, 0, T0 - 300 * DAY)], {"t.clickstream/0": T0})
    assert len(valid) == 1 and dead == []


def test_without_partition_times_the_clock_decides_as_in_wall_time() -> None:
    valid, dead = _intake([_message(0, 0, T0 - 90 * DAY)], None)
    assert valid == [] and [d.reason for d in dead] == ["too_old"]


def test_reached_takes_this_workers_applied_times_and_the_stored_progress() -> None:
    progress = InputProgress()
    batch = [_message(0, 0, T0), _message(0, 1, T0 + DAY)]
    valid, _ = _intake(batch, {})
    assert progress.update(batch, valid, None) is None  # no high-water marks: no watermark update
    stored = {b"t.clickstream/0": b"%.6f" % (T0 - DAY), b"t.clickstream/1": b"%.6f" % (T0 + 5 * DAY)}
    stored[b"t.clickstream/2"] = b"caught"
    stored[b"t.clickstream/3"] = b"0"
    assert progress.reached(stored) == {"t.clickstream/0": T0 + DAY, "t.clickstream/1": T0 + 5 * DAY}


def test_an_event_too_old_for_its_own_users_windows_is_not_applied() -> None:
    from stream.core.batch import too_late
    from stream.tagging.state import UserState

    state = UserState()
    state.evaluated_at = T0 + 100 * DAY  # day D: the windows keep days >= D - 89
    assert not too_late(state, T0 + 11 * DAY)  # day D - 89
    assert too_late(state, T0 + 10 * DAY)  # day D - 90
    assert not too_late(UserState(), T0 - 1000 * DAY)  # never evaluated: nothing was pruned


def test_an_earlier_event_of_the_same_batch_counts_so_batch_boundaries_never_matter() -> None:
    # partition 3 has no recorded time; its first batch holds an event at T0 and then one 100 days
    # older: the same too_old a later batch would give it (the demo's malformed too_old message)
    batch = [_message(3, 0, T0), _message(3, 1, T0 - 100 * DAY), _message(2, 0, T0 - 100 * DAY)]
    valid, dead = _intake(batch, {})
    assert sorted(v.event.event_id for v in valid) == ["p2-0", "p3-0"]
    assert [(d.reason, d.source_partition, d.source_offset) for d in dead] == [("too_old", 3, 1)]
    split = [_intake(batch[:1], {}), _intake(batch[1:2], {"t.clickstream/3": T0})]
    assert [d.reason for _, dead_part in split for d in dead_part] == ["too_old"]
