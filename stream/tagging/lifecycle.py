"""Lifecycle memory: what the portrait keeps about a customer beyond the 90 days of daily tiles.

A ``Lifetime`` sits next to the daily tiles in ``UserState``: monthly tiles (UTC calendar months:
active days, orders, order cents) for the lifecycle retention, and lifetime scalars (first order,
order count, revenue, and the gaps between consecutive order days). Everything is pure and
cheap: ``note_event`` is a few integer additions per event, ``settle`` runs when a daily tile
leaves the 90-day window, ``intervals`` walks the (at most 90) daily tiles.

Why the gap statistics are exact and order-independent: an event is only accepted while its day
is inside the daily window (older ones are dead-lettered as ``too_old``), so a day that has left
the window can never gain an order again. Gaps between order days that have all left the window
are *settled* (folded into integer sums ``gaps``, ``gap_sum``, ``gap_sq``); the rest are read from
the daily tiles at evaluation. Integer sums of whole-day gaps give the mean and the coefficient of
variation exactly (no running float mean: ``n·Σg² − (Σg)²`` is an integer), whatever order the
events arrived in. Semantics of the tags: docs/tags.md, "Lifecycle".

Stored form (inside the state document, key ``lt``): ``[1, first_order, orders, cents, gaps,
gap_sum, gap_sq, settled_day, settled_gap, {month: [active_days, orders, cents]}]``; the leading
1 is the layout version. A state written before lifecycle memory has no ``lt``: it is derived from
its daily tiles (all the history such a state holds), see ``derive``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

DAY = 86400
LAYOUT_VERSION = 1
DEFAULT_RETENTION_DAYS = 400  # a little over 13 months
# Monthly tile slots.
M_ACTIVE_DAYS, M_ORDERS, M_CENTS = 0, 1, 2
MONTH_WIDTH = 3

# Profile tags computed from the lifetime scalars: unavailable (absent, listed in the profile's
# ``_unavailable``) while the lifetime is incomplete (``Lifetime.since``).
LIFETIME_TAGS: tuple[str, ...] = (
    "lifetime_orders",
    "lifetime_value",
    "tenure_days",
    "mean_interpurchase_days",
    "cv_interpurchase",
    "expected_next_order",
    "overdue_ratio",
    "lifecycle_stage",
)


@lru_cache(maxsize=4096)
def month_of_day(day: int) -> int:
    """UTC calendar month index (``year * 12 + month - 1``) of a day number."""
    moment = datetime.fromtimestamp(day * DAY, UTC)
    return moment.year * 12 + moment.month - 1


@lru_cache(maxsize=4096)
def last_day_of_month(month: int) -> int:
    """The day number of the last day of a month index."""
    year, m0 = divmod(month + 1, 12)
    return math.floor(datetime(year, m0 + 1, 1, tzinfo=UTC).timestamp() / DAY) - 1


@dataclass(slots=True)
class Lifetime:
    """Long-horizon summary of one user (see the module doc). ``months[m]`` holds the monthly
    tile of month index ``m``; ``settled_day`` is the latest order day that has left the daily
    tiles and ``settled_gap`` the gap (days) that ended on it."""

    months: dict[int, list[int]] = field(default_factory=dict)
    first_order: float | None = None
    orders: int = 0
    cents: int = 0
    gaps: int = 0
    gap_sum: int = 0
    gap_sq: int = 0
    settled_day: int | None = None
    settled_gap: int | None = None
    since: float | None = None  # None: complete; else only events from this time on are in it

    def month(self, day: int) -> list[int]:
        index = month_of_day(day)
        tile = self.months.get(index)
        if tile is None:
            tile = self.months[index] = [0] * MONTH_WIDTH
        return tile

    def note_activity(self, day: int, new_active_day: bool) -> None:
        """An activity event on ``day`` (``new_active_day``: the day's first)."""
        if new_active_day:
            self.month(day)[M_ACTIVE_DAYS] += 1

    def note_order(self, ts: float, day: int, cents: int) -> None:
        tile = self.month(day)
        tile[M_ORDERS] += 1
        tile[M_CENTS] += cents
        self.orders += 1
        self.cents += cents
        self.first_order = ts if self.first_order is None else min(self.first_order, ts)

    def settle(self, order_day: int) -> None:
        """An order day leaves the daily tiles (called in increasing day order)."""
        previous = self.settled_day
        if previous is not None:
            if order_day <= previous:  # only after an identity merge of older histories
                return
            gap = order_day - previous
            self.gaps += 1
            self.gap_sum += gap
            self.gap_sq += gap * gap
            self.settled_gap = gap
        self.settled_day = order_day

    def prune_months(self, today: int, retention_days: int) -> None:
        """Drop monthly tiles whose every day has left the retention."""
        oldest = today - retention_days + 1
        for month in [m for m in self.months if last_day_of_month(m) < oldest]:
            del self.months[month]

    def merge(self, other: Lifetime, overlap_active: Mapping[int, int]) -> None:
        """Fold an anonymous profile's lifetime in (identity merge). ``overlap_active``: day ->
        1 for days both profiles were active on (counted once). Settled gaps of two histories are
        added as they are (exact when at most one of them has settled order days)."""
        for month, tile in other.months.items():
            mine = self.months.setdefault(month, [0] * MONTH_WIDTH)
            for i, n in enumerate(tile):
                mine[i] += n
        for day in overlap_active:
            self.month(day)[M_ACTIVE_DAYS] -= 1
        self.orders += other.orders
        self.cents += other.cents
        if other.first_order is not None:
            first = self.first_order
            self.first_order = other.first_order if first is None else min(first, other.first_order)
        self.gaps += other.gaps
        self.gap_sum += other.gap_sum
        self.gap_sq += other.gap_sq
        if other.settled_day is not None and (self.settled_day is None or other.settled_day > self.settled_day):
            self.settled_day, self.settled_gap = other.settled_day, other.settled_gap
        if other.since is not None:
            self.since = other.since if self.since is None else max(self.since, other.since)

    def to_doc(self) -> list[Any] | None:
        if self.first_order is None and not self.months:
            return None
        return [
            LAYOUT_VERSION,
            self.first_order,
            self.orders,
            self.cents,
            self.gaps,
            self.gap_sum,
            self.gap_sq,
            self.settled_day,
            self.settled_gap,
            {str(m): t for m, t in self.months.items()},
            *([self.since] if self.since is not None else []),
        ]

    @classmethod
    def from_doc(cls, doc: list[Any]) -> Lifetime:
        version, first, orders, cents, gaps, gap_sum, gap_sq, settled_day, settled_gap, months = doc[:10]
        since = doc[10] if len(doc) > 10 else None
        if version != LAYOUT_VERSION:
            raise ValueError(f"unknown lifecycle layout {version!r}")
        return cls(
            months={int(m): list(t) for m, t in months.items()},
            first_order=first,
            orders=orders,
            cents=cents,
            gaps=gaps,
            gap_sum=gap_sum,
            gap_sq=gap_sq,
            settled_day=settled_day,
            settled_gap=settled_gap,
            since=since,
        )


def derive(
    tiles: Mapping[int, list[int]],
    events_slot: int,
    orders_slot: int,
    cents_slot: int,
    last_order: float | None,
    first_seen: float | None,
) -> Lifetime:
    """The lifetime of a state written before lifecycle memory: its daily tiles are all the
    history it holds (the first order is taken at the start of the first order day). A last order
    older than the tiles counts as one order of unknown value, settled on its day. Unless the user
    was first seen on or after the oldest tile's day, older history is missing: ``since`` says
    from when the lifetime is known (the lifetime tags are then unavailable, ``UNAVAILABLE``)."""
    life = Lifetime()
    oldest = min(tiles, default=None)
    if first_seen is not None and (oldest is None or math.floor(first_seen / DAY) < oldest):
        life.since = float((oldest if oldest is not None else math.floor(first_seen / DAY) + 1) * DAY)
    for day in sorted(tiles):
        tile = tiles[day]
        if tile[events_slot]:
            life.month(day)[M_ACTIVE_DAYS] += 1
        if tile[orders_slot]:
            month = life.month(day)
            month[M_ORDERS] += tile[orders_slot]
            month[M_CENTS] += tile[cents_slot]
            life.orders += tile[orders_slot]
            life.cents += tile[cents_slot]
            if life.first_order is None:
                life.first_order = float(day * DAY)
    if life.orders == 0 and last_order is not None:
        life.orders, life.first_order = 1, last_order
        life.settled_day = math.floor(last_order / DAY)
    return life


def tenure_days(days_since_order: int, last_order: float, first_order: float) -> int:
    """Whole days from the first order day to the last, plus the whole days since the last order.

    Within a day of ``floor((now - first_order) / 86400)``, and it ticks when
    ``days_since_last_order`` does, so it costs no time-driven re-evaluation of its own."""
    return days_since_order + math.floor(last_order / DAY) - math.floor(first_order / DAY)


@dataclass(frozen=True, slots=True)
class Intervals:
    """Gaps (whole days) between consecutive distinct order days, over the whole retained history:
    ``n`` gaps summing to ``total`` with squares summing to ``squares``; ``last`` is the latest gap;
    ``order_days`` the number of distinct order days."""

    n: int
    total: int
    squares: int
    last: int | None
    order_days: int

    @property
    def mean(self) -> float | None:
        return self.total / self.n if self.n else None

    @property
    def cv(self) -> float | None:
        """Coefficient of variation (population standard deviation / mean), from 2 gaps on."""
        if self.n < 2:
            return None
        return math.sqrt(self.n * self.squares - self.total * self.total) / self.total


def intervals(life: Lifetime, tiles: Mapping[int, list[int]], orders_slot: int) -> Intervals:
    """Settled gaps plus those between the order days still in the daily tiles."""
    n, total, squares, last = life.gaps, life.gap_sum, life.gap_sq, life.settled_gap
    previous = life.settled_day
    days = 0 if previous is None else life.gaps + 1
    for day in sorted(d for d, t in tiles.items() if t[orders_slot]):
        if previous is not None:
            if day <= previous:
                continue
            gap = day - previous
            n, total, squares, last = n + 1, total + gap, squares + gap * gap, gap
        days += 1
        previous = day
    return Intervals(n, total, squares, last, days)


def stage(
    days_since_order: int,
    tenure_days: int,
    gaps: Intervals,
    *,
    new_days: int,
    lapsing_overdue: float,
    lapsing_days: int,
    lapsed_days: int,
) -> str:
    """Lifecycle stage of a buyer (docs/tags.md, ``lifecycle_stage``): the first that applies of
    lapsed, won back, new, lapsing, active."""
    if days_since_order >= lapsed_days:
        return "lapsed"
    if gaps.last is not None and gaps.last >= lapsed_days:
        return "won back"
    if tenure_days < new_days:
        return "new"
    mean = gaps.mean
    overdue = days_since_order > lapsing_overdue * mean if mean is not None else days_since_order >= lapsing_days
    return "lapsing" if overdue else "active"
