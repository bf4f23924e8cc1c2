"""portrait_dev.synth: determinism, validity against the wire format, persona behaviour, malformed data."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from portrait_dev import synth
from pydantic import ValidationError

from stream.contracts.events import EVENT_TYPES, OrderPaid, parse_event

END = synth.DEFAULT_END
END_S = END.timestamp()
DAY = 86400


@pytest.fixture(scope="module")
def dataset() -> list[dict[str, Any]]:
    return synth.generate()


@pytest.fixture(scope="module")
def by_user(dataset: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in dataset:
        out[event["user_id"]].append(event)
    return out


def _epoch(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["ts"]).timestamp()


def test_same_seed_is_byte_identical_and_other_seed_differs() -> None:
    a = orjson.dumps(synth.generate(users=150, events=3000, seed=11))
    b = orjson.dumps(synth.generate(users=150, events=3000, seed=11))
    c = orjson.dumps(synth.generate(users=150, events=3000, seed=12))
    assert a == b
    assert a != c
    assert synth.personas(150, 11) == synth.personas(150, 11)
    assert synth.personas(150, 11) != synth.personas(150, 12)


def test_default_size_is_within_five_percent() -> None:
    # how fast it is generated is measured by `make bench`, not asserted here
    events = synth.generate(users=2000, events=50000)
    assert abs(len(events) - 50000) <= 2500


@pytest.mark.parametrize(("users", "events"), [(1, 5), (7, 50), (30, 400), (300, 8000)])
def test_count_within_five_percent(users: int, events: int) -> None:
    got = synth.generate(users=users, events=events, seed=3, days=20)
    assert abs(len(got) - events) <= max(1, events // 20)


def test_every_event_validates_and_is_in_range(dataset: list[dict[str, Any]]) -> None:
    start = END_S - 90 * DAY
    for event in dataset:
        parsed = parse_event(orjson.dumps(event))
        assert start < parsed.epoch <= END_S
        assert parsed.ts.utcoffset() is not None
        assert parsed.event_id == event["event_id"]


def test_sorted_with_unique_ids(dataset: list[dict[str, Any]]) -> None:
    keys = [(_epoch(e), e["event_id"]) for e in dataset]
    assert keys == sorted(keys)
    assert len({e["event_id"] for e in dataset}) == len(dataset)
    assert all(e["user_id"].startswith("u") and len(e["user_id"]) == 6 for e in dataset)
    order_ids = [e["order_id"] for e in dataset if e["type"] == "order_paid"]
    assert len(order_ids) == len(set(order_ids))


def test_all_event_types_present(dataset: list[dict[str, Any]]) -> None:
    counts = Counter(e["type"] for e in dataset)
    assert set(counts) == set(EVENT_TYPES)
    assert counts["page_view"] > counts["add_to_cart"] > counts["order_paid"] > counts["order_refunded"]


def test_personas_consistent_with_dataset(by_user: dict[str, list[dict[str, Any]]]) -> None:
    mapping = synth.personas(2000, 7)
    assert set(mapping) == set(by_user)
    mix = Counter(mapping.values())
    assert set(mix) == set(synth.PERSONA_NAMES)
    for name in (
        "night_owl",
        "bargain_hunter",
        "loyal_big_spender",
        "drifting_away",
        "window_shopper",
        "new_user",
        "unhappy",
    ):
        assert mix[name] >= 100, mix


def test_small_population_has_every_persona() -> None:
    assert set(synth.personas(8, 1).values()) == set(synth.PERSONA_NAMES)
    assert len(synth.personas(3, 1)) == 3


def test_one_identify_first_with_valid_traits(by_user: dict[str, list[dict[str, Any]]]) -> None:
    for events in by_user.values():
        identifies = [e for e in events if e["type"] == "identify"]
        assert len(identifies) == 1
        assert events[0]["type"] == "identify"
        traits = identifies[0]["traits"]
        assert set(traits) == {"region", "age_band", "member_level", "signup_channel", "timezone"}
        ZoneInfo(traits["timezone"])
    zones = Counter(events[0]["traits"]["timezone"] for events in by_user.values())
    assert {"Asia/Shanghai", "Europe/Berlin", "America/New_York", "UTC", "Asia/Kolkata"} <= set(zones)


def test_orders_amounts_and_currencies(dataset: list[dict[str, Any]]) -> None:
    orders = [e for e in dataset if e["type"] == "order_paid"]
    categories = set()
    for order in orders:
        parsed = parse_event(orjson.dumps(order))
        assert isinstance(parsed, OrderPaid)
        assert parsed.items
        total = sum(item.price * item.quantity for item in parsed.items)
        assert abs(total - parsed.amount) < 0.005
        categories.update(item.category for item in parsed.items)
    assert len(categories) == 10
    currencies = Counter(o["currency"] for o in orders)
    assert set(currencies) == {"USD", "EUR", "CNY"}
    assert currencies["USD"] > len(orders) / 2


def test_refunds_refer_to_earlier_orders_of_the_same_user(by_user: dict[str, list[dict[str, Any]]]) -> None:
    refunds = 0
    for events in by_user.values():
        paid: dict[str, dict[str, Any]] = {}
        refunded: set[str] = set()
        for event in events:
            if event["type"] == "order_paid":
                paid[event["order_id"]] = event
            elif event["type"] == "order_refunded":
                refunds += 1
                order = paid[event["order_id"]]  # earlier order of this user
                assert _epoch(order) < _epoch(event)
                assert event["currency"] == order["currency"]
                assert 0 < event["amount"] <= order["amount"]
                assert event["order_id"] not in refunded
                refunded.add(event["order_id"])
    assert refunds > 50


def _local_hour(event: dict[str, Any], zone: str) -> int:
    return datetime.fromisoformat(event["ts"]).astimezone(ZoneInfo(zone)).hour


def _group(by_user: dict[str, list[dict[str, Any]]]) -> dict[str, list[list[dict[str, Any]]]]:
    mapping = synth.personas(2000, 7)
    out: dict[str, list[list[dict[str, Any]]]] = defaultdict(list)
    for uid, events in by_user.items():
        out[mapping[uid]].append(events)
    return out


def test_persona_behaviours(by_user: dict[str, list[dict[str, Any]]]) -> None:
    groups = _group(by_user)

    def activity(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in events if e["type"] != "identify"]

    def night_share(name: str) -> float:
        night = total = 0
        for events in groups[name]:
            zone = events[0]["traits"]["timezone"]
            for event in activity(events):
                hour = _local_hour(event, zone)
                night += hour >= 22 or hour < 6
                total += 1
        return night / total

    assert night_share("night_owl") > 0.75
    assert night_share("regular") < 0.15

    # drifting away: last event 30-60 days (+1.5 days for the last visit) before the end
    for events in groups["drifting_away"]:
        gap = (END_S - _epoch(events[-1])) / DAY
        assert 30 <= gap <= 62, gap

    # new users: first event within the last two weeks
    for events in groups["new_user"]:
        assert (END_S - _epoch(events[0])) / DAY <= 14

    # window shoppers: almost never buy; the latest cart add is an abandoned cart 8h..6d old
    orders = sum(e["type"] == "order_paid" for events in groups["window_shopper"] for e in events)
    carts = sum(e["type"] == "add_to_cart" for events in groups["window_shopper"] for e in events)
    assert orders * 10 < carts
    for events in groups["window_shopper"]:
        last_add = max(_epoch(e) for e in events if e["type"] == "add_to_cart")
        last_order = max((_epoch(e) for e in events if e["type"] == "order_paid"), default=0.0)
        assert last_add > last_order
        assert 8 * 3600 <= END_S - last_add <= 6 * DAY

    # value: loyal big spenders spend far more per user and order; bargain hunters have small orders
    def usd(events: list[dict[str, Any]]) -> list[float]:
        return [e["amount"] * synth.CURRENCY_RATES[e["currency"]] for e in events if e["type"] == "order_paid"]

    loyal = [v for events in groups["loyal_big_spender"] for v in usd(events)]
    bargain = [v for events in groups["bargain_hunter"] for v in usd(events)]
    regular = [v for events in groups["regular"] for v in usd(events)]
    assert sum(loyal) / len(groups["loyal_big_spender"]) > 1000
    assert sum(loyal) / len(loyal) > 2 * sum(regular) / len(regular)
    assert sum(bargain) / len(bargain) < 0.5 * sum(regular) / len(regular)
    loyal_orders = [sum(e["type"] == "order_paid" for e in events) for events in groups["loyal_big_spender"]]
    assert sum(loyal_orders) / len(loyal_orders) >= 4
    # loyal customers buy over the whole period
    spans = [(END_S - _epoch(events[0]), END_S - _epoch(events[-1])) for events in groups["loyal_big_spender"]]
    assert sum(first > 60 * DAY and last < 21 * DAY for first, last in spans) > 0.9 * len(spans)

    # bargain hunters search a lot and get refunds
    searches = Counter(e["type"] for events in groups["bargain_hunter"] for e in events)
    assert searches["search"] > 0.25 * sum(searches.values())
    assert searches["order_refunded"] > 0.1 * searches["order_paid"]

    # unhappy users: every one complains; most have a latest NPS that is a detractor
    detractors = 0
    for events in groups["unhappy"]:
        feedback = [e for e in events if e["type"] == "feedback"]
        assert any(e.get("complaint") for e in feedback)
        nps = [e for e in feedback if "nps" in e]
        detractors += bool(nps) and nps[-1]["nps"] <= 6
    assert detractors > 0.5 * len(groups["unhappy"])
    ratings = [e["rating"] for events in groups["unhappy"] for e in events if "rating" in e]
    assert sum(ratings) / len(ratings) < 2.5


def test_short_period_and_custom_end_are_valid() -> None:
    end = datetime(2027, 3, 5, 17, tzinfo=UTC)
    events = synth.generate(users=30, events=400, seed=3, days=20, end=end)
    lo = (end - timedelta(days=20)).timestamp()
    for event in events:
        parsed = parse_event(orjson.dumps(event))
        assert lo < parsed.epoch <= end.timestamp()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        synth.generate(users=10, events=5)
    with pytest.raises(ValueError):
        synth.generate(users=0, events=5)
    with pytest.raises(ValueError):
        synth.generate(end=datetime(2026, 1, 1))  # naive on purpose


def test_malformed_messages_fail_as_stated() -> None:
    messages = synth.malformed_messages(seed=7)
    assert messages == synth.malformed_messages(seed=7)
    reasons = Counter(reason for _, _, reason in messages)
    assert set(reasons) == {
        "invalid_json",
        "schema_violation",
        "unknown_type",
        "future_timestamp",
        "too_old",
        "unknown_currency",
    }
    for hint, raw, reason in messages:
        assert hint in EVENT_TYPES
        if reason in ("invalid_json", "schema_violation", "unknown_type"):
            with pytest.raises(ValidationError) as info:
                parse_event(raw)
            kinds = {e["type"] for e in info.value.errors()}
            if reason == "invalid_json":
                assert kinds & {"json_invalid", "json_type"}
            elif reason == "unknown_type":
                assert "union_tag_invalid" in kinds
            else:
                assert not kinds & {"json_invalid", "json_type", "union_tag_invalid"}
            continue
        event = parse_event(raw)  # valid JSON and schema, with the stated problem
        if reason == "future_timestamp":
            assert event.epoch > END_S + 30 * DAY
        elif reason == "too_old":
            assert (END_S - event.epoch) / DAY >= 199
        else:
            assert reason == "unknown_currency"
            assert getattr(event, "currency", None) == "XYZ"
            assert END_S - 10 * DAY < event.epoch <= END_S
    naive = [raw for _, raw, r in messages if r == "schema_violation" and b'"ts":"' in raw]
    assert any(orjson.loads(raw).get("ts", "").count("+") == 0 for raw in naive)


def test_malformed_messages_classified_by_pipeline() -> None:
    """The worker's own classifier gives each message its expected dead-letter reason."""
    from stream.core.intake import Message, Valid, classify, unpack
    from stream.tagging.definitions import load_catalogue

    catalogue = load_catalogue()
    for offset, (hint, raw, reason) in enumerate(synth.malformed_messages(seed=3)):
        message = Message(topic=f"portrait.{hint}", partition=0, offset=offset, key=b"u1", value=raw)
        unpacked = unpack(message, "test")
        if isinstance(unpacked, list):
            assert unpacked == [message], raw  # one dead letter per message: none unpacks into several
            result = classify(message, catalogue, END_S, END_S, 300.0, "test")
        else:
            result = unpacked
        assert not isinstance(result, Valid), (reason, raw)
        assert result.reason == reason, (raw, result.error)


def test_write_jsonl_round_trip(tmp_path: Path) -> None:
    events = synth.generate(users=20, events=200, seed=5)
    path = tmp_path / "events.jsonl"
    assert synth.write_jsonl(events, path) == len(events)
    lines = path.read_bytes().splitlines()
    assert [orjson.loads(line) for line in lines] == events
