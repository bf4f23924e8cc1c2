"""Test oracle: an independent, offline recomputation of every tag in docs/tags.md.

The engine (``stream/tagging/``) computes tags incrementally from time tiles. This module does
the opposite on purpose: it takes the plain list of wire-format event dicts and, per subject,
filters and counts the obvious (slow) way. It imports nothing from the ``stream`` package so
that a shared bug cannot hide on both sides.

Public API::

    DEFAULTS                                   # parameters (docs/tags.md, stream/tags.yaml)
    subject_id(event) -> str                   # user_id, else "anon:" + anonymous_id
    compute_profiles(events, now, params=None) # {subject: {tag: formatted str}}
    lifecycle_tags(events, now, params=None)   # one subject's lifecycle tags from all its events
    top_category_scores(events, now, subject, params=None) -> {category: float}

Reading notes: every place where docs/tags.md leaves room for interpretation is marked with a
comment starting with ``# SPEC:`` giving the (most literal) reading taken here.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

DAY = 86400
HOUR = 3600

DEFAULTS: dict[str, Any] = {
    "base_currency": "USD",
    "currency_rates": {"USD": 1.0, "EUR": 1.08, "GBP": 1.27, "CNY": 0.14, "JPY": 0.0067},
    "cart_abandon_after": 6 * HOUR,
    "cart_abandon_expiry": 7 * DAY,
    "half_life": 14 * DAY,
    "category_weights": {"page_view": 1, "search": 1, "add_to_cart": 3, "order_paid": 5},
    "max_top_categories": 3,
    # Longest window in days: events with day(ts) < day(now) - (max_window_days - 1) are too old.
    "max_window_days": 90,
    # value_tier lower bounds on the 90-day order value, in cents
    "value_tier_cents": {"vip": 100000, "high": 30000, "medium": 5000},
    # lifecycle_stage thresholds (days; lapsing_overdue is a ratio)
    "lifecycle": {"new_days": 30, "lapsing_overdue": 2.0, "lapsing_days": 45, "lapsed_days": 90},
}

TRAIT_TAGS = ("region", "age_band", "member_level", "signup_channel")

# (segment, allowed R scores, allowed F scores) in match order.
RFM_SEGMENTS: tuple[tuple[str, frozenset[int], frozenset[int]], ...] = (
    ("Champions", frozenset({5}), frozenset({4, 5})),
    ("Loyal", frozenset({3, 4}), frozenset({4, 5})),
    ("Potential Loyalists", frozenset({4, 5}), frozenset({2, 3})),
    ("New Customers", frozenset({5}), frozenset({1})),
    ("Promising", frozenset({4}), frozenset({1})),
    ("Need Attention", frozenset({3}), frozenset({3})),
    ("About To Sleep", frozenset({3}), frozenset({1, 2})),
    ("Can't Lose", frozenset({1, 2}), frozenset({5})),
    ("At Risk", frozenset({1, 2}), frozenset({3, 4})),
    ("Hibernating", frozenset({1, 2}), frozenset({1, 2})),
)


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------


def _params(params: dict[str, Any] | None) -> dict[str, Any]:
    merged = dict(DEFAULTS)
    if params:
        merged.update(params)
    return merged


def subject_id(event: dict[str, Any]) -> str:
    """The profile an event updates: the user id when present, else ``anon:<anonymous_id>``."""
    user = event.get("user_id")
    if user is not None:
        return str(user)
    return f"anon:{event['anonymous_id']}"


def epoch(ts: Any) -> float:
    """Epoch seconds of a wire ``ts`` (ISO-8601 with offset; datetimes and numbers accepted too)."""
    if isinstance(ts, (int, float)):
        return float(ts)
    dt = ts if isinstance(ts, datetime) else datetime.fromisoformat(str(ts))
    if dt.tzinfo is None:
        raise ValueError(f"naive timestamp {ts!r}: events must carry an offset")
    return dt.timestamp()


def day(t: float) -> int:
    return math.floor(t / DAY)


def in_window(t: float, now: float, days: int) -> bool:
    # SPEC: "a window of W days contains the days d with d >= day(now) - W + 1" has no upper
    # bound, so an event on a day after day(now) (possible in wall-clock mode within
    # max_future_skew) is counted in every W-day window. activity_trend alone uses the closed
    # interval [day(now)-6, day(now)] and so excludes it (see below).
    return day(t) >= day(now) - days + 1


def fmt_int(n: int) -> str:
    return str(n)


def fmt_bool(b: bool) -> str:
    return "true" if b else "false"


def fmt_money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def fmt_time(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def cents_of(event: dict[str, Any], rates: dict[str, float]) -> int:
    currency = event.get("currency") or "USD"
    if currency not in rates:
        raise ValueError(f"unknown currency {currency!r} (the caller should have dead-lettered it)")
    return round(float(event["amount"]) * rates[currency] * 100)


def is_activity(event: dict[str, Any]) -> bool:
    return bool(event["type"] != "identify")


def local_hour(t: float, tz: str) -> int:
    """Hour, in ``tz``, of the start of the UTC hour containing ``t``."""
    hour_start = math.floor(t / HOUR) * HOUR
    return datetime.fromtimestamp(hour_start, ZoneInfo(tz)).hour


def daypart(hour: int) -> str:
    if hour >= 22 or hour < 6:
        return "night"
    if hour < 12:
        return "morning"
    if hour < 18:
        return "afternoon"
    return "evening"


def _latest(candidates: Iterable[tuple[float, str, Any]]) -> Any | None:
    """Value of the candidate with the largest (ts, event_id); None when there is none."""
    best: tuple[float, str, Any] | None = None
    for cand in candidates:
        if best is None or (cand[0], cand[1]) > (best[0], best[1]):
            best = cand
    return None if best is None else best[2]


# ---------------------------------------------------------------------------------------------
# event selection
# ---------------------------------------------------------------------------------------------


def retained_events(
    events: Iterable[dict[str, Any]], now: float, params: dict[str, Any] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Per subject, the events that count: too-old dropped, then duplicates (by event_id) dropped.

    Each returned event dict is a shallow copy with an extra ``_t`` (epoch seconds) key.
    """
    # SPEC: too_old is judged against the `now` given to the oracle (the final now), not the
    # engine's now at arrival time. An event that was accepted on arrival and has since aged
    # past day(now)-89 is ignored here entirely, although the engine may still remember it in
    # first_seen / L1 traits. Callers comparing with the engine should only use events that are
    # within 90 days of the final now.
    # SPEC: the dead-letter filter runs before duplicate removal, so a dead-lettered first copy
    # does not hide a later valid copy with the same event_id. Duplicates are removed for every
    # event type (identify included), keeping the first in list order, over the whole list (the
    # engine's `dedupe_window_events: 32` bounded memory is not modelled).
    oldest_day = day(now) - (_params(params)["max_window_days"] - 1)
    seen: set[tuple[str, str]] = set()
    out: dict[str, list[dict[str, Any]]] = {}
    for raw in events:
        t = epoch(raw["ts"])
        if day(t) < oldest_day:
            continue
        subject = subject_id(raw)
        key = (subject, str(raw["event_id"]))
        if key in seen:
            continue
        seen.add(key)
        ev = dict(raw)
        ev["_t"] = t
        out.setdefault(subject, []).append(ev)
    return out


