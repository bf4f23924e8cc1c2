"""Stream a JSONL or CSV file (or in-memory events) into the input topics.

``read_events`` turns a file into a stream of messages: JSONL lines are forwarded as the exact raw
bytes of the line (a line that is not valid JSON still reaches the worker, which dead-letters it),
CSV rows become event dicts through a column mapping. ``replay`` produces them with the user id
as the message key to ``Topics(prefix).for_event_type(type)``. Nothing is dropped silently: a
message whose type cannot be determined goes to the clickstream topic and is dead-lettered there.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import hashlib
import io
import itertools
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass, field
from datetime import date, datetime, time as dtime
from pathlib import Path
from typing import IO, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from stream.contracts.events import EVENT_TYPES
from stream.contracts.topics import Topics
from stream.rules.counters import RuleCounter, parse
from stream.settings import Settings

Format = Literal["auto", "jsonl", "csv"]
Message = dict[str, Any] | bytes

FLOAT_FIELDS = frozenset({"amount", "price", "cart_value"})
INT_FIELDS = frozenset({"quantity", "rating", "nps", "schema_version"})
BOOL_FIELDS = frozenset({"complaint"})
TRAIT_FIELDS = ("region", "age_band", "member_level", "signup_channel", "timezone")
MONEY_TYPES = frozenset({"order_paid", "order_refunded"})
SEND_CHUNK = 2000  # sends in flight before awaiting their delivery


# --------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------


def parse_mapping(spec: str) -> dict[str, str]:
    """``"user=user_id,date=ts"`` -> ``{"user": "user_id", "date": "ts"}``."""
    mapping: dict[str, str] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        column, sep, target = part.partition("=")
        column, target = column.strip(), target.strip()
        if not sep or not column or not target:
            raise ValueError(f"bad mapping entry {part!r}: expected column=field")
        mapping[column] = target
    return mapping


def _open_binary(path: Path) -> IO[bytes]:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def _detect_format(path: Path) -> Literal["jsonl", "csv"]:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    last = suffixes[-1] if suffixes else ""
    if last in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if last in (".csv", ".tsv"):
        return "csv"
    with _open_binary(path) as fh:
        for line in fh:
            stripped = line.strip()
            if stripped:
                return "jsonl" if stripped[:1] in (b"{", b"[") else "csv"
    return "jsonl"


def _read_jsonl(path: Path) -> Iterator[bytes]:
    """Every non-blank line as its raw bytes (without the line terminator)."""
    with _open_binary(path) as fh:
        for line in fh:
            raw = line.rstrip(b"\r\n")
            if raw.strip():
                yield raw


def _parse_ts(value: str, zone: ZoneInfo) -> str:
    """ISO date / datetime (naive -> ``zone``) or epoch seconds/milliseconds -> ISO-8601 with offset.

    Unparseable values are returned unchanged so the worker dead-letters the event.
    """
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        if len(text) >= 9:  # plausible epoch (seconds or milliseconds), not a bare year
            seconds = number / 1000 if abs(number) >= 1e11 else number
            return datetime.fromtimestamp(seconds, zone).isoformat()
        return text
    candidate = text.replace("/", "-")
    try:
        parsed = datetime.fromisoformat(candidate)
    except ValueError:
        try:
            day = date.fromisoformat(candidate)
        except ValueError:
            return text
        parsed = datetime.combine(day, dtime())
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    return parsed.isoformat()


def _convert(name: str, value: str) -> Any:
    """Numbers/booleans for known fields; anything that does not convert is kept as text."""
    text = value.strip()
    if name in FLOAT_FIELDS:
        try:
            return float(text)
        except ValueError:
            return text
    if name in INT_FIELDS:
        try:
            return int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                return text
            return int(number) if number.is_integer() else number
    if name in BOOL_FIELDS:
        lowered = text.lower()
        if lowered in ("true", "1", "yes", "y", "t"):
            return True
        if lowered in ("false", "0", "no", "n", "f", ""):
            return False
        return text
    return text


def _row_hash(line_no: int, row: dict[str, str]) -> str:
    digest = hashlib.sha1(usedforsecurity=False)
    digest.update(str(line_no).encode())
    for key in sorted(row):
        digest.update(b"\x1f" + key.encode() + b"\x1e" + (row[key] or "").encode())
    return digest.hexdigest()[:16]


def row_to_event(
    row: dict[str, str],
    line_no: int,
    mapping: dict[str, str] | None = None,
    default_type: str | None = None,
    zone: ZoneInfo | None = None,
) -> dict[str, Any]:
    """One CSV row -> an event dict (see ``read_events``)."""
    zone = zone or ZoneInfo("UTC")
    mapping = mapping or {}
    event: dict[str, Any] = {}
    for column, value in row.items():
        if column is None or value is None:
            continue  # extra cells without a header / short rows
        name = mapping.get(column, column).strip()
        if value.strip() == "" or not name:
            continue
        if name == "ts":
            event[name] = _parse_ts(value, zone)
        else:
            event[name] = _convert(name, value)
    etype = event.get("type")
    if etype is None:
        etype = default_type
        if etype is None and "amount" in event:
            etype = "order_paid"  # a plain user,date,amount export
        if etype is not None:
            event["type"] = etype
    digest = _row_hash(line_no, row)
    event.setdefault("event_id", f"csv-{line_no}-{digest}")
    if etype in MONEY_TYPES:
        event.setdefault("order_id", f"ord-{digest}")
    if etype == "identify":
        traits = {k: event.pop(k) for k in TRAIT_FIELDS if k in event}
        if traits and "traits" not in event:
            event["traits"] = traits
    return event


def _read_csv(
    path: Path, mapping: dict[str, str] | None, default_type: str | None, zone: ZoneInfo
) -> Iterator[dict[str, Any]]:
    with _open_binary(path) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        delimiter = "\t" if ".tsv" in [s.lower() for s in path.suffixes] else ","
        reader = csv.DictReader(text, delimiter=delimiter)
        for row in reader:
            if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                continue  # blank line
            yield row_to_event(row, reader.line_num, mapping, default_type, zone)


def read_events(
    path: Path,
    fmt: Format = "auto",
    mapping: dict[str, str] | None = None,
    default_type: str | None = None,
    tz: str = "UTC",
) -> Iterator[Message]:
    """Messages from a file: raw ``bytes`` per JSONL line, event ``dict`` per CSV row.

    JSONL: every non-blank line is forwarded unchanged (invalid JSON included, so the worker
    dead-letters it instead of it being lost). ``.gz`` files are decompressed.

    CSV (header required): ``mapping`` renames columns to event fields (unmapped columns keep
    their name; empty cells are omitted). Rows without a ``type`` get ``default_type``, or
    ``order_paid`` when they have an ``amount``. Missing ``event_id`` (and ``order_id`` for
    orders/refunds) are derived from a hash of the row and its line number, so replaying the same
    file twice produces the same ids. ``ts`` accepts ISO dates/datetimes (naive ones are in
    ``tz``) and epoch seconds/milliseconds. ``amount``/``price``/``cart_value`` become floats,
    ``quantity``/``rating``/``nps`` ints, ``complaint`` a boolean; values that do not convert are
    passed through so validation rejects them visibly. For ``identify`` rows the trait columns
    (region, age_band, member_level, signup_channel, timezone) are nested under ``traits``.
    """
    path = Path(path)
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {tz!r}") from exc
    kind = _detect_format(path) if fmt == "auto" else fmt
    if kind == "jsonl":
        return _read_jsonl(path)
    return _read_csv(path, mapping, default_type, zone)


def event_time_of(message: Message) -> float | None:
    """A message's event time in epoch seconds (a batch envelope's earliest), or None when it has
    no readable time zone-aware ``ts`` (the worker dead-letters such a message anyway)."""
    if isinstance(message, bytes | bytearray):
        try:
            doc: Any = orjson.loads(message)
        except orjson.JSONDecodeError:
            return None
    else:
        doc = message
    if isinstance(doc, dict) and "type" not in doc and isinstance(doc.get("batch"), list):
        doc = doc["batch"]
    if isinstance(doc, list):
        times = [t for t in (event_time_of(item) for item in doc if isinstance(item, dict)) if t is not None]
        return min(times, default=None)
    if not isinstance(doc, dict) or not isinstance(doc.get("ts"), str):
        return None
    try:
        parsed = datetime.fromisoformat(doc["ts"])
    except ValueError:
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None


def in_time_order(source: Iterable[Message]) -> tuple[list[Message], bool]:
    """The messages of ``source`` in event-time order, and whether they had to be sorted.

    Read into memory. A stable sort: messages with equal times keep their order, and those without
    a readable time go first (they are dead-lettered wherever they are). In event time an event
    more than the longest window (90 days) behind its partition's latest is dead-lettered as
    ``too_old``, so an export sorted by user, say, would otherwise lose valid history.
    """
    messages = list(source)
    times = [event_time_of(m) for m in messages]
    keys = [t if t is not None else -math.inf for t in times]
    if all(a <= b for a, b in itertools.pairwise(keys)):
        return messages, False
    order = sorted(range(len(messages)), key=keys.__getitem__)
    return [messages[i] for i in order], True


# --------------------------------------------------------------------------------------------
# Producing
# --------------------------------------------------------------------------------------------


@dataclass
class ReplayReport:
    per_topic: dict[str, int] = field(default_factory=dict)
    total: int = 0
    seconds: float = 0.0
    undetermined: int = 0  # messages whose type could not be read (sent to the clickstream topic)
    read: int = 0  # rows (CSV) or non-blank lines (JSONL) read from the source; every one is sent

    @property
    def events_per_s(self) -> float:
        return self.total / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        topics = ", ".join(f"{t}={n}" for t, n in sorted(self.per_topic.items()))
        extra = f" ({self.undetermined} without a readable type)" if self.undetermined else ""
        return (
            f"replayed {self.total} events in {self.seconds:.2f}s "
            f"({self.events_per_s:,.0f} events/s){extra}: {topics or 'nothing'}"
        )


def _subject_key(event: dict[str, Any]) -> bytes | None:
    for name in ("user_id", "anonymous_id"):
        value = event.get(name)
        if value is not None and value != "":
            return str(value).encode()
    return None


def route(message: Message, topics: Topics) -> tuple[str, bytes | None, bytes, bool]:
    """``(topic, key, value, type_known)`` for one message."""
    if isinstance(message, bytes | bytearray):
        value = bytes(message)
        try:
            decoded = orjson.loads(value)
        except orjson.JSONDecodeError:
            decoded = None
        event = decoded if isinstance(decoded, dict) else None
    else:
        event = message
        value = orjson.dumps(message)
    if event is None:
        return topics.clickstream, None, value, False
    etype = event.get("type")
    key = _subject_key(event)
    if isinstance(etype, str) and etype in EVENT_TYPES:
        return topics.for_event_type(etype), key, value, True
    return topics.clickstream, key, value, False


async def replay(
    settings: Settings,
    source: Iterable[Message],
    progress: bool = True,
    rate: float | None = None,
) -> ReplayReport:
    """Produce every message of ``source`` to its input topic; returns counts and throughput.

    Key = ``user_id`` (else ``anonymous_id``) so one partition owns a user. Sends are batched
    (``linger_ms=5``, ``acks=all``) and awaited in chunks; ``rate`` paces to that many events/s.
    """
    from aiokafka import AIOKafkaProducer
    from rich.console import Console
    from rich.progress import Progress

    if rate is not None and rate <= 0:
        raise ValueError("rate must be > 0")
    topics = Topics(settings.topic_prefix)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers(),
        acks="all",
        linger_ms=5,
        max_batch_size=256 * 1024,
        request_timeout_ms=30000,
        **settings.kafka_client_kwargs(),
    )
    total_hint = len(source) if isinstance(source, Sized) else None
    counts: Counter[str] = Counter()
    undetermined = read = 0
    pending: list[asyncio.Future[Any]] = []
    try:
        await producer.start()
    except BaseException:  # a broker that does not answer: close the client, then fail
        await producer.stop()
        raise
    started = time.monotonic()
    bar = Progress(console=Console(stderr=True), disable=not progress, transient=False)
    task = bar.add_task("replay", total=total_hint)
    bar.start()
    try:
        for sent, message in enumerate(source, start=1):
            read = sent
            topic, key, value, known = route(message, topics)
            pending.append(await producer.send(topic, value, key=key))
            counts[topic] += 1
            undetermined += not known
            if len(pending) >= SEND_CHUNK:
                await asyncio.gather(*pending)
                bar.advance(task, len(pending))
                pending.clear()
            if rate is not None:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0.005:
                    if pending:
                        await asyncio.gather(*pending)
                        bar.advance(task, len(pending))
                        pending.clear()
                    await asyncio.sleep(ahead)
        if pending:
            await asyncio.gather(*pending)
            bar.advance(task, len(pending))
            pending.clear()
        await producer.flush()
    finally:
        bar.stop()
        await producer.stop()
    seconds = time.monotonic() - started
    return ReplayReport(dict(counts), sum(counts.values()), seconds, undetermined, read)


# --------------------------------------------------------------------------------------------
# Waiting for the workers
# --------------------------------------------------------------------------------------------

STALL_S = 120.0  # how long the workers may make no progress before a wait gives up


class Stalled(TimeoutError):
    """The workers' ``messages`` counter did not move for the stall time."""


