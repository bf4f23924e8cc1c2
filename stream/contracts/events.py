"""Input event models (pydantic v2), validated straight from raw Kafka bytes.

Wire format (JSON, one event per message, message key = user id)::

    {"schema_version": 1, "event_id": "e-1", "type": "page_view", "user_id": "u1",
     "ts": "2026-11-01T12:00:00+00:00", "page": "/p/42", "category": "shoes"}

Every event carries ``schema_version``, ``event_id``, ``type``, a timezone-aware ``ts`` and a
``user_id`` and/or ``anonymous_id``. Unknown extra fields are ignored so collectors may add context.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from functools import cached_property
from typing import Annotated, Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    field_validator,
    model_validator,
)

# Profiles of anonymous visitors live under the subject ``anon:<anonymous_id>`` (docs/redis-keys.md,
# "Identifiers"). A user id may therefore not start with that prefix in any letter case: it would
# address a device's profile, or the profile a merged device now aliases.
RESERVED_USER_ID_PREFIX = "anon:"
# Bounds keep every stored number exact and inside the state's 64-bit integers (money is summed
# in cents): an order of at most 1e9 currency units, at most 10,000 of one item.
MAX_MONEY = 1e9
MAX_QUANTITY = 10_000


def _not_reserved(value: str) -> str:
    if value[: len(RESERVED_USER_ID_PREFIX)].lower() == RESERVED_USER_ID_PREFIX:
        raise ValueError(f"user ids may not start with the reserved prefix {RESERVED_USER_ID_PREFIX!r}")
    return value


Id = Annotated[str, Field(min_length=1, max_length=128)]
UserId = Annotated[
    str,
    Field(min_length=1, max_length=128, json_schema_extra={"not": {"pattern": "^[aA][nN][oO][nN]:"}}),
    AfterValidator(_not_reserved),
]
Category = Annotated[str, Field(min_length=1, max_length=64)]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
Money = Annotated[float, Field(ge=0, le=MAX_MONEY, allow_inf_nan=False)]
Quantity = Annotated[int, Field(ge=1, le=MAX_QUANTITY)]


class EventTime(BaseModel):
    """An event's ``ts`` alone, read without validating the rest: what delivering the input
    partitions in step by event time needs (``stream.core.intake.message_time``)."""

    model_config = ConfigDict(extra="ignore")

    ts: AwareDatetime


class EventBase(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: Literal[1] = 1
    event_id: Id
    user_id: UserId | None = None
    anonymous_id: Id | None = None
    ts: AwareDatetime

    @model_validator(mode="after")
    def _has_subject(self) -> EventBase:
        if self.user_id is None and self.anonymous_id is None:
            raise ValueError("one of user_id or anonymous_id is required")
        # ``epoch`` computed here, once, spares the cached property's first (locked) lookup
        self.__dict__["epoch"] = self.ts.timestamp()
        return self

    @property
    def subject_id(self) -> str:
        """The id whose profile this event updates (the known user when present)."""
        return self.user_id if self.user_id is not None else f"anon:{self.anonymous_id}"

    @cached_property
    def epoch(self) -> float:
        """``ts`` in seconds since the epoch, computed once per event (the pipeline reads it at
        every stage, and an aware datetime's ``timestamp()`` is not cheap)."""
        return self.ts.timestamp()

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy (``update`` may change ``ts``: the copy computes its own ``epoch``)."""
        copied = super().model_copy(update=update, deep=deep)
        copied.__dict__.pop("epoch", None)
        return copied


class PageView(EventBase):
    type: Literal["page_view"]
    page: str = Field(default="/", max_length=2048)
    category: Category | None = None
    product_id: Id | None = None


class Search(EventBase):
    type: Literal["search"]
    query: str = Field(max_length=512)
    category: Category | None = None


class AddToCart(EventBase):
    type: Literal["add_to_cart"]
    product_id: Id
    category: Category | None = None
    price: Money = 0.0
    quantity: Quantity = 1


class RemoveFromCart(EventBase):
    type: Literal["remove_from_cart"]
    product_id: Id
    category: Category | None = None
    quantity: Quantity = 1


class CheckoutStarted(EventBase):
    type: Literal["checkout_started"]
    cart_value: Money | None = None


class OrderItem(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    product_id: Id
    category: Category
    price: Money
    quantity: Quantity = 1


class OrderPaid(EventBase):
    type: Literal["order_paid"]
    order_id: Id
    amount: Money
    currency: Currency = "USD"
    items: list[OrderItem] = Field(default_factory=list)


class OrderRefunded(EventBase):
    type: Literal["order_refunded"]
    order_id: Id
    amount: Money
    currency: Currency = "USD"


class Feedback(EventBase):
    type: Literal["feedback"]
    rating: int | None = Field(default=None, ge=1, le=5)
    nps: int | None = Field(default=None, ge=0, le=10)
    text: str | None = Field(default=None, max_length=4000)
    complaint: bool = False

    @model_validator(mode="after")
    def _has_content(self) -> Feedback:
        if self.rating is None and self.nps is None and self.text is None and not self.complaint:
            raise ValueError("feedback needs a rating, an nps score, a text or complaint=true")
        return self


class Traits(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    region: str | None = Field(default=None, max_length=64)
    age_band: str | None = Field(default=None, max_length=16)
    member_level: str | None = Field(default=None, max_length=32)
    signup_channel: str | None = Field(default=None, max_length=32)
    timezone: str | None = Field(default=None, max_length=64)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"unknown time zone {value!r}") from exc
        return value


class Identify(EventBase):
    type: Literal["identify"]
    traits: Traits = Field(default_factory=Traits)


Event = Annotated[
    PageView | Search | AddToCart | RemoveFromCart | CheckoutStarted | OrderPaid | OrderRefunded | Feedback | Identify,
    Field(discriminator="type"),
]
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
EVENT_TYPES: tuple[str, ...] = (
    "page_view",
    "search",
    "add_to_cart",
    "remove_from_cart",
    "checkout_started",
    "order_paid",
    "order_refunded",
    "feedback",
    "identify",
)


def parse_event(raw: bytes) -> Event:
    """Validate one event from raw bytes. Raises ``pydantic.ValidationError``."""
    return EVENT_ADAPTER.validate_json(raw)


def to_epoch(ts: datetime) -> float:
    return ts.timestamp()