# ---------------------------------------------------------------------------------------------
# tags
# ---------------------------------------------------------------------------------------------


def _trait(evs: list[dict[str, Any]], name: str) -> str | None:
    # SPEC: ties on ts are broken by the larger event_id compared as plain strings
    # (lexicographically, so "e-9" > "e-10").
    return _latest(
        (ev["_t"], str(ev["event_id"]), (ev.get("traits") or {}).get(name))
        for ev in evs
        if ev["type"] == "identify" and (ev.get("traits") or {}).get(name) is not None
    )


def _category_scores(evs: list[dict[str, Any]], now: float, p: dict[str, Any]) -> dict[str, float]:
    # SPEC: the interest sum has no window in the spec, so every retained event counts (in
    # practice the last 90 days, as older ones are dead-lettered). Categories are not capped
    # (the engine's `max_categories: 20` is not modelled). remove_from_cart, checkout_started,
    # feedback and refunds carry no weight. An add_to_cart without a category adds nothing.
    # The weight of an order_paid is 5 per item line regardless of quantity. Terms are summed
    # with math.fsum so that mathematically equal sums of equal terms compare equal.
    weights: dict[str, float] = p["category_weights"]
    half_life = p["half_life"]
    terms: dict[str, list[float]] = {}

    def add(cat: Any, w: float, t: float) -> None:
        if cat is None or not w:
            return
        terms.setdefault(str(cat), []).append(w * 2 ** (-(now - t) / half_life))

    for ev in evs:
        typ = ev["type"]
        if typ in ("page_view", "search", "add_to_cart"):
            add(ev.get("category"), weights.get(typ, 0), ev["_t"])
        elif typ == "order_paid":
            for item in ev.get("items") or []:
                add(item.get("category"), weights.get("order_paid", 0), ev["_t"])
    return {cat: math.fsum(ts) for cat, ts in terms.items()}


