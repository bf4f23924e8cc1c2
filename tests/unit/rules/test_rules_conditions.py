"""Rule conditions (every operator and transition, edge triggering) and rule-file validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from stream.rules import Condition, fires, holds, load_rules, tags_referenced
from stream.rules.conditions import compiled, fired_by
from stream.settings import ConfigError

ROOT = Path(__file__).resolve().parents[3]
KNOWN = {"recency_days", "value_tier", "rfm_segment", "churn_band", "churn_risk", "complaints_90d", "cart_abandoned"}


def cond(raw: dict[str, Any]) -> Condition:
    return Condition.model_validate(raw)


def now_holds(raw: dict[str, Any], profile: dict[str, str]) -> bool:
    """Level truth on one profile (previous = current), the same interpreted and compiled."""
    truth = holds(cond(raw), profile, profile)
    assert compiled(cond(raw))(profile, profile) is truth
    return truth


@pytest.mark.parametrize(
    ("raw", "profile", "expected"),
    [
        ({"tag": "value_tier", "eq": "high"}, {"value_tier": "high"}, True),
        ({"tag": "value_tier", "eq": "high"}, {"value_tier": "vip"}, False),
        ({"tag": "value_tier", "ne": "high"}, {"value_tier": "vip"}, True),
        ({"tag": "value_tier", "ne": "high"}, {}, False),  # absent: every comparison is false
        ({"tag": "value_tier", "eq": "high"}, {}, False),
        ({"tag": "recency_days", "gt": 9}, {"recency_days": "10"}, True),  # numeric: 10 > 9 (as text "10" < "9")
        ({"tag": "recency_days", "lt": 9}, {"recency_days": "10"}, False),
        ({"tag": "recency_days", "ge": 14}, {"recency_days": "14"}, True),
        ({"tag": "recency_days", "gt": 14}, {"recency_days": "14"}, False),
        ({"tag": "recency_days", "le": 14}, {"recency_days": "14"}, True),
        ({"tag": "recency_days", "lt": 14}, {"recency_days": "14"}, False),
        ({"tag": "churn_risk", "ge": 0.7}, {"churn_risk": "0.7000"}, True),
        ({"tag": "churn_risk", "eq": 0.5}, {"churn_risk": "0.50"}, True),  # numeric equality
        ({"tag": "churn_risk", "gt": 0.5}, {}, False),
        ({"tag": "rfm_segment", "gt": "B"}, {"rfm_segment": "Champions"}, True),  # not numbers: text order
        ({"tag": "cart_abandoned", "eq": True}, {"cart_abandoned": "true"}, True),  # YAML bool → "true"
        ({"tag": "cart_abandoned", "eq": True}, {"cart_abandoned": "false"}, False),
        ({"tag": "value_tier", "in": ["high", "vip"]}, {"value_tier": "vip"}, True),
        ({"tag": "value_tier", "in": ["high", "vip"]}, {"value_tier": "low"}, False),
        ({"tag": "value_tier", "in": ["high", "vip"]}, {}, False),
        ({"tag": "complaints_90d", "in": [1, 2]}, {"complaints_90d": "2"}, True),
    ],
)
def test_comparisons_and_membership(raw: dict[str, Any], profile: dict[str, str], expected: bool) -> None:
    assert now_holds(raw, profile) is expected


def test_groups() -> None:
    high_recent = {"value_tier": "high", "recency_days": "3"}
    both = {"all": [{"tag": "value_tier", "eq": "high"}, {"tag": "recency_days", "ge": 14}]}
    either = {"any": [{"tag": "value_tier", "eq": "high"}, {"tag": "recency_days", "ge": 14}]}
    negated = {"not": {"tag": "value_tier", "eq": "high"}}
    assert now_holds(both, high_recent) is False
    assert now_holds(either, high_recent) is True
    assert now_holds(negated, high_recent) is False
    assert now_holds(negated, {}) is True  # not(absent == high)


@pytest.mark.parametrize(
    ("raw", "before", "after", "expected"),
    [
        ({"tag": "complaints_90d", "crosses_above": 0}, "0", "1", True),
        ({"tag": "complaints_90d", "crosses_above": 0}, "1", "2", False),  # already above
        ({"tag": "complaints_90d", "crosses_above": 0}, None, "1", True),  # absent before = not above
        ({"tag": "complaints_90d", "crosses_above": 0}, "1", "0", False),
        ({"tag": "complaints_90d", "crosses_above": 0}, "1", None, False),
        ({"tag": "churn_risk", "crosses_above": 0.8}, "0.8", "0.81", True),
        ({"tag": "churn_risk", "crosses_above": 0.8}, "0.79", "0.8", False),  # equal is not above
        ({"tag": "churn_risk", "crosses_below": 0.2}, "0.25", "0.1", True),
        ({"tag": "churn_risk", "crosses_below": 0.2}, "0.1", "0.05", False),
        ({"tag": "churn_risk", "crosses_below": 0.2}, "0.3", "0.2", False),
        ({"tag": "rfm_segment", "enters": ["At Risk", "Can't Lose"]}, "Loyal", "At Risk", True),
        ({"tag": "rfm_segment", "enters": ["At Risk", "Can't Lose"]}, "At Risk", "Can't Lose", False),  # inside set
        ({"tag": "rfm_segment", "enters": ["At Risk", "Can't Lose"]}, None, "Can't Lose", True),
        ({"tag": "rfm_segment", "enters": ["At Risk", "Can't Lose"]}, "At Risk", "At Risk", False),
        ({"tag": "churn_band", "enters": "high"}, "medium", "high", True),
        ({"tag": "churn_band", "enters": "high"}, "high", "medium", False),
        ({"tag": "churn_band", "leaves": "high"}, "high", "medium", True),
        ({"tag": "churn_band", "leaves": "high"}, "high", None, True),  # absent after = left
        ({"tag": "churn_band", "leaves": "high"}, "medium", "low", False),
        ({"tag": "churn_band", "leaves": ["high", "medium"]}, "high", "medium", False),
    ],
)
def test_transitions(raw: dict[str, Any], before: str | None, after: str | None, expected: bool) -> None:
    tag = raw["tag"]
    previous = {} if before is None else {tag: before}
    current = {} if after is None else {tag: after}
    assert holds(cond(raw), previous, current) is expected
    assert compiled(cond(raw))(previous, current) is expected
    assert fires(cond(raw), previous, current) is expected
    assert holds(cond(raw), current, current) is False  # a transition never holds without a change


def test_level_condition_is_edge_triggered() -> None:
    rule = cond({"all": [{"tag": "recency_days", "ge": 14}, {"tag": "value_tier", "in": ["high", "vip"]}]})
    p13 = {"recency_days": "13", "value_tier": "high"}
    p14 = {"recency_days": "14", "value_tier": "high"}
    p15 = {"recency_days": "15", "value_tier": "high"}
    assert fires(rule, p13, p14)  # became true (time-driven: recency grows without an event)
    assert not fires(rule, p14, p15)  # stays true: no re-fire
    assert not fires(rule, p15, {"recency_days": "0", "value_tier": "high"})  # became false
    assert fires(rule, {"recency_days": "15", "value_tier": "medium"}, p15)  # true again via the other leaf
    assert fired_by(rule, {"recency_days": "15", "value_tier": "medium"}, p15) == ["value_tier in ['high', 'vip']"]


def test_transition_combined_with_level() -> None:
    rule = cond({"all": [{"tag": "rfm_segment", "enters": ["At Risk"]}, {"tag": "value_tier", "in": ["high", "vip"]}]})
    assert fires(rule, {"rfm_segment": "Loyal", "value_tier": "vip"}, {"rfm_segment": "At Risk", "value_tier": "vip"})
    # already At Risk when the tier rises: the segment did not enter now, so no firing
    assert not fires(
        rule, {"rfm_segment": "At Risk", "value_tier": "medium"}, {"rfm_segment": "At Risk", "value_tier": "high"}
    )
    either = cond({"any": [{"tag": "complaints_90d", "crosses_above": 0}, {"tag": "nps_class", "enters": "detractor"}]})
    assert fires(either, {"complaints_90d": "0"}, {"complaints_90d": "0", "nps_class": "detractor"})
    assert fired_by(either, {"complaints_90d": "0"}, {"complaints_90d": "1"}) == ["complaints_90d crosses_above 0.0"]


@pytest.mark.parametrize(
    "raw",
    [
        {"tag": "value_tier"},  # no operator
        {"tag": "value_tier", "eq": "a", "ne": "b"},  # two operators
        {"all": [{"tag": "value_tier", "eq": "a"}], "tag": "value_tier"},  # group and test
        {"all": []},
        {"not": {"tag": "churn_band", "enters": "high"}},  # transition under not
        {"tag": "value_tier", "in": []},
    ],
)
def test_malformed_conditions_are_rejected(raw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        cond(raw)


# --- rule files ---------------------------------------------------------------------------------

RULE = """
  - id: {rid}
    version: 1
    when: {when}
    action: {action}
