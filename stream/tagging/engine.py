"""Incremental tag engine: apply events to a ``UserState`` and evaluate tags at a time ``now``.

Pure functions only (no I/O). The semantics are specified in docs/tags.md; tests compare this
engine with an independent offline implementation of that document.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from functools import lru_cache
from zoneinfo import ZoneInfo

from stream.contracts.events import (
    AddToCart,
    CheckoutStarted,
    Event,
    Feedback,
    Identify,
    OrderPaid,
    OrderRefunded,
    PageView,
    Search,
)
from stream.tagging.definitions import TagParams
from stream.tagging.lifecycle import DEFAULT_RETENTION_DAYS, intervals, stage, tenure_days
from stream.tagging.state import (
    CART_ADDS,
    CHECKOUTS,
    COMPLAINTS,
    DAY,
    EVENTS,
    FEEDBACKS,
    ORDER_CENTS,
    ORDERS,
    PAGE_VIEWS,
    RATING_COUNT,
    RATING_SUM,
    REFUND_CENTS,
    REFUNDS,
    SEARCHES,
    TILE_WIDTH,
    NpsAnswer,
    Trait,
    UserState,
)

LONGEST_WINDOW_DAYS = 90
# Interest scores are stored as sum(w * 2**((ts - ANCHOR) / half_life)): adding is commutative and
# every category decays by the same factor, so the ranking never needs a time-driven update.
INTEREST_ANCHOR = 1_704_067_200.0  # 2024-01-01T00:00:00Z
TRAIT_NAMES = ("region", "age_band", "member_level", "signup_channel", "timezone")
DAYPARTS = ("night", "morning", "afternoon", "evening")
RFM_SEGMENTS: tuple[tuple[str, range, range], ...] = (
    ("Champions", range(5, 6), range(4, 6)),
    ("Loyal", range(3, 5), range(4, 6)),
    ("Potential Loyalists", range(4, 6), range(2, 4)),
    ("New Customers", range(5, 6), range(1, 2)),
    ("Promising", range(4, 5), range(1, 2)),
    ("Need Attention", range(3, 4), range(3, 4)),
    ("About To Sleep", range(3, 4), range(1, 3)),
    ("Can't Lose", range(1, 3), range(5, 6)),
    ("At Risk", range(1, 3), range(3, 5)),
    ("Hibernating", range(1, 3), range(1, 3)),
)


class Applied(Enum):
    APPLIED = "applied"
    REDELIVERED = "redelivered"  # offset at or below the user's applied offset
    DUPLICATE = "duplicate"  # same event id seen recently (producer retry)


class UnknownCurrency(ValueError):
    pass


@dataclass(frozen=True)
class RfmThresholds:
    """Population quintile thresholds (4 per metric) published in Redis; empty = no buyers."""

    version: int = 0
    r: tuple[float, ...] = ()
    f: tuple[float, ...] = ()
    m: tuple[float, ...] = ()


def day_of(ts: float) -> int:
    return math.floor(ts / DAY)


def left_window(ts: float, now: float) -> bool:
    """Whether the day of ``ts`` has left the longest window at ``now``: its tile is pruned then
    (``prune``), so an event on that day can never count again."""
    return day_of(ts) < day_of(now) - LONGEST_WINDOW_DAYS + 1


def to_cents(amount: float, currency: str, params: TagParams) -> int:
    rate = params.currency_rates.get(currency)
    if rate is None:
        raise UnknownCurrency(f"unknown currency {currency!r}")
    return round(amount * rate * 100)


def check_event(event: Event, params: TagParams) -> None:
    """Semantic checks beyond the schema. Raises ``UnknownCurrency``."""
    if isinstance(event, OrderPaid | OrderRefunded):
        to_cents(event.amount, event.currency, params)


def redelivered(state: UserState, source: str, offset: int) -> bool:
    """Whether the message at ``offset`` of ``source`` ("topic/partition") was already applied to
    ``state`` (offset not above the last applied one for that source)."""
    last = state.offsets.get(source)
    return last is not None and offset <= last


def apply_event(state: UserState, event: Event, source: str, offset: int, params: TagParams) -> Applied:
    """Fold one event into ``state`` unless it was already applied.

    ``source`` is ``"topic/partition"`` and ``offset`` the message offset: a redelivered message
    (offset not above the last applied one for that source) is skipped, which makes
    replays after a crash or rebalance idempotent.
    """
    if redelivered(state, source, offset):
        return Applied.REDELIVERED
    state.offsets[source] = offset
    if event.event_id in state.recent_ids:
        return Applied.DUPLICATE
    if params.dedupe_window_events:
        state.recent_ids.append(event.event_id)
        del state.recent_ids[: -params.dedupe_window_events]

    ts = event.epoch
    state.first_seen = ts if state.first_seen is None else min(state.first_seen, ts)
    state.last_seen = ts if state.last_seen is None else max(state.last_seen, ts)
    if isinstance(event, Identify):
        _apply_traits(state, event)
        return Applied.APPLIED

    day = day_of(ts)
    tile = state.tile(day)
    state.lifetime.note_activity(day, tile[EVENTS] == 0)
    tile[EVENTS] += 1
    hours = state.hours.setdefault(day, {})
    hour = int((ts - day * DAY) // 3600)
    hours[hour] = hours.get(hour, 0) + 1
    state.last_activity = ts if state.last_activity is None else max(state.last_activity, ts)
    weights = params.category_weights
    if isinstance(event, PageView):
        tile[PAGE_VIEWS] += 1
        _add_interest(state, event.category, weights.get("page_view", 0.0), ts, params)
    elif isinstance(event, Search):
        tile[SEARCHES] += 1
        _add_interest(state, event.category, weights.get("search", 0.0), ts, params)
    elif isinstance(event, AddToCart):
        tile[CART_ADDS] += 1
        state.last_cart_add = ts if state.last_cart_add is None else max(state.last_cart_add, ts)
        _add_interest(state, event.category, weights.get("add_to_cart", 0.0), ts, params)
    elif isinstance(event, CheckoutStarted):
        tile[CHECKOUTS] += 1
    elif isinstance(event, OrderPaid):
        cents = to_cents(event.amount, event.currency, params)
        tile[ORDERS] += 1
        tile[ORDER_CENTS] += cents
        state.lifetime.note_order(ts, day, cents)
        state.last_order = ts if state.last_order is None else max(state.last_order, ts)
        for item in event.items:
            _add_interest(state, item.category, weights.get("order_paid", 0.0), ts, params)
    elif isinstance(event, OrderRefunded):
        tile[REFUNDS] += 1
        tile[REFUND_CENTS] += to_cents(event.amount, event.currency, params)
    elif isinstance(event, Feedback):
        tile[FEEDBACKS] += 1
        if event.rating is not None:
            tile[RATING_SUM] += event.rating
            tile[RATING_COUNT] += 1
        if event.complaint:
            tile[COMPLAINTS] += 1
        if event.nps is not None and _newer(ts, event.event_id, state.nps):
            state.nps = NpsAnswer(event.nps, ts, event.event_id)
    return Applied.APPLIED


def _newer(ts: float, event_id: str, current: Trait | NpsAnswer | None) -> bool:
    return current is None or (ts, event_id) > (current.ts, current.event_id)


def _apply_traits(state: UserState, event: Identify) -> None:
    for name in TRAIT_NAMES:
        value = getattr(event.traits, name)
        if value is not None and _newer(event.epoch, event.event_id, state.traits.get(name)):
            state.traits[name] = Trait(value, event.epoch, event.event_id)


def _add_interest(state: UserState, category: str | None, weight: float, ts: float, params: TagParams) -> None:
    if category is None or weight <= 0:
        return
    score = weight * 2.0 ** ((ts - INTEREST_ANCHOR) / params.interest_half_life)
    state.interest[category] = state.interest.get(category, 0.0) + score
    if len(state.interest) > params.max_categories:
        weakest = min(state.interest, key=lambda c: (state.interest[c], c))
        del state.interest[weakest]


def prune(state: UserState, now: float, retention_days: int = DEFAULT_RETENTION_DAYS) -> None:
    """Drop daily tiles that left the longest window (they can never count again), settling their
    order days into the lifecycle memory, and monthly tiles that left the retention."""
    today = day_of(now)
    oldest = today - LONGEST_WINDOW_DAYS + 1
    for day in sorted(d for d in state.tiles if d < oldest):
        if state.tiles[day][ORDERS]:
            state.lifetime.settle(day)
        del state.tiles[day]
    for day in [d for d in state.hours if d < oldest]:
        del state.hours[day]
    state.lifetime.prune_months(today, retention_days)


def retention_end(state: UserState, retention_days: int = DEFAULT_RETENTION_DAYS) -> float:
    """When the user has been inactive for the lifecycle retention (``retention_days`` whole days
    after the day of their latest event): the profile is then deleted."""
    assert state.last_seen is not None
    return float((day_of(state.last_seen) + retention_days) * DAY)


def is_expired(state: UserState, now: float, retention_days: int = DEFAULT_RETENTION_DAYS) -> bool:
    return state.last_seen is None or now >= retention_end(state, retention_days)


# Tags that change every day without an event (the daily ticks of ``next_due``), by the time
# they count the days from. Every other tag changes only at ``change_points``.
DAY_COUNTERS = {"recency_days": "last_activity", "days_since_last_order": "last_order"}
# Tags of ``evaluate`` that change without an event only at ``change_points`` (window
# edges, cart and NPS timers, retention), each with the kinds of point that can change it: a
# tile's day + N days (N = 7, 30, 35, 90: the windows of ``_sum_windows``; daypart counts the
# hours of the last 30 days), the cart timers, the NPS answer leaving the 90-day window; the
# retention end deletes every tag. A tag that is in neither this nor ``DAY_COUNTERS`` is assumed
# to change at any time (``stream.core.steps`` then evaluates every change point of a user whose
# rules read it). ``tests/unit/tagging/test_change_points.py`` checks the kinds against
# ``evaluate``.
_WEEK, _MONTH, _TREND, _QUARTER = ("7d",), ("30d",), ("7d", "35d"), ("90d",)
CHANGES_AT: dict[str, tuple[str, ...]] = {
    **dict.fromkeys((*TRAIT_NAMES, "first_seen", "last_seen", "top_categories"), ()),
    **dict.fromkeys(("r_score", "f_score", "m_score", "rfm_segment"), ()),  # thresholds and events only
    **dict.fromkeys(("events_7d", "active_days_7d", "funnel_stage_7d"), _WEEK),
    "activity_trend": _TREND,
    **dict.fromkeys(("events_30d", "active_days_30d", "activity_level", "frequency_30d", "monetary_30d"), _MONTH),
    **dict.fromkeys(("preferred_daypart", "night_owl"), _MONTH),
    **dict.fromkeys(("frequency_90d", "monetary_90d", "avg_order_value_90d", "refund_rate_90d"), _QUARTER),
    **dict.fromkeys(("value_tier", "avg_rating_90d", "complaints_90d"), _QUARTER),
    "cart_abandoned": ("cart",),
    "nps_class": ("nps",),
    "satisfaction": ("90d", "nps"),
}
TICK_FREE_TAGS = frozenset(CHANGES_AT)
_WINDOW_DAYS = {"7d": 7, "30d": 30, "35d": 35, "90d": LONGEST_WINDOW_DAYS}
_ALL_KINDS = frozenset({*_WINDOW_DAYS, "cart", "nps"})


@lru_cache(maxsize=256)
def _kinds(tags: frozenset[str]) -> frozenset[str]:
    """The kinds of change point that can move one of ``tags`` (all, for a tag of unknown timing)."""
    if all(t in CHANGES_AT for t in tags):
        return frozenset(k for t in tags for k in CHANGES_AT[t])
    return _ALL_KINDS


def change_points(
    state: UserState,
    params: TagParams,
    retention_days: int = DEFAULT_RETENTION_DAYS,
    tags: Collection[str] | None = None,
) -> list[float]:
    """The times at which a tag other than the day counters (``DAY_COUNTERS``) can change without
    an event: window edges, cart and NPS timers, retention. With ``tags`` only those that can
    change one of them (``CHANGES_AT``; a tag of unknown timing: all). Unordered, possibly
    repeated; they do not depend on the clock, so a caller probing them in turn computes them once."""
    kinds = _ALL_KINDS if tags is None else _kinds(frozenset(tags))
    points = [retention_end(state, retention_days)]
    widths = [w for k, w in _WINDOW_DAYS.items() if k in kinds]
    for day in state.tiles:
        for width in widths:
            points.append(float((day + width) * DAY))
    cart = state.last_cart_add
    if "cart" in kinds and cart is not None and (state.last_order is None or cart > state.last_order):
        points.append(cart + params.cart_abandon_after)
        points.append(cart + params.cart_abandon_expiry)
    if "nps" in kinds and state.nps is not None:
        points.append(float((day_of(state.nps.ts) + LONGEST_WINDOW_DAYS) * DAY))
    return points


def next_due(state: UserState, now: float, params: TagParams, retention_days: int = DEFAULT_RETENTION_DAYS) -> float:
    """The earliest time after ``now`` at which any tag of this user can change without an event:
    a ``change_points`` time or the next daily tick of a day counter."""
    candidates = change_points(state, params, retention_days)
    for last in (state.last_activity, state.last_order):
        if last is not None:
            candidates.append(last + (math.floor((now - last) / DAY) + 1) * DAY)
    return min(c for c in candidates if c > now) if any(c > now for c in candidates) else now + DAY


@dataclass
class _Sums:
    events_7d: int = 0
    events_28d_before: int = 0
    events_30d: int = 0
    active_7d: int = 0
    active_30d: int = 0
    page_views_7d: int = 0
    searches_7d: int = 0
    cart_adds_7d: int = 0
    checkouts_7d: int = 0
    orders_7d: int = 0
    orders_30d: int = 0
    orders_90d: int = 0
    cents_30d: int = 0
    cents_90d: int = 0
    refunds_90d: int = 0
    rating_sum_90d: int = 0
    rating_count_90d: int = 0
    complaints_90d: int = 0
    feedbacks_90d: int = 0


def _sum_windows(state: UserState, today: int) -> _Sums:
    s = _Sums()
    for day, t in state.tiles.items():
        age = today - day
        if age >= LONGEST_WINDOW_DAYS:
            continue
        s.orders_90d += t[ORDERS]
        s.cents_90d += t[ORDER_CENTS]
        s.refunds_90d += t[REFUNDS]
        s.rating_sum_90d += t[RATING_SUM]
        s.rating_count_90d += t[RATING_COUNT]
        s.complaints_90d += t[COMPLAINTS]
        s.feedbacks_90d += t[FEEDBACKS]
        if 7 <= age <= 34:
            s.events_28d_before += t[EVENTS]
        if age < 30:
            s.events_30d += t[EVENTS]
            s.active_30d += t[EVENTS] > 0
            s.orders_30d += t[ORDERS]
            s.cents_30d += t[ORDER_CENTS]
        if age < 7:
            s.events_7d += t[EVENTS]
            s.active_7d += t[EVENTS] > 0
            s.page_views_7d += t[PAGE_VIEWS]
            s.searches_7d += t[SEARCHES]
            s.cart_adds_7d += t[CART_ADDS]
            s.checkouts_7d += t[CHECKOUTS]
            s.orders_7d += t[ORDERS]
    return s


def money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


@lru_cache(maxsize=65536)  # first_seen/last_seen of every evaluation: the same few times again and again
def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


@lru_cache(maxsize=65536)
def _local_hour(zone: str, utc_hour_start: int) -> int:
    return datetime.fromtimestamp(utc_hour_start, ZoneInfo(zone)).hour


def _daypart(hour: int) -> str:
    if hour >= 22 or hour < 6:
        return "night"
    if hour < 12:
        return "morning"
    if hour < 18:
        return "afternoon"
    return "evening"


def score(value: float, thresholds: tuple[float, ...]) -> int:
    """Quintile score 1-5: one plus the number of thresholds the value exceeds."""
    return 1 + sum(1 for t in thresholds if value > t)


def rfm_segment(r: int, f: int) -> str:
    for name, r_range, f_range in RFM_SEGMENTS:
        if r in r_range and f in f_range:
            return name
    raise ValueError(f"no RFM segment for R={r} F={f}")


def rank_metrics(state: UserState, now: float) -> tuple[float, int, int] | None:
    """(last order time, lifetime orders, lifetime cents) for the RFM population, or None if the
    user has no order in the retained history."""
    life = state.lifetime
    if life.orders == 0 or state.last_order is None:
        return None
    return state.last_order, life.orders, life.cents


def evaluate(state: UserState, now: float, thresholds: RfmThresholds, params: TagParams) -> dict[str, str]:
    """All built-in tags of ``state`` at ``now``, formatted as stored in the profile hash."""
    today = day_of(now)
    s = _sum_windows(state, today)
    tags: dict[str, str] = {}

    for name in TRAIT_NAMES:
        if name in state.traits:
            tags[name] = state.traits[name].value
    zone = tags.setdefault("timezone", "UTC")
    if state.first_seen is not None and state.last_seen is not None:
        tags["first_seen"] = iso(state.first_seen)
        tags["last_seen"] = iso(state.last_seen)

    # L2 behaviour
    if state.last_activity is not None:
        tags["recency_days"] = str(math.floor((now - state.last_activity) / DAY))
    tags["events_7d"] = str(s.events_7d)
    tags["events_30d"] = str(s.events_30d)
    tags["active_days_7d"] = str(s.active_7d)
    tags["active_days_30d"] = str(s.active_30d)
    a30 = s.active_30d
    tags["activity_level"] = "high" if a30 >= 12 else "medium" if a30 >= 4 else "low" if a30 >= 1 else "dormant"
    e7, e28 = s.events_7d, s.events_28d_before
    if e7 == 0 and e28 == 0:
        trend = "none"
    elif e28 == 0:
        trend = "new"
    elif 16 * e7 >= 5 * e28:
        trend = "rising"
    elif 16 * e7 <= 3 * e28:
        trend = "falling"
    else:
        trend = "stable"
    tags["activity_trend"] = trend

    parts = dict.fromkeys(DAYPARTS, 0)
    for day, hours in state.hours.items():
        if today - day < 30:
            for hour, count in hours.items():
                parts[_daypart(_local_hour(zone, day * DAY + hour * 3600))] += count
    total = sum(parts.values())
    if total:
        tags["preferred_daypart"] = max(DAYPARTS, key=lambda p: (parts[p], -DAYPARTS.index(p)))
    tags["night_owl"] = "true" if total >= 5 and 5 * parts["night"] >= 2 * total else "false"

    if state.interest:
        ranked = sorted(state.interest.items(), key=lambda kv: (-kv[1], kv[0]))
        tags["top_categories"] = ",".join(c for c, _ in ranked[:3])

    if s.orders_7d:
        stage = "paid"
    elif s.checkouts_7d:
        stage = "checkout"
    elif s.cart_adds_7d:
        stage = "carted"
    elif s.page_views_7d + s.searches_7d:
        stage = "browsed"
    else:
        stage = "none"
    tags["funnel_stage_7d"] = stage
    cart = state.last_cart_add
    abandoned = (
        cart is not None
        and (state.last_order is None or cart > state.last_order)
        and params.cart_abandon_after <= now - cart < params.cart_abandon_expiry
    )
    tags["cart_abandoned"] = "true" if abandoned else "false"

    # L3 value & intent
    tags["frequency_30d"] = str(s.orders_30d)
    tags["frequency_90d"] = str(s.orders_90d)
    tags["monetary_30d"] = money(s.cents_30d)
    tags["monetary_90d"] = money(s.cents_90d)
    if s.orders_90d:
        tags["avg_order_value_90d"] = money(round(s.cents_90d / s.orders_90d))
        tags["refund_rate_90d"] = f"{s.refunds_90d / s.orders_90d:.4f}"
    if state.last_order is not None:
        tags["days_since_last_order"] = str(math.floor((now - state.last_order) / DAY))
    c90, tiers = s.cents_90d, params.value_tiers
    tags["value_tier"] = (
        "vip"
        if c90 >= tiers.vip_cents
        else "high"
        if c90 >= tiers.high_cents
        else "medium"
        if c90 >= tiers.medium_cents
        else "low"
        if c90 > 0
        else "none"
    )
    life = state.lifetime
    if life.orders and state.last_order is not None:
        if thresholds.r and thresholds.f and thresholds.m:
            r = score(state.last_order, thresholds.r)
            f = score(life.orders, thresholds.f)
            tags["r_score"] = str(r)
            tags["f_score"] = str(f)
            tags["m_score"] = str(score(life.cents, thresholds.m))
            tags["rfm_segment"] = rfm_segment(r, f)
        if state.lifetime.since is None:  # else unavailable: history older than ``since`` is missing
            _lifecycle_tags(tags, state, now, params)
    else:
        tags["rfm_segment"] = "Prospects"

    if s.rating_count_90d:
        tags["avg_rating_90d"] = f"{s.rating_sum_90d / s.rating_count_90d:.2f}"
    tags["complaints_90d"] = str(s.complaints_90d)
    nps_class = None
    if state.nps is not None and today - day_of(state.nps.ts) < LONGEST_WINDOW_DAYS:
        nps = state.nps.score
        nps_class = "promoter" if nps >= 9 else "passive" if nps >= 7 else "detractor"
        tags["nps_class"] = nps_class
    rs, rc = s.rating_sum_90d, s.rating_count_90d
    if s.complaints_90d > 0 or nps_class == "detractor" or (rc and rs <= 2.5 * rc):
        tags["satisfaction"] = "unhappy"
    elif nps_class == "promoter" or (rc and rs >= 4 * rc):
        tags["satisfaction"] = "happy"
    elif s.feedbacks_90d:
        tags["satisfaction"] = "neutral"
    return tags


def _lifecycle_tags(tags: dict[str, str], state: UserState, now: float, params: TagParams) -> None:
    """Lifetime tags of a buyer (docs/tags.md, "Lifecycle")."""
    life, last_order = state.lifetime, state.last_order
    assert last_order is not None and life.first_order is not None
    gaps = intervals(life, state.tiles, ORDERS)
    since = math.floor((now - last_order) / DAY)
    tenure = tenure_days(since, last_order, life.first_order)
    tags["lifetime_orders"] = str(life.orders)
    tags["lifetime_value"] = money(life.cents)
    tags["tenure_days"] = str(tenure)
    if gaps.n:
        tags["mean_interpurchase_days"] = f"{gaps.total / gaps.n:.2f}"
        tags["expected_next_order"] = iso(last_order + gaps.total * DAY / gaps.n)
        tags["overdue_ratio"] = f"{since * gaps.n / gaps.total:.4f}"
    cv = gaps.cv
    if cv is not None:
        tags["cv_interpurchase"] = f"{cv:.4f}"
    p = params.lifecycle
    tags["lifecycle_stage"] = stage(
        since,
        tenure,
        gaps,
        new_days=p.new_days,
        lapsing_overdue=p.lapsing_overdue,
        lapsing_days=p.lapsing_days,
        lapsed_days=p.lapsed_days,
    )


__all__ = [
    "TILE_WIDTH",
    "Applied",
    "RfmThresholds",
    "UnknownCurrency",
    "apply_event",
    "change_points",
    "check_event",
    "evaluate",
    "next_due",
    "prune",
    "rank_metrics",
]
