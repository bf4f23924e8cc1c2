"""The read API's pure parts: exposure check, uplift interval, the aggregate, expressions."""

from __future__ import annotations

import re

import pytest
from pydantic import SecretStr

from stream.api.aggregate import Aggregate, risk_bin
from stream.api.app import check_exposure, is_loopback
from stream.api.audiences import Expression, inclusion_terms
from stream.api.refresher import domain_pairs
from stream.cli.main import main
from stream.errors import ConfigError
from stream.rules.uplift import newcombe, wilson
from stream.settings import Settings
from stream.tagging.definitions import load_catalogue

DAY = 86400


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("127.8.0.1", True),
        ("0.0.0.0", False),
        ("10.0.0.5", False),
        ("example.org", False),
    ],
)
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_non_loopback_needs_a_token(tmp_path) -> None:
    with pytest.raises(ConfigError, match=re.escape("PORTRAIT_API_HOST='0.0.0.0' is not a loopback address")):
        check_exposure(Settings(api_host="0.0.0.0", state_file=tmp_path / "s.json"))
    check_exposure(Settings(api_host="0.0.0.0", api_token=SecretStr("t"), state_file=tmp_path / "s.json"))
    check_exposure(Settings(state_file=tmp_path / "s.json"))


def test_cli_refuses_an_open_bind_in_one_line(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PORTRAIT_STATE_FILE", str(tmp_path / "none.json"))
    assert main(["api", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "PORTRAIT_API_TOKEN" in err


def test_newcombe_matches_the_published_example() -> None:
    # Newcombe (1998), Statistics in Medicine 17:873, table II example (56/70 vs 48/80): 0.0524 to 0.3339
    low, high = newcombe(56, 70, 48, 80)
    assert (round(low, 4), round(high, 4)) == (0.0524, 0.3339)
    # Wilson 95 % for 0/10 is [0, 0.2775] (same paper, table I)
    assert wilson(0, 10)[0] == 0.0 and round(wilson(0, 10)[1], 4) == 0.2775


def test_aggregate_by_hand() -> None:
    now = 20000 * DAY + 12 * 3600  # day 20000 = Friday 2024-10-04, noon UTC
    agg = Aggregate(now=now)
    agg.add(
        "a",
        {
            "events_7d": "3",
            "events_30d": "5",
            "r_score": "5",
            "f_score": "2",
            "monetary_90d": "10.05",
            "funnel_stage_7d": "paid",
            "top_categories": "toys,books",
            "avg_rating_90d": "4.00",
            "complaints_90d": "1",
            "churn_risk": "0.95",
            "value_tier": "vip",
            "timezone": "Asia/Shanghai",
        },
        {20000: {3: 2}},  # 03:00 UTC = 11:00 in Shanghai, Friday
    )
    agg.add(
        "b",
        {
            "events_7d": "0",
            "events_30d": "1",
            "r_score": "5",
            "f_score": "2",
            "monetary_90d": "0.10",
            "funnel_stage_7d": "carted",
            "cart_abandoned": "true",
            "top_categories": "books",
            "churn_risk": "1.0",
            "value_tier": "low",
        },
        {20000 - 28: {0: 9}, 19990: {23: 1}},  # 28 days back: outside; Tuesday 23:00 UTC
    )
    assert (agg.users, agg.active_7d, agg.active_30d) == (2, 1, 2)
    assert agg.rfm_users[(5, 2)] == 2 and agg.rfm_cents[(5, 2)] == 1015
    assert agg.funnel() == [("browsed", 2), ("carted", 2), ("checkout", 1), ("paid", 1)]
    assert (agg.cart_abandoned, agg.carted) == (1, 2)  # a paid, b carted and abandoned
    assert agg.categories == {"books": 2, "toys": 1} and agg.first_categories == {"toys": 1, "books": 1}
    assert (agg.rated_users, agg.rating_sum, agg.complaints, agg.users_with_complaints) == (1, 4.0, 1, 1)
    assert agg.histogram[9] == 2 and agg.scored_users == 2
    assert [(r, u) for r, u, _ in agg.at_risk()] == [(0.95, "a")]
    grid = agg.activity_grid()
    assert grid[4][11] == 2 and grid[1][23] == 1 and sum(map(sum, grid)) == 3


def test_risk_bins() -> None:
    assert [risk_bin(x) for x in (0.0, 0.0999, 0.1, 0.95, 1.0)] == [0, 0, 1, 9, 9]


def test_expression_text() -> None:
    e = Expression(
        (("rfm_segment", "At Risk"), ("rfm_segment", "Can't Lose")),
        (("churn_band", "high"),),
        (("cart_abandoned", "true"),),
    )
    assert e.text() == "(rfm_segment:At Risk OR rfm_segment:Can't Lose) AND churn_band:high AND NOT cart_abandoned:true"
    assert Expression((("value_tier", "vip"),)).single


def test_domain_pairs_cover_the_catalogue() -> None:
    pairs = set(domain_pairs(load_catalogue(), None))
    assert ("rfm_segment", "At Risk") in pairs and ("r_score", "5") in pairs and ("night_owl", "false") in pairs
    assert not any(tag == "region" for tag, _ in pairs)  # free text: found by the pass, not declared


def test_inclusion_exclusion_sizes() -> None:
    import itertools
    import random

    rng = random.Random(3)
    universe = range(60)
    sets = {f"s{i}": {u for u in universe if rng.random() < 0.4} for i in range(6)}
    pair = {name: ("t", name) for name in sets}
    members = {pair[n]: s for n, s in sets.items()}
    for k, r, m in itertools.product((1, 2, 3), (0, 1), (0, 1, 2)):
        names = rng.sample(sorted(sets), k + r + m)
        any_of, all_of, none_of = names[:k], names[k : k + r], names[k + r :]
        expr = Expression(
            tuple(pair[n] for n in any_of), tuple(pair[n] for n in all_of), tuple(pair[n] for n in none_of)
        )
        want = {
            u
            for u in universe
            if any(u in sets[n] for n in any_of)
            and all(u in sets[n] for n in all_of)
            and not any(u in sets[n] for n in none_of)
        }
        got = sum(sign * len(set.intersection(*(members[p] for p in group))) for sign, group in inclusion_terms(expr))
        assert got == len(want), (any_of, all_of, none_of)


@pytest.mark.parametrize("outage", [True, False])
def test_a_failed_insights_pass_is_one_line_when_redis_is_away(outage: bool, caplog) -> None:
    """Redis away (e.g. stopped under a running API) is logged without a traceback; a bug keeps it."""
    import asyncio

    from redis.exceptions import ConnectionError as RedisConnectionError

    from stream.api.refresher import Refresher

    settings = Settings(api_insights_interval_s=0.01)
    refresher = Refresher(reads=None, settings=settings, catalogue=load_catalogue())  # type: ignore[arg-type]
    error = RedisConnectionError("Connection refused") if outage else KeyError("bug")

    async def failing() -> None:
        raise error

    refresher.refresh = failing  # type: ignore[method-assign]

    async def two_passes() -> None:
        task = asyncio.create_task(refresher.run_passes())
        while len(caplog.records) < 2:
            await asyncio.sleep(0.01)
        task.cancel()

    with caplog.at_level("WARNING", logger="stream.api.refresher"):
        asyncio.run(asyncio.wait_for(two_passes(), 10))
    assert all("insights pass failed" in r.getMessage() for r in caplog.records)
    assert all((r.exc_info is None) is outage for r in caplog.records)
