"""How far this worker has read its input partitions: what the event-time watermark is held back by.

Pure bookkeeping across batches; the store's ``watermark`` and write script turn it into the clock.
"""

from __future__ import annotations

from collections.abc import Mapping

from stream.core.intake import Message, Valid

Progress = dict[str, tuple[float | None, bool]]  # partition -> (highest event time applied, read to end)


class InputProgress:
    """Per input partition: the last offset read and the highest event time applied from it."""

    def __init__(self) -> None:
        self.read_to: dict[str, int] = {}
        self.applied_ts: dict[str, float] = {}

    def update(self, messages: list[Message], valid: list[Valid], highwaters: Mapping[str, int | None]) -> Progress:
        """Record a batch and return, per assigned input partition this worker has read: (highest
        event time applied from it, whether everything written to it so far has been read).
        Includes partitions absent from the batch: new messages on a partition read to its end make
        it hold the watermark back again. ``highwaters``: "topic/partition" -> next offset to be
        written (None: unknown, taken as read to its end)."""
        for m in messages:
            self.read_to[m.source] = max(self.read_to.get(m.source, -1), m.offset)
        for v in valid:
            source = v.message.source
            self.applied_ts[source] = max(self.applied_ts.get(source, v.event.epoch), v.event.epoch)
        progress: Progress = {}
        for source, last in self.read_to.items():
            if source not in highwaters:
                continue  # no longer assigned here: its new owner reports it
            end = highwaters[source]
            progress[source] = (self.applied_ts.get(source), end is None or last + 1 >= end)
        return progress
