"""Intake: raw Kafka messages become the batch's valid events and its dead letters.

Pure (no I/O): a message is unpacked (a batch envelope carries many events), each event is
validated against the event schema, the clock and the catalogue, and anything unusable becomes a
``DeadLetter`` with its reason. ``intake`` does all of it for one batch; in event time it also
merges the valid events across partitions by event time (``in_event_time_order``).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass

import orjson
from pydantic import ValidationError

from stream.contracts.deadletter import DeadLetter, Reason
from stream.contracts.events import Event, EventTime, parse_event
from stream.tagging.definitions import TagCatalogue
from stream.tagging.engine import LONGEST_WINDOW_DAYS, UnknownCurrency, check_event, left_window
from stream.tagging.state import POSITIONS_PER_OFFSET

# A batch envelope (one Kafka message carrying many events, as web collectors send) holds at most
# this many events; an event's position in its partition is offset * ENVELOPE_MAX + index.
ENVELOPE_MAX = POSITIONS_PER_OFFSET


@dataclass(frozen=True)
class Message:
    """A consumed Kafka message (or one event of a batch envelope), reduced to what the pipeline needs."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    index: int | None = None  # the event's place in its batch envelope (None: a single-event message)

    @property
    def source(self) -> str:
        return f"{self.topic}/{self.partition}"

    @property
    def position(self) -> int:
        """Where the event stands in its partition: what per-user applied offsets record, so the
        events of one envelope are applied (and recognised when redelivered) one by one."""
        return self.offset * ENVELOPE_MAX + (self.index or 0)


@dataclass(frozen=True)
class Valid:
    message: Message
    event: Event


def intake(
    messages: list[Message],
    catalogue: TagCatalogue,
    *,
    wall_now: float,
    clock_now: float,
    max_future_skew_s: float,
    processor_version: str,
    event_time: bool,
    max_message_bytes: int,
    partition_clock: Mapping[str, float] | None = None,
) -> tuple[list[Valid], list[DeadLetter]]:
    """A batch's valid events (in event-time order when ``event_time``) and its dead letters (those
    of envelopes first, then those of events, each in the batch's order).

    ``clock_now``: the clock events are checked against for ``too_old`` (wall time; in event time
    the time up to which the input is settled). ``partition_clock``, when given: per input
    partition ("topic/partition"), the time that partition itself has reached; an event is then
    checked against that time instead, and an event of a partition absent from it is not too old
    (event time: only a partition's own earlier events, in earlier batches or earlier in this one,
    can make its event late, never another partition that ran ahead). A message over
    ``max_message_bytes`` is dead-lettered as ``too_large`` before it is parsed."""
    dead: list[DeadLetter] = []
    events: list[Message] = []
    for message in messages:
        if len(message.value) > max_message_bytes:
            error = f"message of {len(message.value):,} bytes is over the accepted {max_message_bytes:,}"
            dead.append(DeadLetter.for_message(message, "too_large", error, processor_version))
            continue
        unpacked = unpack(message, processor_version)
        if isinstance(unpacked, DeadLetter):
            dead.append(unpacked)
        else:
            events.extend(unpacked)
    valid: list[Valid] = []
    # a partition's time advances with its valid events inside the batch too, so whether an event
    # is too old never depends on where the batch boundaries fell
    reached = None if partition_clock is None else dict(partition_clock)
    for message in events:
        reference = clock_now if reached is None else reached.get(message.source, -math.inf)
        outcome = classify(message, catalogue, wall_now, reference, max_future_skew_s, processor_version)
        if isinstance(outcome, Valid):
            valid.append(outcome)
            if reached is not None:
                reached[message.source] = max(reference, outcome.event.epoch)
        else:
            dead.append(outcome)
    return (in_event_time_order(valid) if event_time else valid), dead