def _subject_tags(evs: list[dict[str, Any]], now: float, p: dict[str, Any]) -> dict[str, Any]:
    """All tags of one subject except the population-relative RFM scores/segment.

    Returns raw (unformatted) values plus the RFM metrics under private ``_`` keys.
    """
    tags: dict[str, str] = {}
    today = day(now)
    rates: dict[str, float] = p["currency_rates"]

    # ---- L1 ----------------------------------------------------------------------------
    for name in TRAIT_TAGS:
        value = _trait(evs, name)
        if value is not None:
            tags[name] = str(value)
    # SPEC: the "user's current timezone" used by dayparts is the `timezone` tag value (latest
    # by ts, tie larger event_id), not the last identify in arrival order.
    tz = _trait(evs, "timezone") or "UTC"
    tags["timezone"] = tz
    all_t = [ev["_t"] for ev in evs]
    tags["first_seen"] = fmt_time(min(all_t))
    tags["last_seen"] = fmt_time(max(all_t))

    # ---- L2 ----------------------------------------------------------------------------
    act = [ev for ev in evs if is_activity(ev)]
    if act:
        # SPEC: with an activity event later than now (future skew), now - last_activity < 0
        # and floor gives -1; taken literally.
        tags["recency_days"] = fmt_int(math.floor((now - max(ev["_t"] for ev in act)) / DAY))
    act7 = [ev for ev in act if in_window(ev["_t"], now, 7)]
    act30 = [ev for ev in act if in_window(ev["_t"], now, 30)]
    tags["events_7d"] = fmt_int(len(act7))
    tags["events_30d"] = fmt_int(len(act30))
    tags["active_days_7d"] = fmt_int(len({day(ev["_t"]) for ev in act7}))
    days30 = len({day(ev["_t"]) for ev in act30})
    tags["active_days_30d"] = fmt_int(days30)
    if days30 >= 12:
        tags["activity_level"] = "high"
    elif days30 >= 4:
        tags["activity_level"] = "medium"
    elif days30 >= 1:
        tags["activity_level"] = "low"
    else:
        tags["activity_level"] = "dormant"

    e7 = sum(1 for ev in act if today - 6 <= day(ev["_t"]) <= today)
    e28 = sum(1 for ev in act if today - 34 <= day(ev["_t"]) <= today - 7)
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

    # SPEC: night_owl's "at night" uses the same local-hour rule (start of the UTC hour, in the
    # current timezone) and the same night = [22, 6) as preferred_daypart.
    parts = {"night": 0, "morning": 0, "afternoon": 0, "evening": 0}
    for ev in act30:
        parts[daypart(local_hour(ev["_t"], tz))] += 1
    if act30:
        best = max(parts.values())
        tags["preferred_daypart"] = next(name for name, c in parts.items() if c == best)
    n, k = len(act30), parts["night"]
    tags["night_owl"] = fmt_bool(n >= 5 and 5 * k >= 2 * n)

    scores = _category_scores(evs, now, p)
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[: p["max_top_categories"]]
    if ranked:
        tags["top_categories"] = ",".join(cat for cat, _ in ranked)

    types7 = [ev["type"] for ev in act7]
    if "order_paid" in types7:
        stage = "paid"
    elif "checkout_started" in types7:
        stage = "checkout"
    elif "add_to_cart" in types7:
        stage = "carted"
    elif "page_view" in types7 or "search" in types7:
        stage = "browsed"
    else:
        stage = "none"
    tags["funnel_stage_7d"] = stage

    carts = [ev["_t"] for ev in evs if ev["type"] == "add_to_cart"]
    orders = [ev for ev in evs if ev["type"] == "order_paid"]
    last_cart = max(carts) if carts else None
    last_order = max(ev["_t"] for ev in orders) if orders else None
    abandoned = (
        last_cart is not None
        and last_cart > (last_order if last_order is not None else -math.inf)
        and now - last_cart >= p["cart_abandon_after"]
        and now - last_cart < p["cart_abandon_expiry"]
    )
    tags["cart_abandoned"] = fmt_bool(abandoned)

    # ---- L3 ----------------------------------------------------------------------------
    orders30 = [ev for ev in orders if in_window(ev["_t"], now, 30)]
    orders90 = [ev for ev in orders if in_window(ev["_t"], now, 90)]
    freq90 = len(orders90)
    cents30 = sum(cents_of(ev, rates) for ev in orders30)
    cents90 = sum(cents_of(ev, rates) for ev in orders90)
    tags["frequency_30d"] = fmt_int(len(orders30))
    tags["frequency_90d"] = fmt_int(freq90)
    tags["monetary_30d"] = fmt_money(cents30)
    tags["monetary_90d"] = fmt_money(cents90)
    if freq90:
        tags["avg_order_value_90d"] = fmt_money(round(cents90 / freq90))
        refunds90 = sum(1 for ev in evs if ev["type"] == "order_refunded" and in_window(ev["_t"], now, 90))
        # SPEC: refunds are counted, not matched to orders, so the rate can exceed 1.
        tags["refund_rate_90d"] = f"{refunds90 / freq90:.4f}"
    if last_order is not None:
        tags["days_since_last_order"] = fmt_int(math.floor((now - last_order) / DAY))
    tiers = p["value_tier_cents"]
    if cents90 >= tiers["vip"]:
        tier = "vip"
    elif cents90 >= tiers["high"]:
        tier = "high"
    elif cents90 >= tiers["medium"]:
        tier = "medium"
    elif cents90 > 0:
        tier = "low"
    else:
        tier = "none"
    tags["value_tier"] = tier

    fb90 = [ev for ev in evs if ev["type"] == "feedback" and in_window(ev["_t"], now, 90)]
    ratings = [int(ev["rating"]) for ev in fb90 if ev.get("rating") is not None]
    rating_sum, rating_count = sum(ratings), len(ratings)
    if rating_count:
        tags["avg_rating_90d"] = f"{rating_sum / rating_count:.2f}"
    complaints = sum(1 for ev in fb90 if ev.get("complaint") is True)
    tags["complaints_90d"] = fmt_int(complaints)
    latest_nps = _latest(
        (ev["_t"], str(ev["event_id"]), ev) for ev in evs if ev["type"] == "feedback" and ev.get("nps") is not None
    )
    nps_class: str | None = None
    if latest_nps is not None and in_window(latest_nps["_t"], now, 90):
        score = int(latest_nps["nps"])
        nps_class = "promoter" if score >= 9 else "passive" if score >= 7 else "detractor"
        tags["nps_class"] = nps_class
    if complaints > 0 or nps_class == "detractor" or (rating_count and rating_sum <= 2.5 * rating_count):
        tags["satisfaction"] = "unhappy"
    elif nps_class == "promoter" or (rating_count and rating_sum >= 4 * rating_count):
        tags["satisfaction"] = "happy"
    elif fb90:
        # SPEC: "any feedback in the 90-day window" includes text-only feedback.
        tags["satisfaction"] = "neutral"

    tags.update(lifecycle_tags(evs, now, p))
    out: dict[str, Any] = dict(tags)
    out["_freq90"] = freq90
    out["_cents90"] = cents90
    out["_orders_life"] = len(orders)
    out["_cents_life"] = sum(cents_of(ev, rates) for ev in orders)
    out["_last_order"] = last_order
    return out


