"""Deterministic synthetic clickstream/transaction dataset with seeded personas.

``generate(users, events, seed, end, days)`` returns event dicts in the wire format of
``stream.contracts.events`` (``ts`` as an ISO-8601 string with offset), sorted by time (ties by ``event_id``).
The same arguments always give the same output: only ``random.Random(seed)`` is used, never the
global generator or the wall clock.

Every user gets one persona (see ``PERSONAS``; ``personas(users, seed)`` returns the assignment
``generate`` uses) that shapes *when* they are active, *what* they do in a session and *how much*
they spend, so that the tags of docs/tags.md have something to find:

* ``regular``           daytime shopper, ordinary mix of browsing, carts, orders and feedback.
* ``night_owl``         ~85 % of sessions start between 22:00 and 04:00 local time.
* ``bargain_hunter``    long search-heavy sessions, cheap products, small orders, many refunds.
* ``loyal_big_spender`` active over the whole period, frequent large orders, happy feedback.
* ``drifting_away``     active early, activity fades and stops 30-60 days before ``end``.
* ``window_shopper``    browses and adds to cart, rarely buys; the last session is an abandoned
  cart between 6 days and 8 hours before ``end``.
* ``new_user``          first appears during the last 2 weeks.
* ``unhappy``           complaints, low ratings, NPS detractor, some refunds.

``malformed_messages(seed, end)`` returns raw messages that the worker must dead-letter, each with
the expected reason.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import accumulate
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson

DEFAULT_END = datetime(2026, 11, 1, tzinfo=UTC)
DEFAULT_DAYS = 90

CATEGORIES: tuple[str, ...] = (
    "electronics",
    "fashion",
    "home",
    "beauty",
    "sports",
    "books",
    "toys",
    "grocery",
    "shoes",
    "jewelry",
)
# (min, max) list price in USD per category.
PRICE_RANGES: dict[str, tuple[float, float]] = {
    "electronics": (25.0, 900.0),
    "fashion": (8.0, 220.0),
    "home": (10.0, 400.0),
    "beauty": (4.0, 90.0),
    "sports": (10.0, 320.0),
    "books": (5.0, 45.0),
    "toys": (6.0, 130.0),
    "grocery": (2.0, 45.0),
    "shoes": (20.0, 260.0),
    "jewelry": (30.0, 1500.0),
}
SEARCH_WORDS: dict[str, tuple[str, ...]] = {
    "electronics": ("headphones", "laptop", "usb c cable", "smartwatch", "4k tv", "phone case"),
    "fashion": ("linen shirt", "winter coat", "jeans", "summer dress", "hoodie"),
    "home": ("desk lamp", "bed sheets", "coffee maker", "storage box", "curtains"),
    "beauty": ("moisturizer", "lipstick", "shampoo", "sunscreen", "perfume"),
    "sports": ("yoga mat", "running shorts", "dumbbells", "bike helmet", "tent"),
    "books": ("fantasy novel", "cookbook", "python programming", "biography", "comics"),
    "toys": ("lego", "puzzle", "board game", "plush", "rc car"),
    "grocery": ("coffee beans", "olive oil", "green tea", "pasta", "chocolate"),
    "shoes": ("sneakers", "running shoes", "boots", "sandals", "loafers"),
    "jewelry": ("silver ring", "necklace", "watch", "earrings", "bracelet"),
}
PRODUCTS_PER_CATEGORY = 120

# Time zone -> (region, weight, local currency, share of orders in the local currency).
TIMEZONES: dict[str, tuple[str, float, str, float]] = {
    "America/New_York": ("us-east", 0.28, "USD", 1.0),
    "America/Los_Angeles": ("us-west", 0.14, "USD", 1.0),
    "UTC": ("global", 0.10, "USD", 1.0),
    "Europe/Berlin": ("eu-central", 0.17, "EUR", 0.8),
    "Asia/Shanghai": ("cn", 0.16, "CNY", 0.8),
    "Asia/Kolkata": ("in", 0.15, "USD", 1.0),
}
# USD value of one unit (matches currency_rates in stream/tags.yaml).
CURRENCY_RATES: dict[str, float] = {"USD": 1.0, "EUR": 1.08, "CNY": 0.14}
AGE_BANDS: tuple[str, ...] = ("18-24", "25-34", "35-44", "45-54", "55+")
AGE_WEIGHTS: tuple[float, ...] = (0.18, 0.32, 0.24, 0.15, 0.11)
MEMBER_LEVELS: tuple[str, ...] = ("basic", "silver", "gold", "platinum")
SIGNUP_CHANNELS: tuple[str, ...] = ("organic", "paid_search", "social", "referral", "email")
SIGNUP_WEIGHTS: tuple[float, ...] = (0.35, 0.25, 0.2, 0.12, 0.08)

# Relative session start weights per local hour 0..23: daytime profile (~3 % at night 22-06).
DAY_HOURS: tuple[float, ...] = (
    0.3, 0.1, 0.1, 0.1, 0.1, 0.3, 1.0, 2.0, 3.0, 4.0, 4.0, 4.0,
    5.0, 5.0, 4.0, 4.0, 4.0, 5.0, 6.0, 7.0, 7.0, 6.0, 1.0, 0.5,
)  # fmt: skip
NIGHT_OWL_HOURS: tuple[int, ...] = (22, 23, 0, 1, 2, 3)
NIGHT_OWL_WEIGHTS: tuple[float, ...] = (1.0, 1.5, 1.5, 1.3, 1.0, 0.7)
NIGHT_OWL_SHARE = 0.85

SESSION_KINDS: tuple[str, ...] = ("browse", "cart", "checkout", "purchase", "refund", "feedback")
# Minimum number of events of a session of each kind.
MIN_LEN: dict[str, int] = {"browse": 1, "cart": 2, "checkout": 3, "purchase": 4, "refund": 1, "feedback": 1}
HOUR = 3600
DAY = 86400


@dataclass(frozen=True)
class Persona:
    """How one kind of user behaves. Session kind weights are relative."""

    name: str
    share: float  # share of the user population
    activity: float  # relative event budget
    kinds: tuple[float, float, float, float, float, float]  # weights in SESSION_KINDS order
    browse_len: tuple[int, int]  # page views + searches per session (min, max)
    search_share: float  # share of browse events that are searches
    price_band: tuple[float, float]  # quantile band of the category's price list to pick from
    items: tuple[int, int]  # order lines (min, max)
    max_quantity: int
    feedback_style: str  # "happy" | "normal" | "unhappy"
    level_weights: tuple[float, float, float, float]  # MEMBER_LEVELS weights


PERSONAS: dict[str, Persona] = {
    p.name: p
    for p in (
        Persona("regular", 0.18, 1.0, (0.52, 0.12, 0.05, 0.23, 0.02, 0.06), (2, 7), 0.2,
                (0.1, 0.8), (1, 2), 2, "normal", (0.5, 0.3, 0.15, 0.05)),
        Persona("night_owl", 0.12, 1.5, (0.52, 0.14, 0.05, 0.21, 0.02, 0.06), (2, 8), 0.2,
                (0.1, 0.8), (1, 2), 2, "normal", (0.5, 0.3, 0.15, 0.05)),
        Persona("bargain_hunter", 0.14, 1.8, (0.46, 0.10, 0.06, 0.22, 0.14, 0.02), (4, 12), 0.5,
                (0.0, 0.3), (1, 1), 2, "normal", (0.6, 0.3, 0.08, 0.02)),
        Persona("loyal_big_spender", 0.08, 3.0, (0.30, 0.04, 0.03, 0.52, 0.02, 0.09), (1, 3), 0.15,
                (0.6, 1.0), (1, 4), 3, "happy", (0.05, 0.15, 0.4, 0.4)),
        Persona("drifting_away", 0.12, 0.8, (0.52, 0.12, 0.05, 0.23, 0.02, 0.06), (2, 6), 0.2,
                (0.1, 0.8), (1, 2), 2, "normal", (0.5, 0.3, 0.15, 0.05)),
        Persona("window_shopper", 0.14, 1.0, (0.50, 0.38, 0.08, 0.02, 0.00, 0.02), (3, 9), 0.25,
                (0.2, 1.0), (1, 1), 1, "normal", (0.7, 0.2, 0.08, 0.02)),
        Persona("new_user", 0.12, 0.45, (0.60, 0.12, 0.04, 0.20, 0.00, 0.04), (2, 6), 0.25,
                (0.1, 0.7), (1, 2), 2, "normal", (0.9, 0.1, 0.0, 0.0)),
        Persona("unhappy", 0.10, 0.8, (0.42, 0.10, 0.05, 0.20, 0.10, 0.13), (2, 6), 0.2,
                (0.1, 0.8), (1, 2), 2, "unhappy", (0.5, 0.3, 0.15, 0.05)),
    )
}  # fmt: skip
PERSONA_NAMES: tuple[str, ...] = tuple(PERSONAS)
# Interest split over a user's four favourite categories.
FAV_WEIGHTS: tuple[float, ...] = (0.5, 0.28, 0.15, 0.07)

# Precomputed cumulative weights (``choices(cum_weights=...)`` gives the same draws, faster).
FAV_CUM: tuple[float, ...] = tuple(accumulate(FAV_WEIGHTS))
_KIND_CUM: dict[str, tuple[float, ...]] = {n: tuple(accumulate(p.kinds)) for n, p in PERSONAS.items()}
_HOURS: tuple[int, ...] = tuple(range(24))
_DAY_CUM: tuple[float, ...] = tuple(accumulate(DAY_HOURS))
_NIGHT_CUM: tuple[float, ...] = tuple(accumulate(NIGHT_OWL_WEIGHTS))

COMPLAINT_TEXTS: tuple[str, ...] = (
    "Parcel arrived damaged",
    "Delivery was two weeks late",
    "Support never answered my emails",
    "Item not as described",
    "Charged twice for one order",
    "Refund still not processed",
)
PRAISE_TEXTS: tuple[str, ...] = ("Great service", "Fast delivery, thanks!", "Love it", "Good value")


# --------------------------------------------------------------------------------------------
# Persona assignment
# --------------------------------------------------------------------------------------------


def _user_id(index: int) -> str:
    return f"u{index + 1:05d}"


def _assign_personas(users: int, rng: random.Random) -> list[str]:
    """Exact quotas by largest remainder (every persona present once users >= 8), then shuffled."""
    raw = [PERSONAS[n].share * users for n in PERSONA_NAMES]
    counts = [math.floor(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: users - sum(counts)]:
        counts[i] += 1
    # Small populations: make sure as many personas as possible are present.
    for i in range(len(counts)):
        if counts[i] == 0:
            donor = max(range(len(counts)), key=lambda j: (counts[j], -j))
            if counts[donor] > 1:
                counts[donor] -= 1
                counts[i] += 1
    names = [name for name, c in zip(PERSONA_NAMES, counts, strict=True) for _ in range(c)]
    rng.shuffle(names)
    return names


def personas(users: int = 2000, seed: int = 7) -> dict[str, str]:
    """The persona of every user id, exactly as ``generate(users=..., seed=...)`` assigns them."""
    rng = random.Random(seed)
    return {_user_id(i): name for i, name in enumerate(_assign_personas(users, rng))}


# --------------------------------------------------------------------------------------------
# Catalogue
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Product:
    product_id: str
    category: str
    usd_cents: int


def _catalogue(rng: random.Random) -> dict[str, list[Product]]:
    """Per category, products sorted by price (log-uniform within the category's range)."""
    out: dict[str, list[Product]] = {}
    for ci, cat in enumerate(CATEGORIES):
        lo, hi = PRICE_RANGES[cat]
        prices = sorted(
            round(math.exp(rng.uniform(math.log(lo), math.log(hi))), 2) for _ in range(PRODUCTS_PER_CATEGORY)
        )
        out[cat] = [
            Product(f"p{ci:02d}{j:04d}", cat, round(p * 100) - (1 if rng.random() < 0.5 else 0))
            for j, p in enumerate(prices)
        ]
    return out


# --------------------------------------------------------------------------------------------
# Per-user generation
# --------------------------------------------------------------------------------------------


@dataclass
class _User:
    index: int
    uid: str
    persona: Persona
    zone: ZoneInfo
    tz_name: str
    currency: str
    favourites: list[str]
    traits: dict[str, str]


# A planned event: (type, offset in seconds from session start, payload without common fields).
_Planned = tuple[str, int, dict[str, Any]]


@dataclass
class _Session:
    kind: str
    events: list[_Planned] = field(default_factory=list)

    @property
    def duration(self) -> int:
        return self.events[-1][1] if self.events else 0


def _local_price(usd_cents: int, currency: str) -> int:
    if currency == "USD":
        return usd_cents
    value = usd_cents / CURRENCY_RATES[currency]
    # Psychological pricing in the local currency: x.99 / x.00 endings.
    whole = max(1, int(value / 100))
    return whole * 100 + (99 if value % 100 >= 50 else 0)


class _Generator:
    def __init__(self, rng: random.Random, catalogue: dict[str, list[Product]]) -> None:
        self.rng = rng
        self.catalogue = catalogue
        self.order_seq = 0

    # ---- small pickers ----------------------------------------------------------------------

    def category(self, user: _User) -> str:
        return self.rng.choices(user.favourites, cum_weights=FAV_CUM)[0]

    def product(self, user: _User, category: str) -> Product:
        items = self.catalogue[category]
        lo, hi = user.persona.price_band
        a = int(lo * (len(items) - 1))
        b = max(a, int(hi * (len(items) - 1)))
        return items[self.rng.randint(a, b)]

    def gap(self, lo: int = 8, hi: int = 150) -> int:
        return self.rng.randint(lo, hi)

    # ---- session plans ----------------------------------------------------------------------

    def browse_events(self, user: _User, n: int, out: list[_Planned], t: int) -> tuple[int, Product | None]:
        """``n`` page views / searches; returns the end offset and the last product looked at."""
        rng = self.rng
        cat = self.category(user)
        last: Product | None = None
        for i in range(n):
            if i:
                t += self.gap()
            if rng.random() < 0.25:
                cat = self.category(user)
            if i > 0 and rng.random() < user.persona.search_share:
                word = rng.choice(SEARCH_WORDS[cat])
                if user.persona.name == "bargain_hunter" and rng.random() < 0.6:
                    word = rng.choice(("cheap ", "discount ", "", "")) + word + rng.choice((" sale", " deal", ""))
                payload: dict[str, Any] = {"query": word}
                if rng.random() < 0.7:
                    payload["category"] = cat
                out.append(("search", t, payload))
            elif i == 0 and rng.random() < 0.3:
                out.append(("page_view", t, {"page": rng.choice(("/", "/deals", "/new"))}))
            elif rng.random() < 0.2:
                out.append(("page_view", t, {"page": f"/c/{cat}", "category": cat}))
            else:
                last = self.product(user, cat)
                out.append(
                    (
                        "page_view",
                        t,
                        {"page": f"/p/{last.product_id}", "category": cat, "product_id": last.product_id},
                    )
                )
        return t, last

    def shop_session(self, user: _User, kind: str, n: int) -> _Session:
        """browse / cart / checkout / purchase session with exactly ``n`` events."""
        rng = self.rng
        persona = user.persona
        session = _Session(kind)
        ev = session.events
        tail = {"browse": 0, "cart": 0, "checkout": 1, "purchase": 2}[kind]
        if kind == "browse":
            browse_n, cart_n = n, 0
        else:
            # Split the remaining events between browsing and cart actions (at least one of each).
            room = n - tail
            cart_n = min(room - 1, rng.choice((1, 1, 1, 2, 2, 3)))
            browse_n = room - cart_n
        t, last = self.browse_events(user, browse_n, ev, 0)
        if cart_n == 0:
            return session
        lines: list[tuple[Product, int]] = []
        max_lines = persona.items[1] if kind == "purchase" else 3
        removed = 0
        for j in range(cart_n):
            t += self.gap(10, 240)
            # The last cart action may be a removal (a cart session may end up empty; checkout
            # and purchase sessions keep at least one line).
            live = len(lines) - removed
            can_remove = j > 0 and j == cart_n - 1 and (live > 1 or (kind == "cart" and live == 1))
            if can_remove and rng.random() < 0.4:
                prod, qty = lines[-1]
                ev.append(
                    ("remove_from_cart", t, {"product_id": prod.product_id, "category": prod.category, "quantity": qty})
                )
                removed += 1
                continue
            prod = last if last is not None and not lines else self.product(user, self.category(user))
            qty = rng.randint(1, persona.max_quantity) if rng.random() < 0.3 else 1
            if len(lines) < max_lines:
                lines.append((prod, qty))
            price = _local_price(prod.usd_cents, user.currency) / 100
            payload = {"product_id": prod.product_id, "category": prod.category, "price": price, "quantity": qty}
            ev.append(("add_to_cart", t, payload))
        if kind == "cart":
            return session
        kept = lines[: len(lines) - removed] if removed else lines
        kept = kept or lines[:1]
        # Purchases: top up the order to the persona's number of lines (extra lines were bought
        # "from the cart" of an earlier visit).
        if kind == "purchase":
            want = rng.randint(*persona.items)
            while len(kept) < want:
                prod = self.product(user, self.category(user))
                kept.append((prod, rng.randint(1, persona.max_quantity) if rng.random() < 0.3 else 1))
        cents = sum(_local_price(p.usd_cents, user.currency) * q for p, q in kept)
        t += self.gap(20, 300)
        ev.append(("checkout_started", t, {"cart_value": cents / 100}))
        if kind == "checkout":
            return session
        t += self.gap(30, 200)
        self.order_seq += 1
        items = [
            {
                "product_id": p.product_id,
                "category": p.category,
                "price": _local_price(p.usd_cents, user.currency) / 100,
                "quantity": q,
            }
            for p, q in kept
        ]
        ev.append(
            (
                "order_paid",
                t,
                {
                    "order_id": f"o{self.order_seq:07d}",
                    "amount": cents / 100,
                    "currency": user.currency,
                    "items": items,
                },
            )
        )
        return session

    def feedback_payload(self, user: _User) -> dict[str, Any]:
        rng = self.rng
        style = user.persona.feedback_style
        shape = rng.random()
        payload: dict[str, Any] = {}
        if style == "unhappy":
            if shape < 0.55:
                payload = {"complaint": True, "text": rng.choice(COMPLAINT_TEXTS)}
                if rng.random() < 0.6:
                    payload["rating"] = rng.choice((1, 1, 2))
            elif shape < 0.75:
                payload = {"rating": rng.choice((1, 2, 2, 3))}
            else:
                payload = {"nps": rng.randint(0, 6)}
                if rng.random() < 0.5:
                    payload["rating"] = rng.choice((1, 2))
            return payload
        if style == "happy":
            rating = rng.choice((4, 5, 5, 5))
            nps = rng.choice((8, 9, 10, 10))
        else:
            rating = rng.choices((2, 3, 4, 5), (0.08, 0.22, 0.4, 0.3))[0]
            nps = rng.choices(range(4, 11), (0.04, 0.06, 0.1, 0.2, 0.25, 0.2, 0.15))[0]
        if shape < 0.45:
            payload = {"rating": rating}
        elif shape < 0.7:
            payload = {"nps": nps}
        else:
            payload = {"rating": rating, "nps": nps}
        if rng.random() < 0.15:
            payload["text"] = rng.choice(PRAISE_TEXTS) if rating >= 4 else "It was ok"
        if style == "normal" and rng.random() < 0.03:
            payload["complaint"] = True
            payload["text"] = rng.choice(COMPLAINT_TEXTS)
        return payload

    def plan(self, user: _User, budget: int) -> list[_Session]:
        """Sessions with exactly ``budget`` events in chronological order."""
        rng = self.rng
        persona = user.persona
        sessions: list[_Session] = []
        tail: list[_Session] = []
        remaining = budget
        if persona.name == "window_shopper" and remaining >= 2:
            tail.append(self.shop_session(user, "cart", min(remaining, rng.randint(2, 5))))
            remaining -= len(tail[-1].events)
        if persona.name == "unhappy" and remaining >= 1:
            # The latest feedback: a complaint, mostly with an NPS detractor score.
            last: dict[str, Any] = {"complaint": True, "text": rng.choice(COMPLAINT_TEXTS)}
            if rng.random() < 0.75:
                last["nps"] = rng.randint(0, 4)
            tail.append(_Session("feedback", [("feedback", 0, last)]))
            remaining -= 1
        orders = 0
        while remaining > 0:
            kind = rng.choices(SESSION_KINDS, cum_weights=_KIND_CUM[persona.name])[0]
            if kind == "refund" and orders == 0:
                kind = "browse"
            if kind == "feedback" and orders == 0 and rng.random() < 0.7:
                kind = "browse"
            if kind == "refund":  # the order it refunds is picked when times are known
                sessions.append(_Session(kind, [("order_refunded", 0, {})]))
                remaining -= 1
                continue
            if kind == "feedback":
                sessions.append(_Session(kind, [("feedback", 0, self.feedback_payload(user))]))
                remaining -= 1
                continue
            lo, hi = persona.browse_len
            n = rng.randint(lo, hi) + {"browse": 0, "cart": 1, "checkout": 2, "purchase": 3}[kind]
            if kind == "cart":
                n += rng.randint(0, 1)
            n = min(n, remaining)
            if n < MIN_LEN[kind]:
                kind = "browse"
            sessions.append(self.shop_session(user, kind, n))
            if kind == "purchase":
                orders += 1
            remaining -= n
        sessions.extend(tail)
        return sessions


def _hour_choice(rng: random.Random, persona: Persona) -> int:
    if persona.name == "night_owl" and rng.random() < NIGHT_OWL_SHARE:
        return rng.choices(NIGHT_OWL_HOURS, cum_weights=_NIGHT_CUM)[0]
    return rng.choices(_HOURS, cum_weights=_DAY_CUM)[0]


def _session_start(rng: random.Random, user: _User, lo: float, hi: float, fading: bool, epoch0: datetime) -> int:
    """A start time in [lo, hi] at a local hour drawn from the persona's daily rhythm."""
    if hi <= lo:
        return int(lo)
    t = lo
    for _ in range(6):
        u = rng.random()
        if fading and rng.random() < 0.7:
            u = 1.0 - math.sqrt(1.0 - u)  # density decreasing linearly to zero at hi
        t = lo + (hi - lo) * u
        local_day: date = (epoch0 + timedelta(seconds=t)).astimezone(user.zone).date()
        hour = _hour_choice(rng, user.persona)
        local = datetime(
            local_day.year,
            local_day.month,
            local_day.day,
            hour,
            rng.randint(0, 59),
            rng.randint(0, 59),
            tzinfo=user.zone,
        )
        candidate = local.timestamp()
        if lo <= candidate <= hi:
            return int(candidate)
    return int(min(max(t, lo), hi))


def generate(
    users: int = 2000,
    events: int = 50000,
    seed: int = 7,
    end: datetime = DEFAULT_END,
    days: int = DEFAULT_DAYS,
) -> list[dict[str, Any]]:
    """A deterministic synthetic dataset of exactly ``events`` events for ``users`` users.

    Every event validates with ``stream.contracts.events.parse_event``; all ``ts`` lie in
    ``(end - days, end]``. Sorted by ``ts`` then ``event_id`` (ids increase with time).
    """
    if users < 1:
        raise ValueError("users must be >= 1")
    if events < users:
        raise ValueError("events must be >= users (every user has an identify event)")
    if end.tzinfo is None:
        raise ValueError("end must be timezone-aware")
    if days < 15:
        raise ValueError("days must be >= 15")
    rng = random.Random(seed)
    names = _assign_personas(users, rng)
    catalogue = _catalogue(rng)
    gen = _Generator(rng, catalogue)

    end_s = int(end.timestamp())
    start_s = end_s - days * DAY
    epoch0 = datetime(1970, 1, 1, tzinfo=UTC)
    zones = {name: ZoneInfo(name) for name in TIMEZONES}
    tz_names = list(TIMEZONES)
    tz_weights = [TIMEZONES[z][1] for z in tz_names]

    # ---- users and event budgets (largest remainder, exact total) ----------------------------
    people: list[_User] = []
    weights: list[float] = []
    for i, pname in enumerate(names):
        persona = PERSONAS[pname]
        tz = rng.choices(tz_names, tz_weights)[0]
        region, _, local_ccy, local_share = TIMEZONES[tz]
        currency = local_ccy if rng.random() < local_share else "USD"
        favs = rng.sample(CATEGORIES, 4)
        traits = {
            "region": region,
            "age_band": rng.choices(AGE_BANDS, AGE_WEIGHTS)[0],
            "member_level": rng.choices(MEMBER_LEVELS, persona.level_weights)[0],
            "signup_channel": rng.choices(SIGNUP_CHANNELS, SIGNUP_WEIGHTS)[0],
            "timezone": tz,
        }
        people.append(_User(i, _user_id(i), persona, zones[tz], tz, currency, favs, traits))
        weights.append(persona.activity * rng.lognormvariate(0.0, 0.45))
    activity_total = events - users
    scale = activity_total / sum(weights)
    raw = [w * scale for w in weights]
    budgets = [math.floor(r) for r in raw]
    for i in sorted(range(users), key=lambda i: (-(raw[i] - budgets[i]), i))[: activity_total - sum(budgets)]:
        budgets[i] += 1

    # ---- render ------------------------------------------------------------------------------
    rows: list[tuple[int, int, int, str, dict[str, Any]]] = []
    for user, budget in zip(people, budgets, strict=True):
        pname = user.persona.name
        fading = False
        if pname == "new_user":
            lo = end_s - rng.uniform(0.5, 13.5) * DAY
            hi = float(end_s)
        elif pname == "drifting_away":
            lo = start_s + rng.uniform(0.0, 5.0) * DAY
            hi = end_s - rng.uniform(30.0, 60.0) * DAY
            if hi <= lo + DAY:  # very short periods
                hi = lo + (end_s - lo) / 3
            fading = True
        elif pname == "loyal_big_spender":
            lo = start_s + rng.uniform(0.0, 3.0) * DAY
            hi = float(end_s)
        elif pname == "window_shopper":
            lo = start_s + rng.uniform(0.0, 0.3 * days) * DAY
            hi = float(end_s - 8 * HOUR)
        else:
            lo = start_s + rng.uniform(0.0, 0.3 * days) * DAY
            hi = float(end_s)
        lo = max(lo, start_s + 600.0)
        sessions = gen.plan(user, budget)
        starts = sorted(_session_start(rng, user, lo, hi, fading, epoch0) for _ in sessions)
        if pname == "window_shopper" and sessions:
            # The abandoned cart (planned last) sits between 6 days and 8 hours before the end.
            starts[-1] = max(starts[-1], _session_start(rng, user, max(lo, end_s - 6 * DAY), hi, False, epoch0))
        elif pname == "drifting_away" and sessions:
            # Fading activity, but the last visit is close to the stop date.
            starts[-1] = max(starts[-1], _session_start(rng, user, max(lo, hi - 1.5 * DAY), hi, False, epoch0))
        seq = 0
        first = starts[0] if starts else int(lo)
        ident_ts = max(start_s + 1, first - rng.randint(5, 300))
        rows.append((ident_ts, user.index, seq, "identify", {"traits": dict(user.traits)}))
        seq += 1
        orders: list[tuple[int, dict[str, Any]]] = []
        refunded: set[str] = set()
        prev_end = ident_ts
        for session, t0 in zip(sessions, starts, strict=True):
            limit = (end_s if pname != "window_shopper" else int(hi)) - session.duration
            t0 = min(max(t0, prev_end + rng.randint(60, 900)), limit)
            t0 = max(t0, ident_ts + 1)
            for etype, offset, payload in session.events:
                ts = min(t0 + offset, end_s)
                if etype == "order_refunded":
                    candidates = [o for o_ts, o in orders if o_ts < ts and o["order_id"] not in refunded]
                    if not candidates:
                        etype, payload = "page_view", {"page": "/account/orders"}
                    else:
                        order = rng.choice(candidates[-5:])
                        refunded.add(order["order_id"])
                        partial = rng.random() < 0.3
                        amount = order["amount"] if not partial else round(order["amount"] * rng.uniform(0.2, 0.8), 2)
                        payload = {"order_id": order["order_id"], "amount": amount, "currency": order["currency"]}
                elif etype == "order_paid":
                    orders.append((ts, payload))
                rows.append((ts, user.index, seq, etype, payload))
                seq += 1
            prev_end = max(prev_end, t0 + session.duration)

    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    out: list[dict[str, Any]] = []
    iso_cache: dict[int, str] = {}
    for n, (ts, uidx, _, etype, payload) in enumerate(rows, start=1):
        iso = iso_cache.get(ts)
        if iso is None:
            iso = datetime.fromtimestamp(ts, UTC).isoformat()
            iso_cache[ts] = iso
        event: dict[str, Any] = {
            "schema_version": 1,
            "event_id": f"e{n:08d}",
            "type": etype,
            "user_id": people[uidx].uid,
            "ts": iso,
        }
        event.update(payload)
        out.append(event)
    return out


# --------------------------------------------------------------------------------------------
# Malformed messages
# --------------------------------------------------------------------------------------------


def malformed_messages(
    seed: int = 7, end: datetime = DEFAULT_END, future_days: int = 3650
) -> list[tuple[str, bytes, str]]:
    """Raw messages the worker must dead-letter: ``(event_type_hint, raw_bytes, expected_reason)``.

    ``event_type_hint`` is always a valid event type: send the message to
    ``Topics(prefix).for_event_type(hint)``. ``future_timestamp`` messages are ``future_days``
    after ``end`` (default ten years, so they are in the future of any plausible wall clock);
    ``too_old`` ones are 200 days before ``end``.
    """
    rng = random.Random(seed)
    end_s = int(end.timestamp())

    def uid() -> str:
        return f"u{rng.randint(1, 99999):05d}"

    def iso(offset_s: float) -> str:
        return datetime.fromtimestamp(end_s + offset_s, UTC).isoformat()

    recent = -rng.randint(2 * HOUR, 5 * DAY)
    counter = iter(range(1, 1000))

    def eid() -> str:
        return f"bad{seed}-{next(counter):03d}"

    def dump(obj: dict[str, Any]) -> bytes:
        return orjson.dumps(obj)

    def base(etype: str, ts: str | None = None) -> dict[str, Any]:
        return {"schema_version": 1, "event_id": eid(), "type": etype, "user_id": uid(), "ts": ts or iso(recent)}

    out: list[tuple[str, bytes, str]] = []
    # invalid JSON
    truncated = dump({**base("page_view"), "page": "/p/p000001"})[:-9]
    out.append(("page_view", truncated, "invalid_json"))
    out.append(("search", b"this is not json", "invalid_json"))
    out.append(("order_paid", b"{'type': 'order_paid', 'amount': 10}", "invalid_json"))
    out.append(("page_view", b"\xff\xfe\x00garbage", "invalid_json"))
    # schema violations: wrong types, missing required fields, bad ranges, no subject, naive ts
    out.append(
        ("add_to_cart", dump({**base("add_to_cart"), "product_id": "p000001", "quantity": "lots"}), "schema_violation")
    )
    out.append(("order_paid", dump({**base("order_paid"), "order_id": "o-x", "amount": "twelve"}), "schema_violation"))
    out.append(("order_paid", dump({**base("order_paid"), "amount": 12.5}), "schema_violation"))  # no order_id
    out.append(("search", dump(base("search")), "schema_violation"))  # no query
    no_ts = base("page_view")
    del no_ts["ts"]
    out.append(("page_view", dump(no_ts), "schema_violation"))
    no_subject = base("page_view")
    del no_subject["user_id"]
    out.append(("page_view", dump(no_subject), "schema_violation"))
    out.append(("feedback", dump({**base("feedback"), "rating": 9}), "schema_violation"))
    out.append(("feedback", dump(base("feedback")), "schema_violation"))  # no content
    out.append(
        ("identify", dump({**base("identify"), "traits": {"timezone": "Mars/Olympus_Mons"}}), "schema_violation")
    )
    out.append(("order_paid", dump({**base("order_paid"), "order_id": "o-y", "amount": -5.0}), "schema_violation"))
    out.append(("page_view", dump({**base("page_view"), "schema_version": 2}), "schema_violation"))
    no_type = base("page_view")
    del no_type["type"]
    out.append(("page_view", dump(no_type), "schema_violation"))
    naive = datetime.fromtimestamp(end_s + recent, UTC).replace(tzinfo=None).isoformat()
    out.append(("page_view", dump({**base("page_view", naive), "page": "/"}), "schema_violation"))
    out.append(("page_view", b"42", "schema_violation"))  # JSON, but not an object
    out.append(("page_view", b'{"batch": "not a list"}', "schema_violation"))  # a broken batch envelope
    # unknown event type
    out.append(("page_view", dump({**base("coupon_redeemed"), "coupon": "SAVE10"}), "unknown_type"))
    out.append(("page_view", dump(base("PageView")), "unknown_type"))
    # future / too old timestamps (otherwise valid)
    out.append(("page_view", dump({**base("page_view", iso(future_days * DAY)), "page": "/"}), "future_timestamp"))
    out.append(
        (
            "order_paid",
            dump(
                {**base("order_paid", iso(future_days * DAY + rng.randint(0, DAY))), "order_id": "o-f", "amount": 9.5}
            ),
            "future_timestamp",
        )
    )
    out.append(("page_view", dump({**base("page_view", iso(-200 * DAY)), "page": "/"}), "too_old"))
    out.append(("feedback", dump({**base("feedback", iso(-200 * DAY - HOUR)), "rating": 4}), "too_old"))
    # unknown currency
    out.append(
        (
            "order_paid",
            dump({**base("order_paid"), "order_id": "o-xyz", "amount": 20.0, "currency": "XYZ"}),
            "unknown_currency",
        )
    )
    out.append(
        (
            "order_refunded",
            dump({**base("order_refunded"), "order_id": "o-xyz", "amount": 20.0, "currency": "XYZ"}),
            "unknown_currency",
        )
    )
    return out


def write_jsonl(events: Iterable[dict[str, Any]], path: Path | str) -> int:
    """Write one JSON object per line; returns the number of lines written."""
    n = 0
    with Path(path).open("wb") as fh:
        for event in events:
            fh.write(orjson.dumps(event))
            fh.write(b"\n")
            n += 1
    return n


def purchase_history(
    customers: int = 25_000,
    orders: int = 100_000,
    months: int = 18,
    seed: int = 7,
    end: datetime = DEFAULT_END,
) -> list[dict[str, Any]]:
    """A deterministic purchase log of exactly ``orders`` ``order_paid`` events from ``customers``
    customers over ``months`` (30-day) months ending at ``end``, sorted by time: the shape of a
    shop's export replayed as a backfill (``portrait bench --only backfill``).

    Every customer orders at least once; the rest of the orders go to customers in proportion to a
    heavy-tailed propensity (a few loyal customers order often, most once or twice). A customer's
    orders follow their first one at gamma-distributed gaps around their own typical interval;
    amounts are log-normal around the customer's own basket. Every event validates.
    """
    if customers < 1 or orders < customers:
        raise ValueError("need customers >= 1 and orders >= customers (everyone orders once)")
    if end.tzinfo is None:
        raise ValueError("end must be timezone-aware")
    rng = random.Random(seed)
    end_s = int(end.timestamp())
    span = months * 30 * DAY
    start_s = end_s - span
    propensity = [min(rng.paretovariate(2.0), 30.0) for _ in range(customers)]
    counts = [1] * customers
    extra = rng.choices(range(customers), weights=propensity, k=orders - customers)
    for index in extra:
        counts[index] += 1
    rows: list[tuple[int, str, float]] = []
    for index, count in enumerate(counts):
        uid = f"c{index:06d}"
        typical = rng.uniform(10, 90) * DAY
        basket = rng.uniform(15, 150)
        t = start_s + rng.random() * span
        times = [t]
        for _ in range(count - 1):
            t += rng.gammavariate(2.0, typical / 2.0)
            if t >= end_s:  # wrap into the history: the count of orders is exact
                t = start_s + rng.random() * span
            times.append(t)
        for ts in times:
            rows.append((int(ts), uid, round(basket * rng.lognormvariate(0.0, 0.4), 2)))
    rows.sort()
    out: list[dict[str, Any]] = []
    for n, (ts, uid, amount) in enumerate(rows):
        out.append(
            {
                "schema_version": 1,
                "event_id": f"p{n:08d}",
                "type": "order_paid",
                "user_id": uid,
                "ts": datetime.fromtimestamp(ts, UTC).isoformat(),
                "order_id": f"o{n:08d}",
                "amount": amount,
                "currency": "USD",
            }
        )
    return out