def unpack(message: Message, processor_version: str) -> list[Message] | DeadLetter:
    """The events of a message: itself, or one message per event of a batch envelope
    (``{"batch": [event, ...]}`` or a JSON array of events)."""
    value = message.value
    if not _may_be_envelope(value):
        return [message]
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return [message]  # classify reports the invalid JSON
    items = _envelope_items(doc)
    if items is None:
        return [message]
    if not isinstance(items, list) or not items or len(items) > ENVELOPE_MAX:
        error = f"batch envelope must be a list of 1 to {ENVELOPE_MAX} events"
        return DeadLetter.for_message(message, "schema_violation", error, processor_version)
    return [
        Message(message.topic, message.partition, message.offset, message.key, orjson.dumps(item), index)
        for index, item in enumerate(items)
    ]


def _may_be_envelope(value: bytes) -> bool:
    head = value[:64].lstrip()[:1]
    return head == b"[" or (head == b"{" and b'"batch"' in value[:64])


def _envelope_items(doc: object) -> object | None:
    """The items of a parsed batch envelope (``{"batch": [...]}`` or a JSON array), not checked
    yet; None: the document is an event (one may well carry a field called "batch")."""
    if isinstance(doc, dict):
        return None if "type" in doc or "batch" not in doc else doc["batch"]
    return doc


def message_time(value: bytes) -> float | None:
    """A message's event time (a batch envelope's: its first event's), read without validating
    the rest; None when it cannot be told (``intake`` then judges the message as usual)."""
    try:
        if not _may_be_envelope(value):
            return EventTime.model_validate_json(value).ts.timestamp()
        doc = orjson.loads(value)
        items = _envelope_items(doc)
        first = doc if items is None else items[0] if isinstance(items, list) and items else None
        return EventTime.model_validate(first).ts.timestamp()
    except (ValidationError, orjson.JSONDecodeError):
        return None


def rejection(exc: ValidationError) -> tuple[Reason, str]:
    """The dead-letter reason and readable error of a message that failed its schema (events and
    every other message the worker consumes, such as erase requests)."""
    kinds = {e["type"] for e in exc.errors()}
    if "json_invalid" in kinds or "json_type" in kinds:
        reason: Reason = "invalid_json"
    elif "union_tag_invalid" in kinds:
        reason = "unknown_type"
    else:
        reason = "schema_violation"
    return reason, _summary(exc)


def _summary(exc: ValidationError) -> str:
    """Readable one-liner per error, e.g. ``ts: Input should have timezone info``."""
    parts = []
    for error in exc.errors(include_url=False):
        # drop the union member wrappers pydantic puts in the location
        loc = ".".join(str(p) for p in error["loc"] if "[" not in str(p) and "(" not in str(p))
        parts.append(f"{loc or '(event)'}: {error['msg']}")
    return "; ".join(parts)


def classify(
    message: Message,
    catalogue: TagCatalogue,
    wall_now: float,
    clock_now: float,
    max_future_skew_s: float,
    processor_version: str,
) -> Valid | DeadLetter:
    """Validate one message; anything unusable becomes a ``DeadLetter`` with its reason."""

    def dead(reason: Reason, error: str) -> DeadLetter:
        error = f"[batch item {message.index}] {error}" if message.index is not None else error
        return DeadLetter.for_message(message, reason, error, processor_version)

    try:
        event = parse_event(message.value)
    except ValidationError as exc:
        return dead(*rejection(exc))
    ts = event.epoch
    if ts > wall_now + max_future_skew_s:
        return dead("future_timestamp", f"ts {event.ts.isoformat()} is more than {max_future_skew_s:.0f}s ahead")
    if math.isfinite(clock_now) and left_window(ts, clock_now):
        return dead("too_old", f"ts {event.ts.isoformat()} is older than the {LONGEST_WINDOW_DAYS}-day window")
    try:
        check_event(event, catalogue.params)
    except UnknownCurrency as exc:
        return dead("unknown_currency", str(exc))
    return Valid(message, event)


def in_event_time_order(valid: list[Valid]) -> list[Valid]:
    """The batch's events merged across partitions by event time, each partition's own order kept
    (applied offsets must rise per partition): a partition that runs ahead in a replay then does not
    apply its later events before another's earlier ones within a batch."""
    by_source: dict[str, list[Valid]] = {}
    for v in valid:
        by_source.setdefault(v.message.source, []).append(v)
    if len(by_source) < 2:
        return valid
    return list(heapq.merge(*by_source.values(), key=lambda v: v.event.epoch))