def lifecycle_tags(evs: list[dict[str, Any]], now: float, params: dict[str, Any] | None = None) -> dict[str, str]:
    """The lifecycle tags of one subject from every one of its (deduplicated) events, however old.

    ``evs`` are wire-format dicts (``_t`` is used when present, else ``ts``).
    """
    p = _params(params)
    times = sorted(ev["_t"] if "_t" in ev else epoch(ev["ts"]) for ev in evs if ev["type"] == "order_paid")
    if not times:
        return {}
    cents = sum(cents_of(ev, p["currency_rates"]) for ev in evs if ev["type"] == "order_paid")
    first, last = times[0], times[-1]
    since = math.floor((now - last) / DAY)
    # SPEC: tenure counts whole days since the last order plus the days from the first order day
    # to the last order day (so it ticks with days_since_last_order)
    tenure = since + day(last) - day(first)
    order_days = sorted({day(t) for t in times})
    gaps = [b - a for a, b in itertools.pairwise(order_days)]
    tags = {"lifetime_orders": fmt_int(len(times)), "lifetime_value": fmt_money(cents), "tenure_days": fmt_int(tenure)}
    if gaps:
        total = sum(gaps)
        tags["mean_interpurchase_days"] = f"{total / len(gaps):.2f}"
        tags["expected_next_order"] = fmt_time(last + total * DAY / len(gaps))
        tags["overdue_ratio"] = f"{since * len(gaps) / total:.4f}"
        if len(gaps) >= 2:
            # SPEC: population standard deviation over the mean, as sqrt(n*sum(g^2) - sum(g)^2) / sum(g)
            tags["cv_interpurchase"] = f"{math.sqrt(len(gaps) * sum(g * g for g in gaps) - total * total) / total:.4f}"
    rules = p["lifecycle"]
    mean = sum(gaps) / len(gaps) if gaps else None
    if since >= rules["lapsed_days"]:
        stage = "lapsed"
    elif gaps and gaps[-1] >= rules["lapsed_days"]:
        stage = "won back"
    elif tenure < rules["new_days"]:
        stage = "new"
    elif (mean is not None and since > rules["lapsing_overdue"] * mean) or (
        mean is None and since >= rules["lapsing_days"]
    ):
        stage = "lapsing"
    else:
        stage = "active"
    tags["lifecycle_stage"] = stage
    return tags


