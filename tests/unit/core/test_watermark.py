"""The event-time watermark checked against fresh end offsets (issue 11 §4): a partition holds the
clock back while it has messages waiting, whatever its stored CAUGHT flag says; an idle one holds
nothing back. Expected values are hand-computed from the stored progress below."""

from __future__ import annotations

from stream.core.progress import InputProgress, PartitionProgress
from stream.storage.store import CAUGHT, POSITION, progress_updates, watermark

DAY = 86400.0
T0 = 1_767_225_600.0  # 2026-01-01
CLOCK = T0 + 300 * DAY


def _stored(values: dict[str, str]) -> dict[bytes, bytes]:
    return {k.encode(): v.encode() for k, v in values.items()}


def test_a_stale_caught_flag_holds_the_clock_back_to_the_partition_while_messages_wait() -> None:
    # t/1's owner read it to the end of its last fetch (offset 10) on day 5; the broker has 30 now
    parts = _stored(
        {
            "t/0": CAUGHT,
            "t/0" + POSITION: f"500 {CLOCK:.6f}",
            "t/1": CAUGHT,
            "t/1" + POSITION: f"10 {T0 + 5 * DAY:.6f}",
        }
    )
    assert watermark(CLOCK, parts) == CLOCK  # the flags alone: nothing held back (the bug)
    assert watermark(CLOCK, parts, ends={"t/0": (0, 500), "t/1": (0, 30)}) == T0 + 5 * DAY
    # once every message of t/1 is handled, it holds nothing back any more
    assert watermark(CLOCK, parts, ends={"t/0": (0, 500), "t/1": (0, 10)}) == CLOCK


def test_a_partition_nobody_reported_holds_the_clock_back_only_when_it_has_messages() -> None:
    parts = _stored({"t/0": CAUGHT, "t/0" + POSITION: f"500 {CLOCK:.6f}"})
    ends = {"t/0": (0, 500), "t/2": (0, 0), "t/3": (40, 40)}  # t/2 empty, t/3 emptied by retention
    assert watermark(CLOCK, parts, ends=ends) == CLOCK
    assert watermark(CLOCK, parts, ends={**ends, "t/4": (0, 7)}) == 0.0  # 7 messages nobody applied


def test_the_slowest_of_several_waiting_partitions_holds_the_clock() -> None:
    parts = _stored(
        {
            "t/0": f"{T0 + 90 * DAY:.6f}",
            "t/0" + POSITION: f"90 {T0 + 90 * DAY:.6f}",
            "t/1": f"{T0 + 40 * DAY:.6f}",
            "t/1" + POSITION: f"41 {T0 + 40 * DAY:.6f}",
        }
    )
    ends = {"t/0": (0, 95), "t/1": (0, 60)}
    assert watermark(CLOCK, parts, ends=ends) == T0 + 40 * DAY
    assert watermark(T0 + 20 * DAY, parts, ends=ends) == T0 + 20 * DAY  # never past the clock


def test_a_batch_records_its_next_offset_and_the_highest_time_applied() -> None:
    stored = {"t/0": f"{T0 + 2 * DAY:.6f}", "t/0" + POSITION: f"3 {T0 + 2 * DAY:.6f}"}
    # read to the fetch's end at offset 7, the batch's own events no later than day 1
    updates = progress_updates(stored, {"t/0": PartitionProgress(T0 + DAY, True, 8)})
    assert updates == {"t/0": CAUGHT, "t/0" + POSITION: f"8 {T0 + 2 * DAY:.6f}"}
    # a partition read but with nothing applied yet: its next offset, no time
    assert progress_updates({}, {"t/1": PartitionProgress(None, False, 4)}) == {"t/1": "0", "t/1" + POSITION: "4"}


def test_input_progress_reports_the_next_offset_of_each_partition_read() -> None:
    from stream.core.intake import Message

    progress = InputProgress()
    messages = [Message("t", 0, 5, b"u", b"{}"), Message("t", 0, 6, b"u", b"{}"), Message("t", 1, 2, b"v", b"{}")]
    report = progress.update(messages, [], {"t/0": 7, "t/1": 9})
    assert report == {"t/0": PartitionProgress(None, True, 7), "t/1": PartitionProgress(None, False, 3)}
    # the position fields are not event times for the per-partition age rule
    assert progress.reached({b"t/0": b"5.000000", b"t/0#": b"7 9.000000"}) == {"t/0": 5.0}
