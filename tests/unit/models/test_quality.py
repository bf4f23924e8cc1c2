"""Metrics, calibration and BG/NBD against hand-computed values (stream/models/quality.py,
stream/models/calibration.py, stream/offline/btyd.py), and the churn snapshot cadence."""

from __future__ import annotations

import math

import pytest

from stream.models import Models, UserModelState, load_models_config, next_model_time
from stream.models.calibration import PlattCalibrator
from stream.models.churn import first_cadence_point
from stream.models.quality import brier, calibration_error, calibration_table, pr_auc, roc_auc
from stream.offline import btyd

DAY = 86400.0
T0 = 1_790_000_000.0


def test_roc_auc_by_hand() -> None:
    # pairs (pos, neg): (0.35 vs 0.1) win, (0.35 vs 0.4) loss, (0.8 vs both) wins: 3 of 4
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert roc_auc([1, 0, 1, 0], [0.5, 0.5, 0.9, 0.1]) == (1 + 1 + 0.5 + 1) / 4  # one tied pair counts 1/2
    assert math.isnan(roc_auc([1, 1], [0.1, 0.2]))


def test_pr_auc_by_hand() -> None:
    # ranks 0.9 (pos) 0.8 (neg) 0.7 (pos) 0.1 (neg): recall steps of 1/2 at precision 1 and 2/3
    assert pr_auc([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # a tie is one threshold: {0.5, 0.5} holds one positive of two (precision 1/2), then 0.2 (2/3)
    assert pr_auc([1, 0, 1], [0.5, 0.5, 0.2]) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert math.isnan(pr_auc([0, 0], [0.1, 0.2]))


def test_brier_and_calibration_table_by_hand() -> None:
    assert brier([1, 0], [0.8, 0.4]) == pytest.approx((0.2**2 + 0.4**2) / 2)
    table = calibration_table([0, 0, 1, 1, 1], [0.1, 0.2, 0.3, 0.8, 0.9], bins=2)
    assert [b.n for b in table] == [3, 2]  # the first bins take the remainder
    assert table[0].predicted == pytest.approx(0.2) and table[0].observed == pytest.approx(1 / 3)
    assert table[1].predicted == pytest.approx(0.85) and table[1].observed == 1.0
    assert (table[0].low, table[1].high) == (0.1, 0.9)
    assert calibration_error(table) == pytest.approx((3 * (1 / 3 - 0.2) + 2 * 0.15) / 5)
    assert len(calibration_table([1, 0], [0.3, 0.6], bins=10)) == 2


def test_platt_step_by_hand() -> None:
    cal = PlattCalibrator(learning_rate=0.01)
    assert cal.calibrate(0.9) == pytest.approx(0.9)  # nothing learned: the identity
    cal.learn(0.5, 1)  # z = 0, error = 0.5 - 1: a unchanged, b += 0.01 * 0.5
    assert (cal.a, cal.b) == (1.0, pytest.approx(0.005))
    cal.learn(0.8, 0)  # z = log 4, error = sigmoid(log 4 + 0.005) - 0
    e = 1 / (1 + math.exp(-(math.log(4) + 0.005)))
    assert cal.a == pytest.approx(1.0 - 0.01 * e * math.log(4)) and cal.b == pytest.approx(0.005 - 0.01 * e)


def test_platt_maps_an_overconfident_score_to_the_observed_rate_and_keeps_the_order() -> None:
    cal = PlattCalibrator()
    for i in range(5000):
        cal.learn(0.9, 1 if i % 10 < 3 else 0)  # says 0.9, 30 % happen
    assert cal.calibrate(0.9) == pytest.approx(0.3, abs=0.03)
    ps = [cal.calibrate(p) for p in (0.01, 0.2, 0.5, 0.9, 0.99)]
    assert ps == sorted(ps) and len(set(ps)) == len(ps)  # never reorders, never flattens


def test_bgnbd_probabilities_by_hand() -> None:
    m = btyd.BgNbd(r=1.0, alpha=1.0, a=1.0, b=1.0)
    one_time = btyd.Summary(frequency=0, recency=0, T=9)
    assert m.p_alive(one_time) == 1.0
    assert m.p_churn(one_time, 10) == pytest.approx(1 - (10 / 20) ** 1)
    repeat = btyd.Summary(frequency=1, recency=1, T=3)
    # 1 / (1 + a / (b + x - 1) * ((alpha + T) / (alpha + t_x)) ** (r + x)) = 1 / (1 + 4)
    assert m.p_alive(repeat) == pytest.approx(0.2)
    assert m.p_churn(repeat, 4) == pytest.approx(1 - 0.2 + 0.2 * (4 / 8) ** 2)


def test_summaries_count_distinct_days_before_the_cutoff() -> None:
    orders = [T0, T0 + 3600, T0 + 5 * DAY, T0 + 20 * DAY]
    day0 = math.floor(T0 / DAY)
    s = btyd.summarise(orders, (day0 + 10) * DAY)
    assert s == btyd.Summary(frequency=1, recency=5, T=10)
    assert btyd.summarise(orders, T0 - 1) is None


def test_bgnbd_p_alive_equals_the_lifetimes_implementation() -> None:
    lifetimes = pytest.importorskip("lifetimes", reason="the evaluation extra (lifetimes) is not installed")
    from lifetimes.datasets import load_cdnow_summary

    data = load_cdnow_summary(index_col=[0])
    fitter = lifetimes.BetaGeoFitter(penalizer_coef=0.001).fit(data["frequency"], data["recency"], data["T"])
    p = fitter.params_
    model = btyd.BgNbd(r=p["r"], alpha=p["alpha"], a=p["a"], b=p["b"])
    rows = data.head(50)
    theirs = fitter.conditional_probability_alive(rows["frequency"], rows["recency"], rows["T"])
    ours = [
        model.p_alive(btyd.Summary(f, r, t))
        for f, r, t in zip(rows["frequency"], rows["recency"], rows["T"], strict=True)
    ]
    assert ours == pytest.approx(list(theirs), rel=1e-6)


def test_the_first_cadence_point_is_spread_over_an_interval() -> None:
    every = 30 * DAY
    offsets = [first_cadence_point(T0 + i * 3607.0, every) - (T0 + i * 3607.0) for i in range(300)]
    assert all(0 <= o < every for o in offsets)
    assert max(offsets) - min(offsets) > 0.9 * every  # not the moment of the first order for everyone
    # deterministic, by hand: 10 + frac(10 * 0.6180339887) * 100 (the golden-ratio phase)
    assert first_cadence_point(10.0, 100.0) == pytest.approx(28.0339887)


def test_snapshots_follow_a_cadence_for_lapsed_customers_too() -> None:
    config = load_models_config()
    models = Models(config)
    user = UserModelState()
    profile = {"days_since_last_order": "0"}
    horizon, every = config.churn.horizon, config.churn.snapshot_interval
    ordered = T0 - 1.0
    first = first_cadence_point(T0, every)
    models.score_step(user, profile, ordered, T0)  # the first order: the cadence starts at a phase
    assert user.pending == [] and next_model_time(user, T0, config) == first
    models.score_step(user, profile, ordered, first)
    assert [p.ts for p in user.pending] == [first] and next_model_time(user, first, config) == first + every
    learned = []
    t = first
    for _ in range(4):  # the customer never comes back: a snapshot every interval, churned at each deadline
        t += every
        learned += [i for i in models.score_step(user, profile, ordered, t).learn if i["kind"] == "churn"]
    assert [p.ts for p in user.pending] == [first + 2 * every, first + 3 * every, first + 4 * every]
    assert [(item["ts"], item["y"]) for item in learned] == [(first, 1), (first + every, 1)]
    assert horizon == 3 * every  # (the shipped cadence: three pending at most)
    # an order marks every pending snapshot before it as returned; each is learned when its window closes
    back = t + 1.0
    assert [i for i in models.score_step(user, profile, back, back).learn if i["kind"] == "churn"] == []
    assert [p.returned for p in user.pending] == [True, True, True]
    assert next_model_time(user, back, config) == first + 5 * every  # the oldest window closes with the cadence
    closing = first + 5 * every
    learned = [i for i in models.score_step(user, profile, back, closing).learn if i["kind"] == "churn"]
    assert [(i["ts"], i["y"]) for i in learned] == [(first + 2 * every, 0)]
    assert [p.returned for p in user.pending] == [True, True, False]  # the new one at the closing point
    assert UserModelState.from_doc(user.to_doc()) == user
    assert models.score_step(UserModelState(), {}, None, T0).next_due is None  # not a customer: no snapshot


def test_score_cutoff_labels_customers_from_the_data_after_the_cutoff() -> None:
    from stream.offline.evaluation import CutoffError, History, check_cutoffs, default_cutoffs, score_cutoff

    cut = 100 * DAY
    history = History(
        times={
            "a": [10 * DAY, 120 * DAY],  # ordered again within 90 days: retained
            "b": [50 * DAY],  # never again: churned
            "c": [20 * DAY, 95 * DAY + 190 * DAY],  # back only after the horizon: churned
            "d": [150 * DAY],  # first order after the cutoff: not a customer yet
        },
        start=10 * DAY,
        end=300 * DAY,
    )
    profiles = {"a": {"churn_risk": "0.2000"}, "b": {"churn_risk": "0.7000"}}  # c has no profile
    result = score_cutoff(cut, history, profiles, load_models_config(), with_bgnbd=False)
    assert (result.customers, result.churned, result.without_profile) == (3, 2, 1)
    # a (0.2, retained), b (0.7, churned), c (1.0 for no profile, churned)
    assert result.portrait.roc_auc == 1.0 and result.portrait.brier == pytest.approx((0.04 + 0.09 + 0.0) / 3, abs=1e-6)
    assert result.recency.roc_auc == 0.0  # days since the last order: a 90 (retained), b 50, c 80
    assert result.bands["low"].customers == 1 and result.bands["high"].customers == 2
    assert result.bgnbd is None
    assert default_cutoffs(0.0, 400 * DAY, 90 * DAY) == [155 * DAY, 232 * DAY]
    with pytest.raises(CutoffError, match="label window ends after the last event"):
        check_cutoffs([250 * DAY], 0.0, 300 * DAY, 90 * DAY)
