"""Dead letters are built, sent and counted in one place (stream.service.deadletters)."""

from __future__ import annotations

import asyncio
import base64
from collections import Counter

from stream.contracts.deadletter import DeadLetter
from stream.core.intake import Message
from stream.metrics import Metrics
from stream.service.deadletters import DeadLetters


def test_rejections_are_sent_once_per_call_and_counted_by_reason() -> None:
    sent: list[list[DeadLetter]] = []

    async def send(letters: list[DeadLetter]) -> None:
        sent.append(letters)

    metrics = Metrics()
    dead = DeadLetters(send, metrics, "v9")
    counts: Counter[str] = Counter()
    a, b = Message("t.clickstream", 1, 5, b"k", b"{1}"), Message("t.clickstream", 1, 6, None, b"{2}")

    async def run() -> None:
        assert await dead.reject("processing_error", [(a, "apply: boom"), (b, "apply: boom")], counts) == 2
        assert await dead.reject_erased([(a, "tok")], counts) == 1
        assert await dead.reject("blocked_identifier", [], counts) == 0  # nothing to send: no call

    asyncio.run(run())
    assert [len(batch) for batch in sent] == [2, 1]
    first, erased = sent[0][0], sent[1][0]
    assert (first.reason, first.error, first.original, first.key, first.processor_version) == (
        "processing_error",
        "apply: boom",
        b"{1}",
        b"k",
        "v9",
    )
    assert (first.source_topic, first.source_partition, first.source_offset) == ("t.clickstream", 1, 5)
    assert erased.original_b64 == base64.b64encode(b"").decode() and erased.key is None  # payload withheld
    assert erased.error == "user erased (suppression token tok): not applied, payload withheld"
    assert counts == Counter({"processing_error": 2, "erased_user": 1})
    sample = metrics.registry.get_sample_value
    assert sample("portrait_dead_letters_total", {"reason": "processing_error"}) == 2
    assert sample("portrait_dead_letters_total", {"reason": "erased_user"}) == 1


def test_a_batch_is_parked_in_the_dlq_even_when_sending_fails_for_a_while() -> None:
    """The ingest agent returns (and Faust acks) only once the batch is dead-lettered."""
    from stream.agents.ingest import park

    attempts: list[int] = []

    class Flaky:
        async def dead_letter_batch(self, messages: list[Message], error: BaseException) -> None:
            attempts.append(len(messages))
            if len(attempts) < 3:
                raise ConnectionError("broker away")

    batch = [Message("t.clickstream", 0, 7, None, b"{}")]
    asyncio.run(park(Flaky(), batch, RuntimeError("bug")))  # type: ignore[arg-type]
    assert attempts == [1, 1, 1]