@dataclass(frozen=True)
class Outcome:
    """What the workers did with replayed messages: deltas of the shared stats hash (P:v1:stats)
    between before the replay and the moment ``messages`` had grown by the messages sent.

    The hash counts every producer's traffic, so concurrent traffic makes these approximate.
    """

    handled: int  # messages (``messages``)
    applied: int  # events applied (``events_applied``)
    duplicates: int  # events skipped: same event id seen recently (``events_duplicate``)
    redelivered: int  # events skipped: already applied at that offset (``events_redelivered``)
    dead_lettered: dict[str, int]  # messages by reason (``dlq_<reason>``), reasons that grew only
    # rule firings by outcome (``send`` or the suppression reason, e.g. ``backfill``: withheld by
    # the workers' delivery setting), outcomes that grew only
    firings: dict[str, int] = field(default_factory=dict)

    @property
    def dead_lettered_total(self) -> int:
        return sum(self.dead_lettered.values())

    @classmethod
    def between(cls, before: Mapping[str, int], after: Mapping[str, int]) -> Outcome:
        def grew(name: str) -> int:
            return after.get(name, 0) - before.get(name, 0)

        reasons = sorted(k.removeprefix("dlq_") for k in after if k.startswith("dlq_") and grew(k) > 0)
        firings: Counter[str] = Counter()
        for key in after:
            counter = parse(key)
            if isinstance(counter, RuleCounter) and grew(key) > 0:
                firings[counter.outcome] += grew(key)
        return cls(
            handled=grew("messages"),
            applied=grew("events_applied"),
            duplicates=grew("events_duplicate"),
            redelivered=grew("events_redelivered"),
            dead_lettered={reason: grew(f"dlq_{reason}") for reason in reasons},
            firings=dict(sorted(firings.items())),
        )


