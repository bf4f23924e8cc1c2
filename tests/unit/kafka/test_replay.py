"""stream.kafka.replay without a broker: file reading, CSV mapping, routing, batching with a fake producer."""

from __future__ import annotations

import asyncio
import gzip
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import orjson
import pytest
from portrait_dev import synth
from pydantic import ValidationError

from stream.contracts.events import OrderPaid, parse_event
from stream.contracts.topics import Topics
from stream.kafka import replay
from stream.settings import Settings

TOPICS = Topics("portrait")


# ---- parse_mapping ----------------------------------------------------------------------------


def test_parse_mapping() -> None:
    assert replay.parse_mapping("user=user_id,date=ts") == {"user": "user_id", "date": "ts"}
    assert replay.parse_mapping(" user = user_id , amount=amount, ") == {"user": "user_id", "amount": "amount"}
    assert replay.parse_mapping("") == {}
    for bad in ("user", "user=", "=ts"):
        with pytest.raises(ValueError):
            replay.parse_mapping(bad)


# ---- CSV --------------------------------------------------------------------------------------


def test_plain_user_date_amount_export_becomes_valid_orders(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text(
        "user,date,amount\nalice,2026-10-01,19.99\nbob,2026-10-02 13:45:00,5\nalice,2026-10-03T08:00:00+02:00,7.5\n"
    )
    mapping = replay.parse_mapping("user=user_id,date=ts")
    events = list(replay.read_events(path, mapping=mapping, tz="Asia/Shanghai"))
    assert len(events) == 3
    parsed = []
    for event in events:
        assert isinstance(event, dict)
        model = parse_event(orjson.dumps(event))
        assert isinstance(model, OrderPaid)
        parsed.append(model)
    assert [p.user_id for p in parsed] == ["alice", "bob", "alice"]
    assert [p.amount for p in parsed] == [19.99, 5.0, 7.5]
    assert all(p.currency == "USD" for p in parsed)
    # naive dates are local to tz; explicit offsets are kept
    assert events[0]["ts"] == "2026-10-01T00:00:00+08:00"
    assert events[1]["ts"] == "2026-10-02T13:45:00+08:00"
    assert events[2]["ts"] == "2026-10-03T08:00:00+02:00"
    # derived ids: unique, and the same when the file is read again
    assert len({p.event_id for p in parsed}) == 3
    assert len({p.order_id for p in parsed}) == 3
    again = list(replay.read_events(path, mapping=mapping, tz="Asia/Shanghai"))
    assert again == events


def test_default_type_and_explicit_ids(tmp_path: Path) -> None:
    path = tmp_path / "refunds.csv"
    path.write_text("customer,when,amount,order,currency\nc1,2026-10-05,3.5,o-1,EUR\n")
    mapping = {"customer": "user_id", "when": "ts", "order": "order_id"}
    (event,) = replay.read_events(path, fmt="csv", mapping=mapping, default_type="order_refunded")
    assert isinstance(event, dict)
    assert event["type"] == "order_refunded" and event["order_id"] == "o-1" and event["currency"] == "EUR"
    assert event["ts"] == "2026-10-05T00:00:00+00:00"
    parse_event(orjson.dumps(event))


def test_csv_with_type_column_and_mixed_events(tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    path.write_text(
        "type,user_id,ts,page,product_id,price,quantity,rating,nps,complaint,text,region,timezone,event_id\n"
        "page_view,u1,2026-10-01T10:00:00Z,/p/1,,,,,,,,,,\n"
        "add_to_cart,u1,2026-10-01T10:01:00Z,,p1,12.50,2,,,,,,,\n"
        "feedback,u1,2026-10-02T10:00:00Z,,,,,4,3,true,late,,,fb-1\n"
        "identify,u1,2026-10-01T09:00:00Z,,,,,,,,,eu,Europe/Berlin,\n"
    )
    events = list(replay.read_events(path))
    assert [e["type"] for e in events if isinstance(e, dict)] == ["page_view", "add_to_cart", "feedback", "identify"]
    models = [parse_event(orjson.dumps(e)) for e in events if isinstance(e, dict)]
    cart, feedback, ident = events[1], events[2], events[3]
    assert isinstance(cart, dict) and cart["price"] == 12.5 and cart["quantity"] == 2
    assert isinstance(feedback, dict)
    assert feedback["rating"] == 4 and feedback["nps"] == 3 and feedback["complaint"] is True
    assert feedback["event_id"] == "fb-1"
    assert isinstance(ident, dict) and ident["traits"] == {"region": "eu", "timezone": "Europe/Berlin"}
    assert "page" not in cart  # empty cells are omitted
    assert len({m.event_id for m in models}) == 4


def test_bad_csv_values_are_forwarded_not_dropped(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("user,date,amount\nu1,not-a-date,10\nu2,2026-10-01,abc\n\nu3,2026-10-01,1\n")
    events = list(replay.read_events(path, mapping={"user": "user_id", "date": "ts"}))
    assert len(events) == 3  # the blank line is not a row
    with pytest.raises(ValidationError):
        parse_event(orjson.dumps(events[0]))
    with pytest.raises(ValidationError):
        parse_event(orjson.dumps(events[1]))
    parse_event(orjson.dumps(events[2]))


def test_epoch_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "epoch.csv"
    path.write_text("user_id,ts,amount\nu1,1790000000,1\nu1,1790000000000,2\n")
    a, b = replay.read_events(path)
    assert isinstance(a, dict) and isinstance(b, dict)
    assert a["ts"] == b["ts"] == "2026-09-21T14:13:20+00:00"


def test_unknown_tz_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("user_id,ts,amount\n")
    with pytest.raises(ValueError):
        replay.read_events(path, tz="Nowhere/Special")


# ---- JSONL ------------------------------------------------------------------------------------


def test_jsonl_lines_are_forwarded_as_raw_bytes(tmp_path: Path) -> None:
    events = synth.generate(users=5, events=40, seed=2)
    good = [orjson.dumps(e) for e in events]
    bad = b'{"type": "page_view", "user_id": "u1", '
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join([*good[:10], bad, b"", b"   ", *good[10:]]) + b"\r\n")
    got = list(replay.read_events(path))
    assert got == [*good[:10], bad, *good[10:]]
    assert all(isinstance(m, bytes) for m in got)


def test_format_detection_and_gzip(tmp_path: Path) -> None:
    events = synth.generate(users=3, events=20, seed=9)
    payload = b"\n".join(orjson.dumps(e) for e in events) + b"\n"
    plain = tmp_path / "dump.txt"  # unknown suffix: sniffed from the first line
    plain.write_bytes(payload)
    assert list(replay.read_events(plain)) == payload.splitlines()
    gz = tmp_path / "dump.jsonl.gz"
    gz.write_bytes(gzip.compress(payload))
    assert list(replay.read_events(gz)) == payload.splitlines()
    csv_gz = tmp_path / "orders.csv.gz"
    csv_gz.write_bytes(gzip.compress(b"user_id,ts,amount\nu1,2026-10-01,3\n"))
    (row,) = replay.read_events(csv_gz)
    assert isinstance(row, dict) and row["type"] == "order_paid"


# ---- routing ----------------------------------------------------------------------------------


def test_route() -> None:
    event = {"type": "order_paid", "user_id": "u7", "event_id": "e1"}
    topic, key, value, known = replay.route(event, TOPICS)
    assert (topic, key, known) == (TOPICS.transactions, b"u7", True)
    assert orjson.loads(value) == event
    raw = orjson.dumps({"type": "feedback", "anonymous_id": "a1"})
    assert replay.route(raw, TOPICS) == (TOPICS.feedback, b"a1", raw, True)
    assert replay.route(b"{broken", TOPICS) == (TOPICS.clickstream, None, b"{broken", False)
    assert replay.route(b"[1, 2]", TOPICS) == (TOPICS.clickstream, None, b"[1, 2]", False)
    unknown = orjson.dumps({"type": "coupon", "user_id": "u1"})
    assert replay.route(unknown, TOPICS) == (TOPICS.clickstream, b"u1", unknown, False)
    assert replay.route({"type": "identify", "user_id": "u1"}, TOPICS)[0] == TOPICS.identify
    assert replay.route({"type": "search", "user_id": "u1"}, TOPICS)[0] == TOPICS.clickstream


# ---- replay with a fake producer ----------------------------------------------------------------


class FakeProducer:
    instances: ClassVar[list[FakeProducer]] = []

    def __init__(self, **config: Any) -> None:
        self.config = config
        self.sent: list[tuple[str, bytes, bytes | None]] = []
        self.started = self.stopped = False
        FakeProducer.instances.append(self)

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def flush(self) -> None:
        return None

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future[None]:
        assert self.started and not self.stopped
        self.sent.append((topic, value, key))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


@pytest.fixture
def fake_producer(monkeypatch: pytest.MonkeyPatch) -> type[FakeProducer]:
    import aiokafka

    FakeProducer.instances = []
    monkeypatch.setattr(aiokafka, "AIOKafkaProducer", FakeProducer)
    return FakeProducer


def _settings() -> Settings:
    return Settings(broker_url="kafka://127.0.0.1:1;127.0.0.1:2", topic_prefix="t")


def test_replay_routes_and_counts(fake_producer: type[FakeProducer]) -> None:
    events = synth.generate(users=20, events=3000, seed=4)
    source: list[dict[str, Any] | bytes] = [*events, b"not json", orjson.dumps(events[0])]
    report = asyncio.run(replay.replay(_settings(), source, progress=False))
    (producer,) = fake_producer.instances
    assert producer.config["bootstrap_servers"] == "127.0.0.1:1,127.0.0.1:2"
    assert producer.config["acks"] == "all"
    assert producer.stopped
    topics = Topics("t")
    assert report.total == len(source) == len(producer.sent)
    assert report.undetermined == 1
    expected: dict[str, int] = {}
    for event in events:
        name = topics.for_event_type(event["type"])
        expected[name] = expected.get(name, 0) + 1
    expected[topics.clickstream] += 1  # the broken line
    expected[topics.for_event_type(events[0]["type"])] += 1
    assert report.per_topic == expected
    for (topic, value, key), event in zip(producer.sent, events, strict=False):
        assert topic == topics.for_event_type(event["type"])
        assert key == event["user_id"].encode()
        assert orjson.loads(value) == event
    assert producer.sent[-2] == (topics.clickstream, b"not json", None)
    assert report.seconds > 0 and report.events_per_s > 0
    assert "events/s" in str(report)


class _FakeClock:
    """Time that passes only when the replay sleeps, so pacing is checked exactly, not by wall clock."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_replay_rate_limit(fake_producer: type[FakeProducer], monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _FakeClock()
    monkeypatch.setattr(replay, "time", SimpleNamespace(monotonic=clock.monotonic))
    monkeypatch.setattr(replay, "asyncio", SimpleNamespace(gather=asyncio.gather, sleep=clock.sleep))
    events = synth.generate(users=5, events=60, seed=4)
    report = asyncio.run(replay.replay(_settings(), events, progress=False, rate=200.0))
    assert report.total == 60
    # sends take no time here: the replay sleeps whenever it is 5 ms or more ahead of sent / rate,
    # so it never gets more than two events (10 ms at 200/s) ahead, and ends at 60 / 200 s
    assert clock.sleeps and max(clock.sleeps) == pytest.approx(0.01)
    assert sum(clock.sleeps) == pytest.approx(60 / 200.0)
    assert report.seconds == pytest.approx(60 / 200.0)
    with pytest.raises(ValueError):
        asyncio.run(replay.replay(_settings(), events, progress=False, rate=0))


def test_replay_from_file_iterator(fake_producer: type[FakeProducer], tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text("user,date,amount\n" + "".join(f"u{i},2026-10-0{1 + i % 9},{i}.5\n" for i in range(50)))
    source = replay.read_events(path, mapping={"user": "user_id", "date": "ts"})
    report = asyncio.run(replay.replay(_settings(), source, progress=False))
    assert report.per_topic == {"t.transactions": 50}
    (producer,) = fake_producer.instances
    assert {key for _, _, key in producer.sent} == {f"u{i}".encode() for i in range(50)}


# ---- waiting for the workers ------------------------------------------------------------------


def test_outcome_is_the_growth_of_the_stats_by_reason() -> None:
    before = {"messages": 10, "events_applied": 7, "dlq_invalid_json": 1, "dlq_schema_violation": 2}
    after = {
        "messages": 19,
        "events_applied": 12,
        "events_duplicate": 1,
        "dlq_invalid_json": 3,
        "dlq_schema_violation": 2,
        "dlq_future_event": 1,
    }
    outcome = replay.Outcome.between(before, after)
    assert (outcome.handled, outcome.applied, outcome.duplicates, outcome.redelivered) == (9, 5, 1, 0)
    assert outcome.dead_lettered == {"future_event": 1, "invalid_json": 2}
    assert outcome.dead_lettered_total == 3


def test_wait_handled_follows_progress_until_every_message_is_handled() -> None:
    readings = iter([{"messages": 4}, {"messages": 4}, {"messages": 6}, {"messages": 9, "events_applied": 5}])
    seen: list[int] = []

    async def stats() -> dict[str, int]:
        return next(readings)

    outcome = asyncio.run(replay.wait_handled(stats, {"messages": 4}, 5, poll_s=0, on_progress=seen.append))
    assert (outcome.handled, outcome.applied) == (5, 5)
    assert seen == [0, 2, 5]


def test_wait_handled_gives_up_only_without_progress() -> None:
    async def stats() -> dict[str, int]:
        return {"messages": 2}

    with pytest.raises(replay.Stalled, match="handled 2 of the 5 messages sent"):
        asyncio.run(replay.wait_handled(stats, {}, 5, stall_s=0.2, poll_s=0.01))


def test_an_unsorted_export_is_sent_in_event_time_order() -> None:
    rows = [
        {"type": "order_paid", "user_id": "b", "ts": "2026-03-01T00:00:00+00:00"},
        b'{"type": "page_view", "user_id": "a", "ts": "2026-01-01T00:00:00+00:00"}',
        b"not json",
        {"type": "order_paid", "user_id": "a", "ts": "2026-03-01T00:00:00+00:00"},  # ties keep file order
        b'{"batch": [{"ts": "2026-02-01T00:00:00+00:00"}, {"ts": "2025-12-31T23:00:00-02:00"}]}',
    ]
    ordered, was_sorted = replay.in_time_order(rows)
    assert was_sorted
    # the envelope's earliest item is 2026-01-01T01:00Z, after the page view at midnight
    assert ordered == [rows[2], rows[1], rows[4], rows[0], rows[3]]


def test_a_sorted_export_is_left_as_it_is() -> None:
    rows = [{"ts": "2026-01-01T00:00:00+00:00"}, {"ts": "2026-01-01T00:00:00+00:00"}, {"ts": "2026-01-02T00:00:00Z"}]
    assert replay.in_time_order(rows) == (rows, False)
