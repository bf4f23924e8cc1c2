"""How far this worker has read its input partitions: what the event-time watermark is held back by.

Pure bookkeeping across batches; the store's ``watermark`` and write script turn it into the clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from stream.core.intake import Message, Valid


class PartitionProgress(NamedTuple):
    """What a batch knows of one input partition it read."""

    applied: float | None  # highest event time applied from it (None: none yet)
    caught: bool  # the batch read it to the consumer's (possibly stale) high-water mark
    next_offset: int | None = None  # every offset before this one is handled once the batch is written


Progress = dict[str, PartitionProgress]  # partition -> its progress
Ends = Mapping[str, tuple[int, int]]  # partition -> (log start offset, end offset), fetched fresh


class InputProgress:
    """Per input partition: the last offset read and the highest event time applied from it."""

    def __init__(self) -> None:
        self.read_to: dict[str, int] = {}
        self.applied_ts: dict[str, float] = {}

    def copy(self) -> InputProgress:
        """A copy to record a batch on without recording it here (what the batch would reach)."""
        other = InputProgress()
        other.read_to, other.applied_ts = dict(self.read_to), dict(self.applied_ts)
        return other

    def reached(self, stored: Mapping[bytes, bytes] | None = None) -> dict[str, float]:
        """Per input partition: the highest event time applied from it so far, by this worker or
        (``stored``: the shared progress hash as last read) by its previous owner. What an event's
        age is judged against in event time: only its own partition's earlier events can make it
        late, however far another partition (or worker) ran ahead."""
        times: dict[str, float] = {}
        for key, value in (stored or {}).items():
            try:
                ts = float(value)
            except ValueError:
                continue  # "caught": no time recorded
            if ts > 0:
                times[key.decode() if isinstance(key, bytes) else str(key)] = ts
        for source, ts in self.applied_ts.items():
            times[source] = max(times.get(source, ts), ts)
        return times

    def update(
        self, messages: list[Message], valid: list[Valid], highwaters: Mapping[str, int | None] | None
    ) -> Progress | None:
        """Record a batch and return, per assigned input partition this worker has read: (highest
        event time applied from it, whether everything written to it so far has been read); None
        when ``highwaters`` is None (the caller cannot tell; the applied times are still recorded).
        Includes partitions absent from the batch: new messages on a partition read to its end make
        it hold the watermark back again. ``highwaters``: "topic/partition" -> next offset to be
        written (None: unknown, taken as read to its end)."""
        for m in messages:
            self.read_to[m.source] = max(self.read_to.get(m.source, -1), m.offset)
        for v in valid:
            source = v.message.source
            self.applied_ts[source] = max(self.applied_ts.get(source, v.event.epoch), v.event.epoch)
        if highwaters is None:
            return None
        progress: Progress = {}
        for source, last in self.read_to.items():
            if source not in highwaters:
                continue  # no longer assigned here: its new owner reports it
            end = highwaters[source]
            progress[source] = PartitionProgress(self.applied_ts.get(source), end is None or last + 1 >= end, last + 1)
        return progress
