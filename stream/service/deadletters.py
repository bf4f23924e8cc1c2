"""Dead letters, in one place: built for (reason, error, messages), sent, counted and logged.

Every rejection of the worker goes through ``DeadLetters``: the intake's (bad JSON, schema,
clock, currency), blocked identifiers, erased users (payload withheld), users isolated by a bug,
a whole batch after a bug outside that isolation, and malformed erase requests. Each letter is
counted in ``portrait_dead_letters_total{reason}`` and, for a batch, in its report (which the
batch's write adds to P:v1:stats as ``dlq_<reason>``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable

from stream.contracts.deadletter import DeadLetter, Reason, Rejected
from stream.metrics import Metrics

log = logging.getLogger(__name__)

SendDeadLetters = Callable[[list[DeadLetter]], Awaitable[None]]


class DeadLetters:
    def __init__(self, send: SendDeadLetters, metrics: Metrics, processor_version: str) -> None:
        self._send = send
        self.metrics = metrics
        self.processor_version = processor_version

    async def reject(
        self,
        reason: Reason,
        rejected: Iterable[tuple[Rejected, str]],
        counts: Counter[str] | None = None,
        *,
        withhold_payload: bool = False,
    ) -> int:
        """Dead-letter each (message, error) for ``reason``; returns how many were sent."""
        version = self.processor_version
        letters = [
            DeadLetter.for_message(m, reason, error, version, withhold_payload=withhold_payload)
            for m, error in rejected
        ]
        await self.send(letters, counts)
        return len(letters)

    async def reject_erased(self, events: Iterable[tuple[Rejected, str]], counts: Counter[str] | None = None) -> int:
        """Dead-letter the events of erased users, given as (message, the user's suppression token):
        their payload withheld (it is the personal data the erasure removed), never applied."""
        why = "user erased (suppression token {}): not applied, payload withheld"
        gone = [(m, why.format(token)) for m, token in events]
        return await self.reject("erased_user", gone, counts, withhold_payload=True)

    async def send(self, letters: list[DeadLetter], counts: Counter[str] | None = None) -> None:
        """Send built letters (the intake's), then count them by reason, in ``counts`` too if given."""
        if not letters:
            return
        await self._send(letters)
        for letter in letters:
            if counts is not None:
                counts[letter.reason] += 1
            self.metrics.dead_letters.labels(letter.reason).inc()
            log.info(
                "dead letter %s at %s[%d]@%d: %s",
                letter.reason,
                letter.source_topic,
                letter.source_partition,
                letter.source_offset,
                letter.error.splitlines()[0] if letter.error else "",
            )
