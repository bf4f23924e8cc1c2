"""Hand-computed cases pinning docs/tags.md, checked against the test oracle (tests/oracle.py).

Every expected value is derived by hand from the spec; the arithmetic is in the comments.
Reference time: NOW = 2026-11-20T12:00:00Z, so day(now) is the UTC day 2026-11-20 ("D").
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests import oracle

NOW_DT = datetime(2026, 11, 20, 12, 0, 0, tzinfo=UTC)
NOW = NOW_DT.timestamp()
D0 = datetime(2026, 11, 20, tzinfo=UTC)  # start of day(now)

_ids = itertools.count(1)


def iso(dt: datetime) -> str:
    return dt.isoformat()


def ago(**delta: float) -> str:
    """ISO time `delta` before NOW."""
    return iso(NOW_DT - timedelta(**delta))


def dayk(k: int, hour: int = 0, minute: int = 0, second: int = 0) -> str:
    """ISO time on day D-k at hh:mm:ss UTC."""
    return iso(D0 - timedelta(days=k) + timedelta(hours=hour, minutes=minute, seconds=second))


def ev(typ: str, ts: str, user: str | None = "u1", eid: str | None = None, **fields: Any) -> dict[str, Any]:
    e: dict[str, Any] = {
        "schema_version": 1,
        "event_id": eid if eid is not None else f"e-{next(_ids)}",
        "type": typ,
        "ts": ts,
        **fields,
    }
    if user is not None:
        e["user_id"] = user
    return e


def pv(ts: str, user: str | None = "u1", **kw: Any) -> dict[str, Any]:
    return ev("page_view", ts, user, page="/", **kw)


def order(ts: str, amount: float, user: str = "u1", currency: str = "USD", **kw: Any) -> dict[str, Any]:
    return ev("order_paid", ts, user, order_id=f"o-{next(_ids)}", amount=amount, currency=currency, **kw)


def ident(ts: str, user: str = "u1", eid: str | None = None, **traits: Any) -> dict[str, Any]:
    return ev("identify", ts, user, eid=eid, traits=traits)


def fb(ts: str, user: str = "u1", eid: str | None = None, **kw: Any) -> dict[str, Any]:
    return ev("feedback", ts, user, eid=eid, **kw)


def prof(events: list[dict[str, Any]], user: str = "u1", now: float = NOW) -> dict[str, str]:
    return oracle.compute_profiles(events, now)[user]


# ---- basics --------------------------------------------------------------------------------


def test_subject_id() -> None:
    assert oracle.subject_id({"user_id": "u9", "anonymous_id": "a1"}) == "u9"
    assert oracle.subject_id({"user_id": None, "anonymous_id": "a1"}) == "anon:a1"
    assert oracle.subject_id({"anonymous_id": "a1"}) == "anon:a1"


def test_defaults() -> None:
    d = oracle.DEFAULTS
    assert d["currency_rates"] == {"USD": 1.0, "EUR": 1.08, "GBP": 1.27, "CNY": 0.14, "JPY": 0.0067}
    assert d["cart_abandon_after"] == 6 * 3600
    assert d["cart_abandon_expiry"] == 7 * 86400
    assert d["half_life"] == 14 * 86400


def test_identify_only_user_full_profile() -> None:
    # One identify: no activity. Every always-present tag takes its empty value.
    p = prof([ident(ago(hours=1), region="EU")])
    assert p == {
        "region": "EU",
        "timezone": "UTC",
        "first_seen": "2026-11-20T11:00:00+00:00",
        "last_seen": "2026-11-20T11:00:00+00:00",
        "events_7d": "0",
        "events_30d": "0",
        "active_days_7d": "0",
        "active_days_30d": "0",
        "activity_level": "dormant",
        "activity_trend": "none",
        "night_owl": "false",
        "funnel_stage_7d": "none",
        "cart_abandoned": "false",
        "frequency_30d": "0",
        "frequency_90d": "0",
        "monetary_30d": "0.00",
        "monetary_90d": "0.00",
        "value_tier": "none",
        "complaints_90d": "0",
        "rfm_segment": "Prospects",
    }


def test_first_last_seen_formatting_and_recency() -> None:
    # 10:30:15.900+02:00 = 08:30:15.9Z -> seconds truncated by isoformat(timespec="seconds").
    # identify at 11:00Z counts for last_seen but not for recency (not an activity event).
    events = [
        pv("2026-11-20T10:30:15.900+02:00"),
        pv(dayk(3, 23, 59, 59)),
        ident(ago(hours=1), region="EU"),
    ]
    p = prof(events)
    assert p["first_seen"] == "2026-11-17T23:59:59+00:00"
    assert p["last_seen"] == "2026-11-20T11:00:00+00:00"
    # recency: now - 08:30:15.9 = 3h29m44.1s -> floor(/86400) = 0
    assert p["recency_days"] == "0"


def test_recency_days_floor() -> None:
    # last activity 2 days 23h59m ago -> floor(2.999...) = 2; 3 days ago exactly -> 3
    assert prof([pv(ago(days=2, hours=23, minutes=59))])["recency_days"] == "2"
    assert prof([pv(ago(days=3))])["recency_days"] == "3"


def test_timestamp_offset_uses_utc_day() -> None:
    # 2026-11-20T01:00+05:30 = 2026-11-19T19:30Z -> UTC day D-1, so active days = {D-1, D}
    events = [pv("2026-11-20T01:00:00+05:30"), pv(dayk(0, 0, 0, 0))]
    p = prof(events)
    assert p["active_days_7d"] == "2"
    assert p["events_7d"] == "2"


# ---- windows -------------------------------------------------------------------------------


def test_window_boundaries_30d_and_7d() -> None:
    # 30-day window = days >= D-29. 7-day window = days >= D-6.
    events = [
        order(ago(days=29, hours=23), 10.0),  # 2026-10-21T13:00Z = day D-30 -> out of 30d
        order(dayk(30, 23, 59, 59), 10.0),  # last second of D-30 -> out of 30d
        order(dayk(29), 10.0),  # first second of D-29 (29.5 days ago) -> in 30d
        pv(dayk(7, 23, 59, 59)),  # out of 7d
        pv(dayk(6)),  # in 7d
    ]
    p = prof(events)
    assert p["frequency_30d"] == "1"
    assert p["frequency_90d"] == "3"
    assert p["monetary_30d"] == "10.00"
    assert p["monetary_90d"] == "30.00"
    # activity events: 3 orders + 2 views; 7d: only pv(D-6); 30d: order(D-29), pv(D-7), pv(D-6)
    assert p["events_7d"] == "1"
    assert p["events_30d"] == "3"
    assert p["active_days_7d"] == "1"
    assert p["active_days_30d"] == "3"
    # last order = D-29 00:00 = now - 29d12h -> floor = 29
    assert p["days_since_last_order"] == "29"
    # funnel over 7d: only a page view -> browsed (orders are 29+ days old)
    assert p["funnel_stage_7d"] == "browsed"


def test_90d_boundary_and_too_old_ignored_entirely() -> None:
    # 90-day window = days >= D-89 = 2026-08-23. Events on D-90 are dead-lettered (too_old).
    events = [
        order(dayk(90, 23, 59, 59), 500.0),  # too old: ignored entirely (even first_seen)
        order(dayk(89), 20.0),  # in
        fb(dayk(90, 12), nps=10),  # too old
    ]
    p = prof(events)
    assert p["frequency_90d"] == "1"
    assert p["monetary_90d"] == "20.00"
    assert p["first_seen"] == "2026-08-23T00:00:00+00:00"
    assert "nps_class" not in p
    assert "satisfaction" not in p
    # a subject whose only events are too old has no profile at all
    assert "u2" not in oracle.compute_profiles([pv(dayk(95), user="u2")], NOW)


def test_activity_level_thresholds() -> None:
    def level(n_days: int) -> str:
        # one page view on each of n_days distinct days D, D-1, ... (all within 30d)
        return prof([pv(dayk(k, 10)) for k in range(n_days)] + [ident(ago(hours=1))])["activity_level"]

    assert level(12) == "high"  # >= 12
    assert level(11) == "medium"
    assert level(4) == "medium"  # >= 4
    assert level(3) == "low"
    assert level(1) == "low"  # >= 1
    assert level(0) == "dormant"
    # activity only 40 days ago: 0 active days in 30 -> dormant; recency floor(40.0) = 40
    p = prof([pv(ago(days=40))])
    assert p["activity_level"] == "dormant"
    assert p["recency_days"] == "40"


def test_active_days_counts_days_not_events() -> None:
    events = [pv(dayk(0, 1)), pv(dayk(0, 2)), ev("search", dayk(0, 3), query="x"), pv(dayk(10, 5))]
    p = prof(events)
    assert (p["events_7d"], p["active_days_7d"]) == ("3", "1")
    assert (p["events_30d"], p["active_days_30d"]) == ("4", "2")


# ---- activity_trend ------------------------------------------------------------------------


def _trend(e7: int, e28: int, extra: list[dict[str, Any]] | None = None) -> str:
    # e7 events on D-3 (in [D-6, D]); e28 events on D-20 (in [D-34, D-7])
    events = [pv(dayk(3, 10)) for _ in range(e7)] + [pv(dayk(20, 10)) for _ in range(e28)]
    events += extra or []
    events.append(ident(ago(hours=1)))
    return prof(events)["activity_trend"]


def test_activity_trend_integer_rules() -> None:
    assert _trend(0, 0) == "none"
    assert _trend(1, 0) == "new"
    assert _trend(5, 16) == "rising"  # 16*5 = 80 >= 5*16 = 80
    assert _trend(4, 16) == "stable"  # 64 < 80 and 64 > 48
    assert _trend(3, 16) == "falling"  # 48 <= 3*16 = 48
    assert _trend(0, 1) == "falling"  # 0 <= 3
    assert _trend(1, 3) == "rising"  # 16 >= 15
    assert _trend(1, 4) == "stable"  # 16 < 20, 16 > 12
    assert _trend(1, 6) == "falling"  # 16 <= 18


def test_activity_trend_window_edges() -> None:
    # D-7 belongs to e28 (not e7); D-34 belongs to e28; D-35 to neither; D-6 to e7.
    assert _trend(0, 0, [pv(dayk(7, 23, 59, 59))]) == "falling"  # e7=0, e28=1
    assert _trend(0, 0, [pv(dayk(34))]) == "falling"
    assert _trend(0, 0, [pv(dayk(35, 23, 59, 59))]) == "none"
    assert _trend(0, 0, [pv(dayk(6))]) == "new"
    # identify is not activity
    assert _trend(0, 0, [ident(dayk(2))]) == "none"


# ---- dayparts ------------------------------------------------------------------------------


def test_daypart_kolkata_floors_to_utc_hour() -> None:
    # Asia/Kolkata = UTC+5:30. 00:45Z floors to 00:00Z = 05:30 IST -> hour 5 -> night
    # (converting 00:45Z directly would give 06:15 -> morning).
    # 03:00Z = 08:30 IST -> morning.  16:40Z -> 16:00Z = 21:30 IST -> evening (not 22:10 night).
    tz = ident(dayk(40), timezone="Asia/Kolkata")
    night = [pv(dayk(k, 0, 45)) for k in (1, 2, 3)]
    morning = [pv(dayk(k, 3)) for k in (1, 2)]
    p = prof([tz, *night, *morning])
    assert p["timezone"] == "Asia/Kolkata"
    assert p["preferred_daypart"] == "night"  # night 3 vs morning 2
    # n = 5, k = 3 -> 5*3 = 15 >= 2*5 = 10 -> night owl
    assert p["night_owl"] == "true"

    evening = [pv(dayk(k, 16, 40)) for k in (1, 2, 3, 4)]
    p = prof([tz, *night, *evening])
    assert p["preferred_daypart"] == "evening"  # evening 4 vs night 3
    # n = 7, k = 3 -> 15 >= 14 -> true
    assert p["night_owl"] == "true"


def test_daypart_new_york_dst() -> None:
    # America/New_York: EDT (UTC-4) until 2026-11-01, EST (UTC-5) after.
    # 2026-10-25T10:00Z = 06:00 EDT -> morning; 2026-11-19T10:00Z = 05:00 EST -> night.
    # 2026-11-19T03:30Z -> 03:00Z = 22:00 EST (Nov 18) -> night.
    tz = ident("2026-10-01T00:00:00+00:00", timezone="America/New_York")
    p = prof([tz, pv("2026-10-25T10:00:00+00:00"), pv("2026-11-19T10:00:00+00:00"), pv("2026-11-19T03:30:00Z")])
    assert p["preferred_daypart"] == "night"  # night 2, morning 1
    p = prof([tz, pv("2026-10-25T10:00:00+00:00")])
    assert p["preferred_daypart"] == "morning"
    # 2026-11-19T17:00Z = 12:00 EST -> afternoon; 2026-11-19T23:00Z = 18:00 EST -> evening
    assert prof([tz, pv("2026-11-19T17:00:00Z")])["preferred_daypart"] == "afternoon"
    assert prof([tz, pv("2026-11-19T23:00:00Z")])["preferred_daypart"] == "evening"


def test_daypart_utc_boundaries_and_ties() -> None:
    # UTC (no timezone trait): 21:59 -> evening, 22:00 -> night, 05:59 -> night, 06:00 -> morning,
    # 11:59 -> morning, 12:00 -> afternoon, 17:59 -> afternoon, 18:00 -> evening.
    def part(*hms: tuple[int, int]) -> str:
        return prof([pv(dayk(1, h, m)) for h, m in hms])["preferred_daypart"]

    assert part((21, 59)) == "evening"
    assert part((22, 0)) == "night"
    assert part((5, 59)) == "night"
    assert part((6, 0)) == "morning"
    assert part((11, 59)) == "morning"
    assert part((12, 0)) == "afternoon"
    assert part((17, 59)) == "afternoon"
    assert part((18, 0)) == "evening"
    # ties in the order night, morning, afternoon, evening
    assert part((18, 0), (6, 0)) == "morning"
    assert part((18, 0), (12, 0)) == "afternoon"
    assert part((18, 0), (12, 0), (23, 0), (7, 0)) == "night"


def test_daypart_only_30d_and_timezone_latest_by_ts() -> None:
    # events older than 30 days do not count; no activity in 30 days -> absent
    p = prof([pv(dayk(30, 23))])
    assert "preferred_daypart" not in p
    assert p["night_owl"] == "false"
    # timezone: the identify with the larger ts wins even if it arrives first.
    # Latest zone Asia/Tokyo (UTC+9): 20:00Z -> 05:00 JST -> night. (UTC would be evening.)
    events = [
        ident(dayk(2), timezone="Asia/Tokyo"),
        ident(dayk(3), timezone="Europe/London"),
        pv(dayk(1, 20)),
    ]
    p = prof(events)
    assert p["timezone"] == "Asia/Tokyo"
    assert p["preferred_daypart"] == "night"


def test_night_owl_threshold() -> None:
    def owl(n: int, k: int) -> str:
        # k views at 23:00Z (night), n-k at 13:00Z (afternoon), UTC zone
        events = [pv(dayk(1, 23)) for _ in range(k)] + [pv(dayk(1, 13)) for _ in range(n - k)]
        return prof(events)["night_owl"]

    assert owl(5, 2) == "true"  # 5 >= 5 and 10 >= 10
    assert owl(5, 1) == "false"  # 5 < 10
    assert owl(4, 4) == "false"  # n < 5
    assert owl(6, 2) == "false"  # 10 < 12
    assert owl(6, 3) == "true"  # 15 >= 12
    assert owl(10, 4) == "true"  # 20 >= 20


# ---- top categories ------------------------------------------------------------------------


def test_top_categories_weights_and_decay() -> None:
    # toys: order 14 days ago with two item lines of toys -> 2 * 5 * 2**-1 = 5.0
    # bags: add_to_cart now -> 3; shoes, hats: page view now -> 1 each (tie by name: hats first)
    # socks: search 28 days ago -> 1 * 2**-2 = 0.25
    # no credit: search without category, remove_from_cart, checkout, add_to_cart without category
    items = [
        {"product_id": "p1", "category": "toys", "price": 1.0, "quantity": 3},
        {"product_id": "p2", "category": "toys", "price": 1.0},
    ]
    events = [
        order(ago(days=14), 2.0, items=items),
        ev("add_to_cart", ago(), product_id="p3", category="bags", price=1.0),
        pv(ago(), category="shoes"),
        pv(ago(), category="hats"),
        ev("search", ago(days=28), query="s", category="socks"),
        ev("search", ago(), query="q"),
        ev("remove_from_cart", ago(), product_id="p3", category="gloves"),
        ev("add_to_cart", ago(), product_id="p4"),
    ]
    assert oracle.top_category_scores(events, NOW, "u1") == {
        "toys": 5.0,
        "bags": 3.0,
        "shoes": 1.0,
        "hats": 1.0,
        "socks": 0.25,
    }
    assert prof(events)["top_categories"] == "toys,bags,hats"


def test_top_categories_exact_tie_by_name_and_absent() -> None:
    # b: one view 14 days ago -> 0.5; a: two views 28 days ago -> 2 * 0.25 = 0.5 -> tie -> a, b
    events = [pv(ago(days=14), category="b"), pv(ago(days=28), category="a"), pv(ago(days=28), category="a")]
    assert prof(events)["top_categories"] == "a,b"
    assert "top_categories" not in prof([pv(ago())])


# ---- funnel and cart -----------------------------------------------------------------------


def test_funnel_stage() -> None:
    assert prof([pv(ago())])["funnel_stage_7d"] == "browsed"
    assert prof([ev("search", ago(), query="x")])["funnel_stage_7d"] == "browsed"
    assert prof([pv(ago()), ev("add_to_cart", ago(), product_id="p")])["funnel_stage_7d"] == "carted"
    assert prof([ev("checkout_started", ago()), pv(ago())])["funnel_stage_7d"] == "checkout"
    assert prof([order(dayk(6), 1.0), ev("checkout_started", ago())])["funnel_stage_7d"] == "paid"
    # order on D-7 is outside the 7-day window
    assert prof([order(dayk(7, 23), 1.0), pv(ago())])["funnel_stage_7d"] == "browsed"
    assert prof([fb(ago(), text="hi")])["funnel_stage_7d"] == "none"
    assert prof([ev("remove_from_cart", ago(), product_id="p")])["funnel_stage_7d"] == "none"


def _cart(ts: str) -> dict[str, Any]:
    return ev("add_to_cart", ts, product_id="p1", category="c", price=5.0)


def test_cart_abandoned() -> None:
    def ab(*events: dict[str, Any]) -> str:
        return prof(list(events))["cart_abandoned"]

    assert ab(_cart(ago(hours=6))) == "true"  # now - L = 6h >= 6h
    assert ab(_cart(ago(hours=5, minutes=59, seconds=59))) == "false"  # < 6h
    assert ab(_cart(ago(days=7))) == "false"  # 7d is not < 7d (expired)
    assert ab(_cart(ago(days=6, hours=23, minutes=59, seconds=59))) == "true"
    # cleared by a later order, even an order that arrives first in the list
    assert ab(order(ago(hours=1), 5.0), _cart(ago(hours=8))) == "false"
    # an order before the cart add does not clear it; L = latest add
    assert ab(_cart(ago(days=2)), order(ago(days=1), 5.0), _cart(ago(hours=7))) == "true"
    # order at exactly the same ts: L > O is false
    assert ab(_cart(ago(hours=7)), order(ago(hours=7), 5.0)) == "false"
    # remove_from_cart does not clear it
    assert ab(_cart(ago(hours=7)), ev("remove_from_cart", ago(hours=1), product_id="p1")) == "true"
    # a later add within 6 h makes it false (L is the latest add)
    assert ab(_cart(ago(hours=10)), _cart(ago(hours=1))) == "false"


# ---- money ---------------------------------------------------------------------------------


def test_currency_rounding_half_even_of_float_product() -> None:
    def cents90(*orders: dict[str, Any]) -> str:
        return prof(list(orders))["monetary_90d"]

    # 0.125 * 1.0 * 100 = 12.5 exactly -> round half even -> 12
    assert cents90(order(ago(), 0.125)) == "0.12"
    # 0.375 * 100 = 37.5 exactly -> 38
    assert cents90(order(ago(), 0.375)) == "0.38"
    # 1.005 is stored as 1.00499999999999989... ; * 100 -> 100.49999999999999 -> 100
    assert cents90(order(ago(), 1.005)) == "1.00"
    # GBP 19.99 * 1.27 = 25.3873 -> 2538.73 cents -> 2539
    assert cents90(order(ago(), 19.99, currency="GBP")) == "25.39"
    # JPY 1234 * 0.0067 = 8.2678 -> 826.78 -> 827
    assert cents90(order(ago(), 1234, currency="JPY")) == "8.27"
    # EUR 25.50 * 1.08 = 27.54 -> 2754 ; CNY 100 * 0.14 = 14.00 -> 1400 ; total 4154
    assert cents90(order(ago(), 25.5, currency="EUR"), order(ago(), 100, currency="CNY")) == "41.54"
    # currency missing -> USD
    o = order(ago(), 3.0)
    del o["currency"]
    assert cents90(o) == "3.00"
    # each order is rounded before summing: 12 + 12 = 24 (not round(25.0) = 25)
    assert cents90(order(ago(), 0.125), order(ago(), 0.125)) == "0.24"


def test_avg_order_value_and_absence() -> None:
    # 1 + 4 = 5 cents over 2 orders -> round(2.5) = 2 (half even)
    p = prof([order(ago(), 0.01), order(ago(), 0.04)])
    assert p["avg_order_value_90d"] == "0.02"
    # 1 + 2 = 3 over 2 -> round(1.5) = 2
    assert prof([order(ago(), 0.01), order(ago(), 0.02)])["avg_order_value_90d"] == "0.02"
    # 1000 + 1000 + 1001 = 3001 over 3 -> 1000.33 -> 1000
    p = prof([order(ago(), 10.0), order(ago(), 10.0), order(ago(), 10.01)])
    assert p["avg_order_value_90d"] == "10.00"
    assert p["monetary_90d"] == "30.01"
    p = prof([pv(ago())])
    for tag in ("avg_order_value_90d", "refund_rate_90d", "days_since_last_order"):
        assert tag not in p


def test_value_tier_boundaries() -> None:
    def tier(amount: float) -> str:
        return prof([order(ago(), amount)])["value_tier"]

    assert tier(1000.00) == "vip"  # 100000 cents
    assert tier(999.99) == "high"
    assert tier(300.00) == "high"  # 30000
    assert tier(299.99) == "medium"
    assert tier(50.00) == "medium"  # 5000
    assert tier(49.99) == "low"
    assert tier(0.01) == "low"
    # a zero-amount order: frequency 1, 0 cents -> none, average "0.00"
    p = prof([order(ago(), 0.0)])
    assert (p["value_tier"], p["frequency_90d"], p["avg_order_value_90d"]) == ("none", "1", "0.00")


def test_refund_rate_formatting() -> None:
    def refund(ts: str) -> dict[str, Any]:
        return ev("order_refunded", ts, order_id="o", amount=1.0)

    three = [order(ago(days=d), 1.0) for d in (1, 2, 3)]
    assert prof(three)["refund_rate_90d"] == "0.0000"
    assert prof([*three, refund(ago())])["refund_rate_90d"] == "0.3333"  # 1/3
    assert prof([*three, refund(ago()), refund(ago())])["refund_rate_90d"] == "0.6667"  # 2/3
    # refunds are counted, not matched: 2 refunds / 1 order = 2.0000
    assert prof([order(ago(), 1.0), refund(ago()), refund(ago())])["refund_rate_90d"] == "2.0000"
    # refunds without orders: absent
    assert "refund_rate_90d" not in prof([refund(ago())])
    # a refund on D-90 is too old and ignored: 1/1 -> 1.0000
    assert prof([order(ago(), 1.0), refund(dayk(90, 23)), refund(dayk(89))])["refund_rate_90d"] == "1.0000"


# ---- RFM -----------------------------------------------------------------------------------


def _buyer(user: str, n_orders: int, last_days_ago: float, amount: float = 10.0) -> list[dict[str, Any]]:
    # n orders of `amount`, the latest `last_days_ago` days before now, the others 1..n-1 h earlier
    return [order(ago(days=last_days_ago, hours=j), amount, user=user) for j in range(n_orders)]


def _scores(p: dict[str, str]) -> tuple[str, str, str, str]:
    return p["r_score"], p["f_score"], p["m_score"], p["rfm_segment"]


def test_rfm_single_buyer() -> None:
    # n = 1: t_k = v[ceil(k/5) - 1] = v[0] for every k; nobody is > v[0] -> all scores 1
    # -> R1 F1 -> Hibernating. A non-buyer is a Prospect without scores.
    profiles = oracle.compute_profiles([*_buyer("b", 3, 1), pv(ago(), user="x")], NOW)
    assert _scores(profiles["b"]) == ("1", "1", "1", "Hibernating")
    assert profiles["x"]["rfm_segment"] == "Prospects"
    assert not {"r_score", "f_score", "m_score"} & profiles["x"].keys()


def test_rfm_five_distinct() -> None:
    # n = 5: t_k = v[ceil(k*5/5) - 1] = v[k-1] -> scores equal ranks 1..5.
    # ui: i orders of 10 USD (M = 1000*i cents), last order (6-i) days ago (u5 most recent).
    events = [e for i in range(1, 6) for e in _buyer(f"u{i}", i, 6 - i)]
    profiles = oracle.compute_profiles(events, NOW)
    assert _scores(profiles["u5"]) == ("5", "5", "5", "Champions")  # R5 F4-5
    assert _scores(profiles["u4"]) == ("4", "4", "4", "Loyal")  # R3-4 F4-5
    assert _scores(profiles["u3"]) == ("3", "3", "3", "Need Attention")  # R3 F3
    assert _scores(profiles["u2"]) == ("2", "2", "2", "Hibernating")  # R1-2 F1-2
    assert _scores(profiles["u1"]) == ("1", "1", "1", "Hibernating")


def test_rfm_seven_distinct() -> None:
    # n = 7: t1 = v[ceil(1.4)-1] = v[1]; t2 = v[ceil(2.8)-1] = v[2]; t3 = v[ceil(4.2)-1] = v[4];
    # t4 = v[ceil(5.6)-1] = v[5]. Scores by rank 0..6: 1, 1, 2, 3, 3, 4, 5.
    events = [e for i in range(1, 8) for e in _buyer(f"u{i}", i, 8 - i)]
    profiles = oracle.compute_profiles(events, NOW)
    expected = {1: "1", 2: "1", 3: "2", 4: "3", 5: "3", 6: "4", 7: "5"}
    for i, s in expected.items():
        assert profiles[f"u{i}"]["r_score"] == s
        assert profiles[f"u{i}"]["f_score"] == s
        assert profiles[f"u{i}"]["m_score"] == s
    assert profiles["u1"]["rfm_segment"] == "Hibernating"  # R1 F1
    assert profiles["u3"]["rfm_segment"] == "Hibernating"  # R2 F2
    assert profiles["u4"]["rfm_segment"] == "Need Attention"  # R3 F3
    assert profiles["u6"]["rfm_segment"] == "Loyal"  # R4 F4
    assert profiles["u7"]["rfm_segment"] == "Champions"  # R5 F5


def test_rfm_ties() -> None:
    # n = 5, F = [1, 1, 1, 2, 3] -> t = [v0, v1, v2, v3] = [1, 1, 1, 2]
    # F=1 -> 1 + 0 = 1 ; F=2 -> 1 + 3 = 4 ; F=3 -> 1 + 4 = 5. M = 1000*F -> same scores.
    # Last orders a..e at 5, 4, 3, 2, 1 days ago -> R = 1..5.
    events = [
        *_buyer("a", 1, 5),
        *_buyer("b", 1, 4),
        *_buyer("c", 1, 3),
        *_buyer("d", 2, 2),
        *_buyer("e", 3, 1),
    ]
    profiles = oracle.compute_profiles(events, NOW)
    assert _scores(profiles["a"]) == ("1", "1", "1", "Hibernating")
    assert _scores(profiles["b"]) == ("2", "1", "1", "Hibernating")
    assert _scores(profiles["c"]) == ("3", "1", "1", "About To Sleep")  # R3 F1-2
    assert _scores(profiles["d"]) == ("4", "4", "4", "Loyal")  # R3-4 F4-5
    assert _scores(profiles["e"]) == ("5", "5", "5", "Champions")


def test_rfm_tied_recency_and_segments() -> None:
    # Five buyers, last orders: p, q at the same instant 1 day ago; r 2d; s 3d; t 4d ago.
    # R values ascending: [t, s, r, p=q] -> v = [-4d, -3d, -2d, -1d, -1d], t_k = v[k-1]
    # = [-4d, -3d, -2d, -1d]: p, q > 3 thresholds -> R4; r -> 3; s -> 2; t -> 1.
    # F: p 1, q 5, r 3, s 5, t 4 -> v = [1, 3, 4, 5, 5], t = [1, 3, 4, 5]
    #   -> p 1, r 2, t 3, q 4, s 4.
    t1 = ago(days=1)
    events = [
        order(t1, 10.0, user="p"),
        order(t1, 10.0, user="q"),
        *[order(ago(days=1, hours=j), 10.0, user="q") for j in range(1, 5)],
        *_buyer("r", 3, 2),
        *_buyer("s", 5, 3),
        *_buyer("t", 4, 4),
    ]
    profiles = oracle.compute_profiles(events, NOW)
    got = {u: (profiles[u]["r_score"], profiles[u]["f_score"], profiles[u]["rfm_segment"]) for u in "pqrst"}
    assert got == {
        "p": ("4", "1", "Promising"),  # R4 F1
        "q": ("4", "4", "Loyal"),  # R4 F4
        "r": ("3", "2", "About To Sleep"),  # R3 F2
        "s": ("2", "4", "At Risk"),  # R2 F4
        "t": ("1", "3", "At Risk"),  # R1 F3
    }


def test_rfm_only_90d_orders_and_anonymous_population() -> None:
    # An order on D-90 is dead-lettered: that user has frequency_90d 0 -> Prospects.
    # The anonymous subject with one order is in the population: n = 2.
    # R: v = [anon (3d ago), u (1d ago)], n=2: t_k = v[ceil(2k/5)-1] = v[0], v[0], v[1], v[1]
    #   -> anon 1, u 1 + 2 = 3.
    events = [
        order(dayk(90, 20), 50.0, user="old"),
        order(ago(days=1), 5.0, user="u"),
        {**order(ago(days=3), 5.0, user="x"), "user_id": None, "anonymous_id": "a7"},
    ]
    profiles = oracle.compute_profiles(events, NOW)
    assert "old" not in profiles
    assert profiles["anon:a7"]["r_score"] == "1"
    assert profiles["u"]["r_score"] == "3"
    # F equal (1, 1): v = [1, 1], nobody > 1 -> 1; M equal -> 1
    assert (profiles["u"]["f_score"], profiles["u"]["m_score"]) == ("1", "1")
    assert profiles["u"]["rfm_segment"] == "About To Sleep"  # R3 F1


def test_rfm_segment_map() -> None:
    # rows R5..R1, columns F1..F5, from the table in docs/tags.md (first match wins)
    grid = {
        5: ["New Customers", "Potential Loyalists", "Potential Loyalists", "Champions", "Champions"],
        4: ["Promising", "Potential Loyalists", "Potential Loyalists", "Loyal", "Loyal"],
        3: ["About To Sleep", "About To Sleep", "Need Attention", "Loyal", "Loyal"],
        2: ["Hibernating", "Hibernating", "At Risk", "At Risk", "Can't Lose"],
        1: ["Hibernating", "Hibernating", "At Risk", "At Risk", "Can't Lose"],
    }
    for r, row in grid.items():
        for f, name in enumerate(row, start=1):
            assert oracle.rfm_segment(r, f) == name, (r, f)


# ---- satisfaction --------------------------------------------------------------------------


def _sat(*events: dict[str, Any]) -> dict[str, str]:
    # the extra page view (no feedback) only makes sure the subject has a profile
    p = prof([*events, pv(ago(days=50))])
    return {k: p[k] for k in ("avg_rating_90d", "nps_class", "satisfaction", "complaints_90d") if k in p}


def test_satisfaction_rules() -> None:
    assert _sat(fb(ago(), complaint=True, rating=5)) == {
        "avg_rating_90d": "5.00",
        "satisfaction": "unhappy",  # complaints_90d = 1 > 0
        "complaints_90d": "1",
    }
    assert _sat(fb(ago(), nps=6))["satisfaction"] == "unhappy"  # detractor
    # ratings 2, 3: sum 5 <= 2.5 * 2 = 5 -> unhappy; avg 2.50
    assert _sat(fb(ago(), rating=2), fb(ago(), rating=3)) == {
        "avg_rating_90d": "2.50",
        "satisfaction": "unhappy",
        "complaints_90d": "0",
    }
    # ratings 4, 4, 5: sum 13 >= 4 * 3 = 12 -> happy; avg 13/3 = 4.333 -> 4.33
    s = _sat(fb(ago(), rating=4), fb(ago(), rating=4), fb(ago(), rating=5))
    assert (s["avg_rating_90d"], s["satisfaction"]) == ("4.33", "happy")
    # ratings 3, 4: 7 > 5 and 7 < 8 -> neutral; avg 3.50
    s = _sat(fb(ago(), rating=3), fb(ago(), rating=4))
    assert (s["avg_rating_90d"], s["satisfaction"]) == ("3.50", "neutral")
    # promoter + rating 3 -> not unhappy (3 > 2.5) -> happy
    assert _sat(fb(ago(), nps=9), fb(ago(), rating=3))["satisfaction"] == "happy"
    # promoter + rating 2 -> unhappy first (2 <= 2.5)
    assert _sat(fb(ago(), nps=10, rating=2))["satisfaction"] == "unhappy"
    # passive only -> neutral; text only -> neutral
    s = _sat(fb(ago(), nps=8))
    assert (s["nps_class"], s["satisfaction"]) == ("passive", "neutral")
    assert _sat(fb(ago(), text="meh"))["satisfaction"] == "neutral"
    # no feedback at all -> absent, complaints 0
    assert _sat() == {"complaints_90d": "0"}
    # 33/8 = 4.125 exactly -> ".2f" rounds the exact binary value half-even -> "4.12"; 33 >= 32 -> happy
    s = _sat(*[fb(ago(), rating=r) for r in (5, 5, 5, 4, 4, 4, 3, 3)])
    assert (s["avg_rating_90d"], s["satisfaction"]) == ("4.12", "happy")
    # complaint=false does not count; two complaints count 2
    assert (
        _sat(fb(ago(), complaint=False, text="x"), fb(ago(), complaint=True), fb(ago(), complaint=True))[
            "complaints_90d"
        ]
        == "2"
    )


def test_nps_classes_latest_wins_and_window() -> None:
    assert _sat(fb(ago(), nps=9))["nps_class"] == "promoter"
    assert _sat(fb(ago(), nps=10))["nps_class"] == "promoter"
    assert _sat(fb(ago(), nps=7))["nps_class"] == "passive"
    assert _sat(fb(ago(), nps=0))["nps_class"] == "detractor"
    # latest by ts wins regardless of list order: detractor (5 days ago) beats promoter (10 days ago)
    s = _sat(fb(ago(days=5), nps=3), fb(ago(days=10), nps=10))
    assert (s["nps_class"], s["satisfaction"]) == ("detractor", "unhappy")
    # same ts: larger event_id wins ("f-b" > "f-a")
    assert _sat(fb(ago(), eid="f-b", nps=5), fb(ago(), eid="f-a", nps=10))["nps_class"] == "detractor"
    # a later feedback without nps does not replace the latest nps
    s = _sat(fb(ago(days=20), nps=9), fb(ago(days=1), rating=3))
    assert (s["nps_class"], s["satisfaction"]) == ("promoter", "happy")
    # window: nps on D-89 counts; on D-90 it is too old -> absent (and no feedback -> no satisfaction)
    assert _sat(fb(dayk(89), nps=9))["nps_class"] == "promoter"
    s = _sat(fb(dayk(90, 23, 59, 59), nps=9), pv(ago()))
    assert "nps_class" not in s
    assert "satisfaction" not in s


# ---- identify ------------------------------------------------------------------------------


def test_identify_latest_per_trait() -> None:
    events = [
        # later ts listed first: arrival order does not matter
        ident(ago(days=1), region="US", age_band=None, member_level="gold"),
        ident(ago(days=2), region="EU", age_band="18-24", signup_channel="ads"),
    ]
    p = prof(events)
    assert p["region"] == "US"
    assert p["age_band"] == "18-24"  # the later identify has age_band null
    assert p["member_level"] == "gold"
    assert p["signup_channel"] == "ads"
    assert p["timezone"] == "UTC"
    # tie on ts: larger event_id wins ("i-2" > "i-1")
    t = ago(days=1)
    p = prof([ident(t, eid="i-2", region="B"), ident(t, eid="i-1", region="A")])
    assert p["region"] == "B"
    # never given -> absent; identify with empty/missing traits sets nothing
    p = prof([ev("identify", ago(), traits={}), ev("identify", ago())])
    assert not {"region", "age_band", "member_level", "signup_channel"} & p.keys()
    assert p["timezone"] == "UTC"


# ---- dedupe and subjects -------------------------------------------------------------------


def test_dedupe_by_subject_and_event_id() -> None:
    events = [
        order(ago(hours=1), 10.0, eid="dup"),
        order(ago(hours=2), 99.0, eid="dup"),  # same user and event_id: ignored (first kept)
        order(ago(hours=1), 7.0, user="u2", eid="dup"),  # another user: counts
        pv(ago(), user=None, eid="dup", anonymous_id="a1"),  # anon:a1
        pv(ago(), user=None, eid="dup", anonymous_id="a1"),
    ]
    profiles = oracle.compute_profiles(events, NOW)
    assert (profiles["u1"]["frequency_90d"], profiles["u1"]["monetary_90d"]) == ("1", "10.00")
    assert profiles["u1"]["first_seen"] == "2026-11-20T11:00:00+00:00"
    assert profiles["u2"]["monetary_90d"] == "7.00"
    assert profiles["anon:a1"]["events_7d"] == "1"
    # an event with both ids belongs to the user
    both = pv(ago(), user="u3", anonymous_id="a9")
    assert set(oracle.compute_profiles([both], NOW)) == {"u3"}


def test_future_event_counts_literally() -> None:
    # now = D 23:59:30; an event at D+1 00:00:10 (40 s ahead, within max_future_skew).
    # Windows have no upper bound (d >= day(now) - W + 1) -> it counts in events_7d/30d,
    # but activity_trend's e7 is [D-6, D] -> excluded -> e7 = e28 = 0 -> none.
    # recency: floor(-40 / 86400) = -1.
    now = (D0 + timedelta(hours=23, minutes=59, seconds=30)).timestamp()
    p = prof([pv(iso(D0 + timedelta(days=1, seconds=10)))], now=now)
    assert p["events_7d"] == "1"
    assert p["activity_trend"] == "none"
    assert p["recency_days"] == "-1"


@pytest.mark.parametrize("amount", [0.1, 0.2, 0.3])
def test_money_format(amount: float) -> None:
    # 0.1*100 = 10.000000000000002 -> 10 ; 0.2*100 = 20.000000000000004 -> 20 ; 0.3*100 = 30.000000000000004 -> 30
    cents = {0.1: "0.10", 0.2: "0.20", 0.3: "0.30"}[amount]
    assert prof([order(ago(), amount)])["monetary_30d"] == cents
