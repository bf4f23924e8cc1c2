"""Lifecycle memory against the independent oracle (tests/oracle.py ``lifecycle_tags``).

Randomised order histories over two years arrive out of order (up to the lateness the worker
accepts) and are folded by the engine with its tiles pruned as the clock moves; the lifecycle tags
at a later time must equal the oracle's, computed from the plain list of accepted events.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import orjson
from hypothesis import HealthCheck, given, settings, strategies as st

from stream.contracts.events import parse_event
from stream.tagging.definitions import load_catalogue
from stream.tagging.engine import RfmThresholds, apply_event, evaluate, prune, rank_metrics
from stream.tagging.state import UserState
from tests import oracle

CATALOGUE = load_catalogue()
PARAMS = CATALOGUE.params
DAY = 86400
T0 = datetime(2025, 1, 1, tzinfo=UTC).timestamp()
LIFECYCLE_TAGS = {t.name for t in CATALOGUE.tags if t.category == "lifecycle"} - {"first_seen", "last_seen"}


def _order(n: int, ts: float, amount: float, currency: str | None = None) -> dict[str, object]:
    return {
        "event_id": f"o{n}",
        "type": "order_paid",
        "user_id": "u1",
        "ts": datetime.fromtimestamp(ts, UTC).isoformat(),
        "order_id": f"order-{n}",
        "amount": amount,
        "currency": currency or ("EUR" if n % 3 == 0 else "USD"),
        "items": [],
    }


def _view(n: int, ts: float) -> dict[str, object]:
    ts_text = datetime.fromtimestamp(ts, UTC).isoformat()
    return {"event_id": f"v{n}", "type": "page_view", "user_id": "u1", "ts": ts_text}


def _fold(raw: list[dict[str, object]], arrival: list[float]) -> tuple[UserState, list[dict[str, object]], float]:
    """Apply in arrival order as the worker does: the clock is the latest event time seen, an
    event older than the 90-day window at arrival is dead-lettered, and the user's tiles are pruned
    at each evaluation. Returns the state, the accepted events and the clock."""
    state, accepted, clock = UserState(), [], -math.inf
    for position, (_, body) in enumerate(sorted(zip(arrival, raw, strict=True), key=lambda a: a[0])):
        event = parse_event(orjson.dumps(body))
        clock = max(clock, event.epoch)
        if math.floor(event.epoch / DAY) < math.floor(clock / DAY) - 89:
            continue  # too_old
        apply_event(state, event, "portrait.transactions/0", position, PARAMS)
        prune(state, clock)
        if position % 7 == 3:  # the stored form round-trips mid-history
            state = UserState.from_bytes(state.to_bytes())
        accepted.append(body)
    return state, accepted, clock


HISTORY = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=730),  # day
        st.integers(min_value=0, max_value=DAY - 1),  # second of the day
        st.sampled_from([0.0, 9.99, 25.0, 120.5, 1999.0]),
        st.integers(min_value=0, max_value=80),  # days late on arrival
        st.booleans(),  # an order (else a page view)
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(HISTORY, st.integers(min_value=0, max_value=300))
def test_lifecycle_tags_equal_the_oracle_for_random_histories(history: list[tuple], extra_days: int) -> None:
    raw, arrival = [], []
    for n, (day, second, amount, late, is_order) in enumerate(history):
        ts = T0 + day * DAY + second
        raw.append(_order(n, ts, amount) if is_order else _view(n, ts))
        arrival.append(ts + late * DAY + n * 1e-3)
    state, accepted, clock = _fold(raw, arrival)
    now = clock + extra_days * DAY + 3600
    prune(state, now)
    got = {k: v for k, v in evaluate(state, now, RfmThresholds(), PARAMS).items() if k in LIFECYCLE_TAGS}
    assert got == oracle.lifecycle_tags(accepted, now)


def _buyer(uid_orders: list[tuple[float, float]]) -> UserState:
    state = UserState()
    for n, (ts, amount) in enumerate(uid_orders):
        apply_event(state, parse_event(orjson.dumps(_order(n, ts, amount, "USD"))), "t/0", n, PARAMS)
        prune(state, ts)
    return state


def test_a_lapsed_high_value_customer_keeps_rfm_scores_and_is_cant_lose() -> None:
    now = T0 + 400 * DAY
    # 12 orders a week apart a year ago, then nothing: lapsed, highest lifetime frequency and value
    lapsed = _buyer([(T0 + 200 * DAY + k * 7 * DAY, 300.0) for k in range(12)])
    recent = [_buyer([(now - k * DAY, 20.0)]) for k in range(1, 9)]
    prune(lapsed, now)
    population = [s for s in [lapsed, *recent]]
    metrics = [rank_metrics(s, now) for s in population]
    assert all(m is not None for m in metrics)
    assert metrics[0] == (T0 + 277 * DAY, 12, 12 * 30000)
    r = sorted(m[0] for m in metrics if m is not None)
    f = sorted(m[1] for m in metrics if m is not None)
    c = sorted(m[2] for m in metrics if m is not None)
    cut = [-(-k * len(r) // 5) - 1 for k in range(1, 5)]  # t_k = v[ceil(k*n/5) - 1]
    thresholds = RfmThresholds(1, tuple(r[i] for i in cut), tuple(f[i] for i in cut), tuple(c[i] for i in cut))
    tags = evaluate(lapsed, now, thresholds, PARAMS)
    assert (tags["r_score"], tags["f_score"], tags["m_score"]) == ("1", "5", "5")
    assert tags["rfm_segment"] == "Can't Lose" and tags["lifecycle_stage"] == "lapsed"
    assert tags["frequency_90d"] == "0" and tags["lifetime_orders"] == "12" and tags["lifetime_value"] == "3600.00"
    assert tags["mean_interpurchase_days"] == "7.00" and tags["days_since_last_order"] == "123"
    assert tags["overdue_ratio"] == f"{123 / 7:.4f}"


def test_every_lifecycle_stage_is_reached() -> None:
    def stage(orders: list[float], now: float) -> str:
        state = _buyer([(t, 10.0) for t in orders])
        prune(state, now)
        return evaluate(state, now, RfmThresholds(), PARAMS)["lifecycle_stage"]

    assert stage([T0], T0 + 5 * DAY) == "new"
    assert stage([T0, T0 + 10 * DAY, T0 + 20 * DAY, T0 + 30 * DAY], T0 + 40 * DAY) == "active"
    assert stage([T0, T0 + 10 * DAY, T0 + 20 * DAY, T0 + 30 * DAY], T0 + 51 * DAY) == "lapsing"  # 21 > 2 x 10 days
    assert stage([T0], T0 + 50 * DAY) == "lapsing"  # one order day, 45 days without another
    assert stage([T0], T0 + 95 * DAY) == "lapsed"
    assert stage([T0, T0 + 120 * DAY], T0 + 130 * DAY) == "won back"
    allowed = {t.name: t.allowed for t in CATALOGUE.tags}["lifecycle_stage"]
    assert allowed == ("new", "active", "lapsing", "lapsed", "won back")


def test_a_state_from_before_lifecycle_memory_derives_it_from_its_tiles() -> None:
    state = _buyer([(T0 + k * 3 * DAY, 50.0) for k in range(4)])
    doc = state.to_doc()
    del doc["lt"]
    old = UserState.from_bytes(orjson.dumps(doc))
    assert (old.lifetime.orders, old.lifetime.cents, old.lifetime.first_order) == (4, 20000, T0)
    assert evaluate(old, T0 + 20 * DAY, RfmThresholds(), PARAMS)["mean_interpurchase_days"] == "3.00"


def test_lifetime_tags_of_a_state_missing_older_history_say_so() -> None:
    """A state from before lifecycle memory whose user was seen before its oldest daily tile: the
    lifetime is incomplete, so the lifetime tags are not shown and the profile lists them."""
    from stream.core.pipeline import PlanContext, plan_write
    from stream.tagging.lifecycle import LIFETIME_TAGS

    state = _buyer([(T0 + 100 * DAY, 50.0), (T0 + 110 * DAY, 20.0)])
    state.first_seen = T0  # seen 100 days before the oldest tile it still has
    doc = state.to_doc()
    del doc["lt"]
    old = UserState.from_bytes(orjson.dumps(doc))
    assert old.lifetime.since == T0 + 100 * DAY
    context = PlanContext(catalogue=CATALOGUE, thresholds=RfmThresholds(), wall_now=0)
    write = plan_write("u1", 1, old, T0 + 120 * DAY, context)
    assert not set(LIFETIME_TAGS) & set(write.profile)
    assert write.profile["_unavailable"].split(",") == list(LIFETIME_TAGS)
    assert write.profile["_tags_version"] == str(CATALOGUE.version) and write.profile["days_since_last_order"] == "10"
    assert UserState.from_bytes(old.to_bytes()).lifetime.since == T0 + 100 * DAY  # remembered
    fresh = _buyer([(T0 + 100 * DAY, 50.0)])  # first seen on its oldest tile's day: complete
    doc = fresh.to_doc()
    del doc["lt"]
    assert UserState.from_bytes(orjson.dumps(doc)).lifetime.since is None