"""


def write_rules(tmp_path: Path, *rules: str, header: str = "version: 1\nrules:\n") -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(header + "".join(rules))
    return path


def rule(
    rid: str = "r1",
    when: str = "{tag: value_tier, eq: high}",
    action: str = "{type: coupon, params: {campaign: c, value: 5}}",
) -> str:
    return RULE.format(rid=rid, when=when, action=action)


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as err:
        load_rules(path, KNOWN)
    return str(err.value)


def test_unknown_tag_names_file_rule_and_field(tmp_path: Path) -> None:
    path = write_rules(tmp_path, rule("ok"), rule("bad", when="{all: [{tag: value_tier, eq: a}, {tag: shoe, eq: 9}]}"))
    assert error_of(path) == (
        f"{path}: rules[1] (bad).when.all[1].tag: unknown tag 'shoe' (not in the tag catalogue nor a model tag)"
    )


def test_unknown_action_type(tmp_path: Path) -> None:
    path = write_rules(tmp_path, rule("fax_them", action="{type: fax, params: {}}"))
    assert error_of(path) == f"{path}: rules[0] (fax_them).action: unknown action type 'fax' (known: care_sms, coupon)"


def test_bad_action_params(tmp_path: Path) -> None:
    message = error_of(write_rules(tmp_path, rule(action="{type: coupon, params: {campaign: c, value: -1}}")))
    assert message.endswith(": rules[0] (r1).action: params.value: Input should be greater than 0")
    message = error_of(write_rules(tmp_path, rule(action="{type: care_sms, params: {template: t, colour: red}}")))
    assert "params.colour" in message


def test_extra_field(tmp_path: Path) -> None:
    message = error_of(write_rules(tmp_path, rule() + "    colour: red\n"))
    assert message.endswith(": rules[0] (r1).colour: Extra inputs are not permitted")


def test_bad_operator(tmp_path: Path) -> None:
    path = write_rules(tmp_path, rule("op", when="{tag: recency_days, gte: 14}"))
    assert error_of(path).startswith(
        f"{path}: rules[0] (op).when.gte: Extra inputs are not permitted (operators: eq, ne, gt, ge, lt, le, "
    )


def test_other_validation_errors(tmp_path: Path) -> None:
    assert ": rules[0] (r1).version: Input should be a valid integer" in error_of(
        write_rules(tmp_path, rule().replace("version: 1", "version: x"))
    )
    assert error_of(write_rules(tmp_path, rule("same"), rule("same"))).endswith(
        ": rules[1] (same).id: duplicate rule id 'same'"
    )
    # the union's other alternative ('off') is not reported when the mapping explains the problem
    assert error_of(write_rules(tmp_path, rule() + "    quiet_hours: {start: '25:00', end: '08:00'}\n")).endswith(
        ": rules[0] (r1).quiet_hours.start: expected HH:MM (00:00-23:59), got '25:00'"
    )
    assert ": rules[0] (r1).holdout: Input should be less than 1" in error_of(
        write_rules(tmp_path, rule() + "    holdout: 1.5\n")
    )
    assert error_of(write_rules(tmp_path, rule(), header="version: 1\nsettings: {daily_cap: -1}\nrules:\n")).endswith(
        ": settings.daily_cap: Input should be greater than or equal to 0"
    )
    bad_yaml = tmp_path / "broken.yaml"
    bad_yaml.write_text("rules: [\n")
    assert f"{bad_yaml}: line 2, column 1: invalid YAML: " in error_of(bad_yaml)
    assert f"{tmp_path / 'missing.yaml'}: cannot read rules: " in error_of(tmp_path / "missing.yaml")


def test_shipped_rules_load() -> None:
    rules = load_rules(ROOT / "deploy/rules.yaml")
    ids = [r.id for r in rules.rules]
    assert ids == [
        "winback_at_risk",
        "churn_high_care_sms",
        "lapsing_high_value_sms",
        "cart_abandoned_coupon",
        "champions_thank_you",
        "care_after_complaint",
    ]
    assert tags_referenced(rules) == {
        "rfm_segment",
        "value_tier",
        "churn_band",
        "recency_days",
        "cart_abandoned",
        "complaints_90d",
        "nps_class",
    }
    winback = rules.rules[0]
    assert winback.action.type == "coupon" and winback.action.params == {"campaign": "winback", "value": 15.0}
    assert winback.cooldown == 30 * 86400 and winback.holdout == 0.1
    assert winback.action.topic_suffix == "triggers.coupon"
    assert rules.rules[1].channel == "sms" and rules.rules[1].action.topic_suffix == "triggers.care_sms"
    assert rules.rules[3].channel == "push"  # the coupon type's default channel


def test_unquoted_off_disables_quiet_hours(tmp_path: Path) -> None:
    path = write_rules(tmp_path, rule() + "    quiet_hours: off\n")  # YAML reads `off` as false
    assert load_rules(path, KNOWN).rules[0].quiet_hours == "off"
