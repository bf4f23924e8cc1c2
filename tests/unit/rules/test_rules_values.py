"""Rule condition values are checked against their tag's domain (the catalogue and the model tags)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.models import MODEL_TAGS
from stream.models.churn import churn_band, format_risk
from stream.models.config import ChurnBands
from stream.rules import MODEL_TAG_DOMAINS, load_rules, parse_rules
from stream.settings import ConfigError
from stream.tagging.definitions import load_catalogue

ROOT = Path(__file__).resolve().parents[3]
CATALOGUE = load_catalogue()


def rules_file(tmp_path: Path, when: str, rid: str = "care_sms") -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "version: 1\nrules:\n"
        "  - id: first\n    version: 1\n    when: {tag: value_tier, eq: vip}\n"
        "    action: {type: coupon, params: {campaign: c, value: 5}}\n"
        f"  - id: {rid}\n    version: 1\n    when: {when}\n"
        "    action: {type: care_sms, params: {template: t}}\n"
    )
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as err:
        load_rules(path, CATALOGUE)
    return str(err.value)


def test_the_issues_example_is_one_line_naming_file_rule_condition_and_allowed_values(tmp_path: Path) -> None:
    path = rules_file(tmp_path, "{all: [{tag: churn_band, in: [high, vipp]}]}")
    assert error_of(path) == (
        f"{path}: rules[1] (care_sms).when.all[0].in: 'vipp' is not a churn_band value (allowed: low, medium, high)"
    )


@pytest.mark.parametrize(
    ("when", "where", "message"),
    [
        (
            "{tag: value_tier, eq: gold}",
            "eq",
            "'gold' is not a value_tier value (allowed: vip, high, medium, low, none)",
        ),
        ("{tag: value_tier, ne: VIP}", "ne", "'VIP' is not a value_tier value (allowed: vip, high, medium, low, none)"),
        (
            "{tag: rfm_segment, enters: [At Risk, at risk]}",
            "enters",
            "'at risk' is not a rfm_segment value (allowed: Champions, Loyal, Potential Loyalists, New Customers, "
            "Promising, Need Attention, About To Sleep, Can't Lose, At Risk, Hibernating, Prospects)",
        ),
        (
            "{tag: nps_class, leaves: promoters}",
            "leaves",
            "'promoters' is not a nps_class value (allowed: promoter, passive, detractor)",
        ),
        ("{tag: cart_abandoned, eq: 1}", "eq", "'1' is not a cart_abandoned value (allowed: true, false)"),
        ("{tag: r_score, ge: 6}", "ge", "'6' is not a r_score value (allowed: numbers from 1 to 5)"),
        ("{tag: r_score, in: [4, five]}", "in", "'five' is not a r_score value (allowed: numbers from 1 to 5)"),
        ("{tag: recency_days, lt: -1}", "lt", "'-1' is not a recency_days value (allowed: numbers >= 0)"),
        ("{tag: monetary_90d, gt: lots}", "gt", "'lots' is not a monetary_90d value (allowed: numbers >= 0)"),
        (
            "{tag: churn_risk, crosses_above: 1.5}",
            "crosses_above",
            "'1.5' is not a churn_risk value (allowed: numbers from 0 to 1)",
        ),
        (
            "{tag: behaviour_segment, eq: S3}",
            "eq",
            "'S3' is not a behaviour_segment value (allowed: segment ids s1, s2, ...)",
        ),
        (
            "{tag: activity_level, crosses_below: 2}",
            "crosses_below",
            "crosses_below compares numbers, but activity_level is a str tag (allowed: high, medium, low, dormant)",
        ),
        (
            "{tag: region, crosses_above: 0}",
            "crosses_above",
            "crosses_above compares numbers, but region is a str tag (allowed: any text)",
        ),
        (
            "{tag: first_seen, lt: yesterday}",
            "lt",
            "'yesterday' is not a first_seen value (allowed: ISO 8601 times, e.g. 2026-01-31T00:00:00+00:00)",
        ),
    ],
)
def test_a_value_outside_the_domain_is_refused(tmp_path: Path, when: str, where: str, message: str) -> None:
    path = rules_file(tmp_path, when)
    assert error_of(path) == f"{path}: rules[1] (care_sms).when.{where}: {message}"


def test_every_bad_value_is_its_own_line_at_its_place_in_the_tree(tmp_path: Path) -> None:
    when = (
        "{any: [{tag: churn_band, enters: [high, vipp, hi]}, {not: {tag: night_owl, eq: yes please}},"
        " {all: [{tag: value_tier, in: [vip]}, {tag: f_score, le: 0}]}]}"
    )
    path = rules_file(tmp_path, when)
    prefix = f"{path}: rules[1] (care_sms).when.any"
    assert error_of(path).splitlines() == [
        f"{prefix}[0].enters: 'vipp' is not a churn_band value (allowed: low, medium, high)",
        f"{prefix}[0].enters: 'hi' is not a churn_band value (allowed: low, medium, high)",
        f"{prefix}[1].not.eq: 'yes please' is not a night_owl value (allowed: true, false)",
        f"{prefix}[2].all[1].le: '0' is not a f_score value (allowed: numbers from 1 to 5)",
    ]


@pytest.mark.parametrize(
    "when",
    [
        "{tag: churn_band, in: [high, medium]}",
        "{tag: churn_band, enters: high}",
        "{tag: cart_abandoned, eq: true}",
        "{tag: night_owl, ne: false}",
        '{tag: rfm_segment, enters: [At Risk, "Can\'t Lose"]}',
        "{tag: r_score, in: [4, 5]}",
        "{tag: m_score, ge: 4.5}",
        "{tag: recency_days, ge: 14}",
        "{tag: complaints_90d, crosses_above: 0}",
        "{tag: refund_rate_90d, gt: 0.25}",
        "{tag: churn_risk, crosses_above: 0.7}",
        "{tag: churn_model, ge: 100}",
        "{tag: behaviour_segment, eq: s3}",
        "{tag: region, eq: anything-goes}",
        "{tag: top_categories, eq: 'shoes,bags'}",
        "{tag: last_seen, lt: '2026-11-01T00:00:00+00:00'}",
        "{tag: avg_rating_90d, le: 2.5}",
    ],
)
def test_values_in_the_domain_are_accepted(tmp_path: Path, when: str) -> None:
    assert len(load_rules(rules_file(tmp_path, when), CATALOGUE).rules) == 2


def test_names_only_check_tags_not_values(tmp_path: Path) -> None:
    path = rules_file(tmp_path, "{tag: churn_band, in: [high, vipp]}")
    assert load_rules(path, {"value_tier", "churn_band"}).rules[1].id == "care_sms"


def test_structural_errors_come_before_value_checks(tmp_path: Path) -> None:
    path = rules_file(tmp_path, "{tag: shoe, eq: vipp}")
    assert error_of(path) == (
        f"{path}: rules[1] (care_sms).when.tag: unknown tag 'shoe' (not in the tag catalogue nor a model tag)"
    )


def test_shipped_rule_files_load_with_values_checked() -> None:
    for path in (ROOT / "deploy/rules.yaml", *sorted((ROOT / "tests/data").glob("*.yaml"))):
        assert load_rules(path, CATALOGUE).rules, path
        assert load_rules(path).rules, path  # the default: the shipped catalogue


def test_parse_rules_with_a_catalogue_checks_values_too() -> None:
    raw = {
        "version": 1,
        "rules": [
            {
                "id": "r",
                "version": 1,
                "when": {"tag": "churn_band", "eq": "hgih"},
                "action": {"type": "care_sms", "params": {"template": "t"}},
            }
        ],
    }
    with pytest.raises(ConfigError, match=r"^x\.yaml: rules\[0\] \(r\)\.when\.eq: 'hgih' is not a churn_band value"):
        parse_rules(raw, Path("x.yaml"), CATALOGUE)


def test_the_model_tags_have_domains_holding_what_the_models_write() -> None:
    assert set(MODEL_TAG_DOMAINS) == set(MODEL_TAGS)
    bands = ChurnBands()
    for step in range(101):
        p = step / 100
        assert MODEL_TAG_DOMAINS["churn_band"].accepts(churn_band(p, bands))
        assert MODEL_TAG_DOMAINS["churn_risk"].accepts(format_risk(p))
    assert {churn_band(p, bands) for p in (0.0, 0.5, 0.99)} == set(MODEL_TAG_DOMAINS["churn_band"].allowed or ())
    assert MODEL_TAG_DOMAINS["behaviour_segment"].accepts("s12")
    assert MODEL_TAG_DOMAINS["churn_model"].accepts("0")
