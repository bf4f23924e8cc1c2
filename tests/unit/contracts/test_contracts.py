"""Wire contracts: numeric bounds and the reserved anonymous namespace (issue 12, items 2 and 3)."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from pydantic import ValidationError

from stream.contracts.events import EVENT_ADAPTER, MAX_MONEY, MAX_QUANTITY, parse_event

TS = "2026-11-01T10:00:00+00:00"


def _order(**fields: object) -> bytes:
    event = {"event_id": "o1", "type": "order_paid", "user_id": "alice", "ts": TS, "order_id": "o1", "amount": 10.0}
    event.update(fields)
    return orjson.dumps(event)


@pytest.mark.parametrize("amount", [1e20, MAX_MONEY * 1.0001, -0.01])
def test_amounts_outside_the_bounds_are_schema_violations(amount: float) -> None:
    with pytest.raises(ValidationError):
        parse_event(_order(amount=amount))


def test_the_largest_allowed_amount_is_accepted() -> None:
    assert parse_event(_order(amount=MAX_MONEY)).amount == MAX_MONEY  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "item",
    [
        {"product_id": "p", "category": "c", "price": 1e12, "quantity": 1},
        {"product_id": "p", "category": "c", "price": 1.0, "quantity": MAX_QUANTITY + 1},
        {"product_id": "p", "category": "c", "price": 1.0, "quantity": 0},
    ],
)
def test_order_items_are_bounded(item: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        parse_event(_order(items=[item]))


@pytest.mark.parametrize("user_id", ["anon:dev1", "ANON:dev1", "Anon:x"])
def test_a_user_id_cannot_name_the_anonymous_namespace(user_id: str) -> None:
    raw = orjson.dumps({"event_id": "e", "type": "page_view", "user_id": user_id, "ts": TS})
    with pytest.raises(ValidationError, match="reserved prefix"):
        parse_event(raw)


@pytest.mark.parametrize("user_id", ["anonymous", "anon", "x-anon:1", "{weird}"])
def test_other_ids_are_accepted(user_id: str) -> None:
    raw = orjson.dumps({"event_id": "e", "type": "page_view", "user_id": user_id, "ts": TS})
    assert parse_event(raw).subject_id == user_id


def test_bounds_and_the_reserved_prefix_are_in_the_published_json_schema() -> None:
    text = orjson.dumps(EVENT_ADAPTER.json_schema()).decode()
    assert f'"maximum":{MAX_MONEY}' in text
    assert f'"maximum":{MAX_QUANTITY}' in text
    assert '"not":{"pattern":"^[aA][nN][oO][nN]:"}' in text


def test_epoch_is_the_event_time_also_of_a_copy_with_another_ts() -> None:
    event = parse_event(_order(ts="2026-11-01T10:00:00+02:00"))
    assert event.epoch == 1793520000.0  # 2026-11-01T08:00:00Z, by hand
    later = event.model_copy(update={"ts": datetime(2026, 11, 2, 8, 0, tzinfo=UTC)})
    assert later.epoch == 1793520000.0 + 86400 and event.epoch == 1793520000.0
    built = type(event).model_construct(**{**event.model_dump(), "ts": datetime(2026, 11, 1, 9, 0, tzinfo=UTC)})
    assert built.epoch == 1793520000.0 + 3600