def rfm_thresholds(values: list[float]) -> list[float]:
    """t_k = v[ceil(k*n/5) - 1] for k = 1..4 over the ascending values."""
    v = sorted(values)
    n = len(v)
    return [v[-(-k * n // 5) - 1] for k in range(1, 5)]


def rfm_score(value: float, thresholds: list[float]) -> int:
    return 1 + sum(1 for t in thresholds if value > t)


def rfm_segment(r: int, f: int) -> str:
    for name, rs, fs in RFM_SEGMENTS:
        if r in rs and f in fs:
            return name
    raise AssertionError(f"no RFM segment for R{r} F{f}")


def compute_profiles(
    events: list[dict[str, Any]], now: float, params: dict[str, Any] | None = None
) -> dict[str, dict[str, str]]:
    """Every subject's profile hash (tag -> formatted string; absent tags omitted) at ``now``."""
    p = _params(params)
    by_subject = retained_events(events, now, p)
    raw = {subject: _subject_tags(evs, now, p) for subject, evs in by_subject.items()}

    # SPEC: the RFM population is every subject in the event list (anonymous subjects included)
    # with at least one order (lifetime orders >= 1), scored against thresholds computed at this
    # same `now` (i.e. as after `portrait rfm refresh --reevaluate`); F and M are lifetime orders
    # and lifetime cents. `rfm_version` is not a tag and is not produced here.
    population = [s for s, t in raw.items() if t["_orders_life"] >= 1]
    thr_r = rfm_thresholds([raw[s]["_last_order"] for s in population]) if population else []
    thr_f = rfm_thresholds([raw[s]["_orders_life"] for s in population]) if population else []
    thr_m = rfm_thresholds([raw[s]["_cents_life"] for s in population]) if population else []

    profiles: dict[str, dict[str, str]] = {}
    for subject, t in raw.items():
        prof = {k: v for k, v in t.items() if not k.startswith("_")}
        if t["_orders_life"] >= 1:
            r = rfm_score(t["_last_order"], thr_r)
            f = rfm_score(t["_orders_life"], thr_f)
            m = rfm_score(t["_cents_life"], thr_m)
            prof["r_score"] = fmt_int(r)
            prof["f_score"] = fmt_int(f)
            prof["m_score"] = fmt_int(m)
            prof["rfm_segment"] = rfm_segment(r, f)
        else:
            prof["rfm_segment"] = "Prospects"
        profiles[subject] = prof
    return profiles


def top_category_scores(
    events: list[dict[str, Any]], now: float, subject: str, params: dict[str, Any] | None = None
) -> dict[str, float]:
    """Decayed interest per category for one subject (to tell float near-ties from real bugs)."""
    p = _params(params)
    evs = retained_events(events, now, p).get(subject, [])
    return _category_scores(evs, now, p)


def is_near_tie(a: float, b: float, rel: float = 1e-9) -> bool:
    return math.isclose(a, b, rel_tol=rel)
