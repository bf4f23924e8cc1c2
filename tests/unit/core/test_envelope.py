"""Batch envelopes: one Kafka message carrying many events."""

from __future__ import annotations

import orjson

from stream.contracts.deadletter import DeadLetter
from stream.core.intake import ENVELOPE_MAX, Message, message_time, unpack

EVENT = {"event_id": "e1", "type": "page_view", "user_id": "u1", "ts": "2026-11-01T10:00:00+00:00"}


def _message(value: bytes) -> Message:
    return Message("t.clickstream", 2, 7, b"collector", value)


def test_an_envelope_becomes_one_message_per_event_with_increasing_positions() -> None:
    events = [{**EVENT, "event_id": f"e{i}"} for i in range(3)]
    for value in (orjson.dumps({"batch": events, "sent_at": "x"}), orjson.dumps(events)):
        parts = unpack(_message(value), "v")
        assert isinstance(parts, list)
        assert [orjson.loads(p.value) for p in parts] == events
        assert [p.index for p in parts] == [0, 1, 2]
        assert [p.position for p in parts] == [7 * ENVELOPE_MAX + i for i in range(3)]
        assert {(p.topic, p.partition, p.offset, p.key) for p in parts} == {("t.clickstream", 2, 7, b"collector")}


def test_single_events_pass_through_even_when_they_mention_batch() -> None:
    for value in (orjson.dumps(EVENT), orjson.dumps({"batch": "b7", **EVENT}), b"{not json"):
        parts = unpack(_message(value), "v")
        assert isinstance(parts, list) and len(parts) == 1 and parts[0].value == value
        assert parts[0].index is None and parts[0].position == 7 * ENVELOPE_MAX
    # a later single event always stands after every event of an earlier envelope
    assert Message("t", 0, 8, None, b"").position > Message("t", 0, 7, None, b"", ENVELOPE_MAX - 1).position


def test_an_oversized_or_malformed_envelope_is_dead_lettered_whole() -> None:
    too_many = orjson.dumps({"batch": [EVENT] * (ENVELOPE_MAX + 1)})
    for value in (too_many, orjson.dumps({"batch": "nope"})):
        letter = unpack(_message(value), "v")
        assert isinstance(letter, DeadLetter)
        assert letter.reason == "schema_violation" and letter.original == value and letter.source_offset == 7


def test_the_benchmark_packs_the_same_events_it_sends_singly() -> None:
    from portrait_dev.bench import pack

    payloads = [("page_view", b"u1", orjson.dumps({**EVENT, "event_id": f"e{i}"})) for i in range(7)]
    packed = pack(payloads, 3)
    assert [len(orjson.loads(v)["batch"]) for _, _, v in packed] == [3, 3, 1]
    events = [p.value for _, _, v in packed for p in unpack(_message(v), "v")]  # type: ignore[union-attr]
    assert [orjson.loads(e) for e in events] == [orjson.loads(v) for _, _, v in payloads]


def test_message_time_reads_the_first_events_ts_without_validating_the_rest() -> None:
    may_first = 1714557600.0  # 2024-05-01T10:00:00Z, by `date -d ... +%s`
    assert message_time(b'{"type": "order_paid", "ts": "2024-05-01T12:00:00+02:00"}') == may_first
    assert message_time(b'[{"ts": "2024-05-01T10:00:00Z"}, {"ts": "2025-01-01T00:00:00Z"}]') == may_first
    assert message_time(b'{"batch": [{"ts": "2024-05-01T10:00:00Z"}]}') == may_first
    # an event that carries a field called "batch" is an event
    assert message_time(b'{"type": "x", "batch": 1, "ts": "2024-05-01T10:00:00Z"}') == may_first
    for unreadable in (b"nope", b'{"ts": "2024-05-01T10:00:00"}', b"[]", b'{"batch": 5}', b"[1]"):
        assert message_time(unreadable) is None