async def wait_handled(
    stats: Callable[[], Awaitable[Mapping[str, int]]],
    before: Mapping[str, int],
    sent: int,
    stall_s: float = STALL_S,
    poll_s: float = 0.1,
    on_progress: Callable[[int], None] | None = None,
) -> Outcome:
    """Poll ``stats`` until ``messages`` has grown by ``sent`` since ``before``; the outcome then.

    There is no total timeout: a slow worker that keeps making progress is waited for. Raises
    ``Stalled`` only when the counter has not moved for ``stall_s`` seconds. ``on_progress``
    gets the messages handled so far at each change.
    """
    target = before.get("messages", 0) + sent
    last, moved_at = -1, time.monotonic()
    while True:
        now_stats = await stats()
        done = now_stats.get("messages", 0)
        if done != last:
            last, moved_at = done, time.monotonic()
            if on_progress is not None:
                on_progress(min(done - before.get("messages", 0), sent))
        if done >= target:
            return Outcome.between(before, now_stats)
        if time.monotonic() - moved_at >= stall_s:
            handled = done - before.get("messages", 0)
            raise Stalled(
                f"the workers handled {handled} of the {sent} messages sent and made no progress for "
                f"{stall_s:g}s: is a worker running with the same topic and key prefixes?"
            )
        await asyncio.sleep(poll_s)
