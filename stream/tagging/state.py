"""Per-user state: daily tiles plus a few order-independent scalars, serialised compactly.

Everything here is commutative (sums, max/min, latest-by-timestamp) so the state reached does
not depend on the order in which a user's events arrive across topics. Exactly-once application
comes from ``offsets`` (the last applied offset per source topic-partition) and a short ring of
recent event ids for producer duplicates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

# Daily tile counter slots.
EVENTS, PAGE_VIEWS, SEARCHES, CART_ADDS, CHECKOUTS = 0, 1, 2, 3, 4
ORDERS, ORDER_CENTS, REFUNDS, REFUND_CENTS = 5, 6, 7, 8
RATING_SUM, RATING_COUNT, COMPLAINTS, FEEDBACKS = 9, 10, 11, 12
TILE_WIDTH = 13

DAY = 86400


@dataclass
class UserState:
    """Exact aggregate state of one user. ``tiles[day]`` holds counters for one UTC day."""

    tiles: dict[int, list[int]] = field(default_factory=dict)
    hours: dict[int, dict[int, int]] = field(default_factory=dict)  # day -> UTC hour -> activity
    first_seen: float | None = None
    last_seen: float | None = None
    last_activity: float | None = None
    last_order: float | None = None
    last_cart_add: float | None = None
    interest: dict[str, float] = field(default_factory=dict)  # category -> anchored score
    traits: dict[str, tuple[str, float, str]] = field(default_factory=dict)  # value, ts, event id
    nps: tuple[int, float, str] | None = None  # score, ts, event id
    offsets: dict[str, int] = field(default_factory=dict)  # "topic/partition" -> last offset
    recent_ids: list[str] = field(default_factory=list)
    published: dict[str, str] = field(default_factory=dict)  # audience tag values last written
    evaluated_at: float | None = None  # the `now` of the last evaluation (monotonic per user)
    due_at: float | None = None  # when the last evaluation said tags change next without an event
    rules_prev: dict[str, str] | None = None  # values of rule-referenced tags at the last evaluation
    rules_hash: str | None = None  # which tracked-tag set ``rules_prev`` was recorded for
    delivery: dict[str, Any] = field(default_factory=dict)  # rules.DeliveryMemory.to_dict()
    exposures: list[list[Any]] = field(default_factory=list)  # open [rule, group, at, until] for uplift
    order_seen: float | None = None  # last order already checked against exposures
    models: dict[str, Any] = field(default_factory=dict)  # models.UserModelState.to_json()
    merged: list[list[Any]] = field(default_factory=list)  # [anonymous subject, link event time] merged in

    def tile(self, day: int) -> list[int]:
        tile = self.tiles.get(day)
        if tile is None:
            tile = self.tiles[day] = [0] * TILE_WIDTH
        return tile

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {
            "t": {str(d): t for d, t in self.tiles.items()},
            "h": {str(d): {str(h): n for h, n in hs.items()} for d, hs in self.hours.items()},
            "fs": self.first_seen,
            "ls": self.last_seen,
            "la": self.last_activity,
            "lo": self.last_order,
            "lc": self.last_cart_add,
            "i": self.interest,
            "tr": self.traits,
            "n": self.nps,
            "o": self.offsets,
            "r": self.recent_ids,
            "p": self.published,
            "e": self.evaluated_at,
            "d": self.due_at,
            "rp": self.rules_prev,
            "rh": self.rules_hash,
            "dm": self.delivery,
            "x": self.exposures,
            "os": self.order_seen,
            "m": self.models,
            "mg": self.merged,
        }
        return orjson.dumps(doc)

    @classmethod
    def from_bytes(cls, raw: bytes | str) -> UserState:
        doc = orjson.loads(raw)
        return cls(
            tiles={int(d): t for d, t in doc["t"].items()},
            hours={int(d): {int(h): n for h, n in hs.items()} for d, hs in doc["h"].items()},
            first_seen=doc["fs"],
            last_seen=doc["ls"],
            last_activity=doc["la"],
            last_order=doc["lo"],
            last_cart_add=doc["lc"],
            interest=doc["i"],
            traits={k: (v[0], v[1], v[2]) for k, v in doc["tr"].items()},
            nps=(doc["n"][0], doc["n"][1], doc["n"][2]) if doc["n"] else None,
            offsets=doc["o"],
            recent_ids=doc["r"],
            published=doc["p"],
            evaluated_at=doc.get("e"),
            due_at=doc.get("d"),
            rules_prev=doc.get("rp"),
            rules_hash=doc.get("rh"),
            delivery=doc.get("dm") or {},
            exposures=doc.get("x") or [],
            order_seen=doc.get("os"),
            models=doc.get("m") or {},
            merged=doc.get("mg") or [],
        )
