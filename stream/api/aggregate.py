"""The insights aggregate: one pass over every published profile (and the activity hours of each
user's state) folded into the counts the dashboard shows. Pure: no I/O.

Definitions (docs/api.md, "Insights"), each over the profiles as published at the pass:

* active: ``events_7d > 0`` / ``events_30d > 0``;
* RFM grid: users by (``r_score``, ``f_score``), with the mean ``monetary_90d`` of each cell
  (summed in cents, so the mean does not depend on the order users are read in);
* funnel: users whose deepest stage in 7 days (``funnel_stage_7d``) is a step or a later one;
  cart abandonment rate = users with ``cart_abandoned = true`` / users who carted or went further
  in 7 days or have an abandoned cart;
* activity: activity events of the last ``ACTIVITY_DAYS`` days by local hour of week, in each
  user's current ``timezone`` (the hour of the start of the event's UTC hour, as the dayparts);
* categories: users with a category among ``top_categories``, and users whose first it is;
* satisfaction: mean of ``avg_rating_90d`` over users with one, NPS classes, complaints;
* churn: ``churn_risk`` in 10 bins, and the highest-risk users among the valuable value tiers.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

ACTIVITY_DAYS = 28
DAY = 86400
FUNNEL_STAGES = ("browsed", "carted", "checkout", "paid")
VALUABLE_TIERS = ("vip", "high")
AT_RISK_LIMIT = 50
HISTOGRAM_BINS = 10


def parse_int(value: str | None) -> int | None:
    """A stored profile value as an int; None when absent or not a whole number."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def parse_float(value: str | None) -> float | None:
    """A stored profile value as a finite float; None when absent, not a number, NaN or infinite."""
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def risk_bin(risk: float) -> int:
    """The histogram bin of a churn risk: [k/10, (k+1)/10), the last bin closed at 1."""
    return min(HISTOGRAM_BINS - 1, max(0, math.floor(risk * HISTOGRAM_BINS)))


@dataclass
class Aggregate:
    """The folded counts (see the module doc); ``add`` one user at a time, then read the fields."""

    now: float
    users: int = 0
    active_7d: int = 0
    active_30d: int = 0
    values: dict[str, Counter[str]] = field(default_factory=dict)  # tag -> value -> users (every str tag)
    rfm_users: Counter[tuple[int, int]] = field(default_factory=Counter)
    rfm_cents: Counter[tuple[int, int]] = field(default_factory=Counter)  # exact sums: money in cents
    cart_abandoned: int = 0
    carted: int = 0
    activity: list[int] = field(default_factory=lambda: [0] * (7 * 24))
    categories: Counter[str] = field(default_factory=Counter)
    first_categories: Counter[str] = field(default_factory=Counter)
    rated_users: int = 0
    rating_sum: float = 0.0
    users_with_complaints: int = 0
    complaints: int = 0
    scored_users: int = 0
    histogram: list[int] = field(default_factory=lambda: [0] * HISTOGRAM_BINS)
    _at_risk: list[tuple[float, str, dict[str, str]]] = field(default_factory=list)
    _hour_index: dict[tuple[str, int], int] = field(default_factory=dict)

    COUNTED = (
        "rfm_segment",
        "value_tier",
        "churn_band",
        "funnel_stage_7d",
        "nps_class",
        "satisfaction",
        "behaviour_segment",
        "activity_level",
    )

    # every profile field ``add`` reads (the pass reads only these); ``_evaluated_at`` is always
    # written, so a profile whose tags are all absent still counts as a user
    FIELDS = (
        *COUNTED,
        "_evaluated_at",
        "events_7d",
        "events_30d",
        "r_score",
        "f_score",
        "monetary_90d",
        "cart_abandoned",
        "top_categories",
        "avg_rating_90d",
        "complaints_90d",
        "churn_risk",
        "timezone",
        "days_since_last_order",
    )

    def add(self, uid: str, profile: Mapping[str, str], hours: Mapping[int, Mapping[int, int]] | None) -> None:
        self.users += 1
        if (parse_int(profile.get("events_7d")) or 0) > 0:
            self.active_7d += 1
        if (parse_int(profile.get("events_30d")) or 0) > 0:
            self.active_30d += 1
        for tag in self.COUNTED:
            value = profile.get(tag)
            if value is not None:
                self.values.setdefault(tag, Counter())[value] += 1

        r, f = parse_int(profile.get("r_score")), parse_int(profile.get("f_score"))
        if r is not None and f is not None:
            self.rfm_users[(r, f)] += 1
            self.rfm_cents[(r, f)] += round((parse_float(profile.get("monetary_90d")) or 0.0) * 100)

        abandoned = profile.get("cart_abandoned") == "true"
        self.cart_abandoned += abandoned
        if abandoned or profile.get("funnel_stage_7d") in FUNNEL_STAGES[1:]:
            self.carted += 1

        top = [c for c in (profile.get("top_categories") or "").split(",") if c]
        self.categories.update(set(top))
        if top:
            self.first_categories[top[0]] += 1

        rating = parse_float(profile.get("avg_rating_90d"))
        if rating is not None:
            self.rated_users += 1
            self.rating_sum += rating
        complaints = parse_int(profile.get("complaints_90d")) or 0
        self.complaints += complaints
        self.users_with_complaints += complaints > 0

        risk = parse_float(profile.get("churn_risk"))
        if risk is not None:
            self.scored_users += 1
            self.histogram[risk_bin(risk)] += 1
            if profile.get("value_tier") in VALUABLE_TIERS:
                item = (risk, uid, dict(profile))
                if len(self._at_risk) < AT_RISK_LIMIT:
                    heapq.heappush(self._at_risk, item)
                elif item > self._at_risk[0]:
                    heapq.heapreplace(self._at_risk, item)

        if hours:
            self._add_hours(profile.get("timezone") or "UTC", hours)

    def _add_hours(self, zone: str, hours: Mapping[int, Mapping[int, int]]) -> None:
        today = math.floor(self.now / DAY)
        for day, counts in hours.items():
            if today - day >= ACTIVITY_DAYS or day > today:
                continue
            for hour, n in counts.items():
                self.activity[self._hour_of_week(zone, day * 24 + hour)] += n

    def _hour_of_week(self, zone: str, utc_hour: int) -> int:
        key = (zone, utc_hour)
        index = self._hour_index.get(key)
        if index is None:
            try:
                tz = ZoneInfo(zone)
            except (ValueError, KeyError, OSError):
                tz = ZoneInfo("UTC")
            local = datetime.fromtimestamp(utc_hour * 3600, tz)
            index = self._hour_index[key] = local.weekday() * 24 + local.hour
        return index

    def without_caches(self) -> Aggregate:
        """The same counts without the time-zone lookup cache (what a pass hands back)."""
        self._hour_index = {}
        return self

    # -- reading ---------------------------------------------------------------------------
    def counts(self, tag: str) -> Counter[str]:
        return self.values.get(tag, Counter())

    def funnel(self) -> list[tuple[str, int]]:
        """(stage, users whose deepest stage is this one or later), in funnel order."""
        stages = self.counts("funnel_stage_7d")
        return [(stage, sum(stages[s] for s in FUNNEL_STAGES[i:])) for i, stage in enumerate(FUNNEL_STAGES)]

    def at_risk(self) -> list[tuple[float, str, dict[str, str]]]:
        """The highest-risk valuable users, highest first (ties: larger user id first)."""
        return sorted(self._at_risk, reverse=True)

    def activity_grid(self) -> list[list[int]]:
        return [self.activity[d * 24 : (d + 1) * 24] for d in range(7)]
