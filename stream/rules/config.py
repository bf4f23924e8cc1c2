"""Rule files: the YAML model, strict validation and loading.

A bad file raises ``ConfigError`` naming the file, the rule (id and item index) and the field,
before the service consumes anything.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from stream import config_files
from stream.errors import ConfigError
from stream.rules.actions import ActionSpec
from stream.rules.conditions import OPERATORS, Condition, tags_of
from stream.tagging.definitions import BUILTIN_TAGS, Duration, TagCatalogue, ValueDomain, load_catalogue

DAY = 86400.0
DEFAULT_RULES_PATH = Path("deploy/rules.yaml")

MODEL_TAGS: dict[str, str] = {
    "churn_risk": "float in [0, 1]",
    "churn_band": "low | medium | high",
    "behaviour_segment": "segment id (string)",
}

# The value domains of the model tags (stream/models/runtime.py MODEL_TAGS), which rule values are
# checked against like the catalogue's tags.
MODEL_TAG_DOMAINS: dict[str, ValueDomain] = {
    "churn_risk": ValueDomain(type="ratio", min=0.0, max=1.0),
    "churn_band": ValueDomain(type="str", values=("low", "medium", "high")),
    "behaviour_segment": ValueDomain(type="str", pattern=r"s[0-9]+", pattern_text="segment ids s1, s2, ..."),
    "churn_model": ValueDomain(type="int", min=0.0),
}

# What rules are checked against: a catalogue (tag names and value domains, plus the model tags) or
# just the tag names a condition may reference (values unchecked).
KnownTags = TagCatalogue | set[str] | frozenset[str]

_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def default_known_tags() -> set[str]:
    """Tags a rule may reference: the built-in catalogue plus the model tags."""
    return set(BUILTIN_TAGS) | set(MODEL_TAGS)


def _minutes(clock: str) -> int:
    match = _CLOCK.match(clock)
    if not match:
        raise ValueError(f"expected HH:MM (00:00-23:59), got {clock!r}")
    return int(match.group(1)) * 60 + int(match.group(2))


class QuietHours(BaseModel):
    """Local-time window ``[start, end)`` in which nothing is sent; wraps midnight when start > end."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: str
    end: str

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, value: str) -> str:
        _minutes(value)
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHours:
        if self.start == self.end:
            raise ValueError("start and end must differ")
        return self

    def contains(self, minute_of_day: int) -> bool:
        """True when local minute-of-day (0..1439) is inside the window."""
        start, end = _minutes(self.start), _minutes(self.end)
        if start < end:
            return start <= minute_of_day < end
        return minute_of_day >= start or minute_of_day < end


class DeliverySettings(BaseModel):
    """File-wide delivery limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    daily_cap: int | None = Field(default=None, ge=0, description="sends per user per channel per local day")
    channel_caps: dict[str, int] = Field(default_factory=dict, description="per-channel overrides of daily_cap")
    quiet_hours: QuietHours | None = None
    default_conversion_window: Duration = 7 * DAY

    def cap_for(self, channel: str) -> int | None:
        """The daily cap for ``channel`` (None: unlimited)."""
        return self.channel_caps.get(channel, self.daily_cap)


class Rule(BaseModel):
    """One automation rule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=64)
    version: int = Field(ge=1)
    description: str = ""
    enabled: bool = True
    when: Condition
    action: ActionSpec
    cooldown: Duration | None = Field(default=None, gt=0)
    holdout: float = Field(default=0.0, ge=0.0, lt=1.0)
    quiet_hours: QuietHours | Literal["off"] | None = None
    conversion_window: Duration | None = Field(default=None, gt=0)

    @field_validator("quiet_hours", mode="before")
    @classmethod
    def _off(cls, value: Any) -> Any:
        """YAML reads an unquoted ``off`` as false: both mean no quiet hours for this rule."""
        return "off" if value is False else value

    @property
    def firing_window(self) -> float:
        """Seconds per firing window for trigger ids: the cooldown, or one day."""
        return self.cooldown or DAY

    @property
    def channel(self) -> str:
        return self.action.channel


class RuleSet(BaseModel):
    """A validated rule file. Rules are evaluated in file order (earlier rules use the cap first)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int
    settings: DeliverySettings = Field(default_factory=DeliverySettings)
    rules: tuple[Rule, ...]

    @property
    def active(self) -> tuple[Rule, ...]:
        """The enabled rules, in file order (computed once per rule set, see ``per_rule_set``)."""
        return _active(self)

    def quiet_hours_for(self, rule: Rule) -> QuietHours | None:
        """The rule's quiet hours: its own, none when ``off``, else the file-wide setting."""
        if rule.quiet_hours == "off":
            return None
        return rule.quiet_hours or self.settings.quiet_hours

    def conversion_window_for(self, rule: Rule) -> float:
        return rule.conversion_window or self.settings.default_conversion_window


_R = TypeVar("_R", bound="RuleSet | None")
_T = TypeVar("_T")


def per_rule_set(derive: Callable[[_R], _T]) -> Callable[[_R], _T]:
    """``derive`` computed once per rule set object (a ``RuleSet`` is immutable, and a worker calls
    this per user step). Keyed by identity, not by value (hashing a rule set walks every rule);
    the cache holds each rule set it saw, so an id is never reused for another."""
    cache: dict[int, tuple[_R, _T]] = {}

    def cached(rules: _R) -> _T:
        hit = cache.get(id(rules))
        if hit is None or hit[0] is not rules:
            hit = cache[id(rules)] = (rules, derive(rules))
        return hit[1]

    return cached


@per_rule_set
def _active(rules: RuleSet) -> tuple[Rule, ...]:
    return tuple(r for r in rules.rules if r.enabled)


def tags_referenced(rules: RuleSet) -> set[str]:
    """Tags read by enabled rules' conditions: the worker must keep their previous values per user."""
    return set().union(*(tags_of(r.when) for r in rules.active))


def _operators_hint(loc: config_files.Loc, kind: str) -> str | None:
    """An unknown key in a condition is most often a mistyped operator: list the ones there are."""
    if kind == "extra_forbidden" and "when" in loc:
        return f"(operators: {', '.join(OPERATORS)}; groups: all, any, not)"
    return None


def tag_domains(catalogue: TagCatalogue) -> dict[str, ValueDomain]:
    """The value domain of every tag a rule may read: the catalogue's tags and the model tags."""
    return {**MODEL_TAG_DOMAINS, **{t.name: t for t in catalogue.tags}}


def _leaf_problem(cond: Condition, op: str, domain: ValueDomain) -> tuple[str, ...]:
    """The problems of one tag test's values against its tag's domain (empty: all allowed)."""
    operand = cond.operand(op)
    if isinstance(operand, float):  # crosses_above / crosses_below: a number by their type
        if not domain.numeric:
            return (f"{op} compares numbers, but {cond.tag} is a {domain.type} tag (allowed: {domain.describe()})",)
        values: tuple[str, ...] = (_number_text(operand),)
    else:
        values = operand if isinstance(operand, tuple) else (operand,)
    return tuple(
        f"{value!r} is not a {cond.tag} value (allowed: {domain.describe()})"
        for value in values
        if not domain.accepts(value)
    )


def _number_text(x: float) -> str:
    """A ``crosses_*`` threshold in the profile's number form (``0`` for ``0.0``)."""
    return str(int(x)) if x.is_integer() else str(x)


def _value_errors(
    cond: Condition, loc: tuple[str | int, ...], domains: dict[str, ValueDomain]
) -> list[tuple[tuple[str | int, ...], str]]:
    """(location, problem) for every condition value outside its tag's domain, depth first."""
    if cond.tag is not None and cond.operator is not None:
        domain = domains.get(cond.tag)
        if domain is None:
            return []
        return [((*loc, cond.operator), problem) for problem in _leaf_problem(cond, cond.operator, domain)]
    out: list[tuple[tuple[str | int, ...], str]] = []
    if cond.not_ is not None:
        out += _value_errors(cond.not_, (*loc, "not"), domains)
    for group in ("all", "any"):
        for index, child in enumerate(cond.operand(group) or ()):
            out += _value_errors(child, (*loc, group, index), domains)
    return out


def check_values(raw: Any, path: Path | str, rules: RuleSet, catalogue: TagCatalogue) -> None:
    """Refuse condition values outside their tag's domain: a categorical value not in the tag's
    values, a number outside its range, text where a number is compared. One line per problem::

        rules.yaml: rules[1] (care_sms).when.all[0].in: 'vipp' is not a churn_band value (allowed: low, medium, high)
    """
    domains = tag_domains(catalogue)
    lines = [
        config_files.line(path, raw, loc, problem)
        for index, rule in enumerate(rules.rules)
        for loc, problem in _value_errors(rule.when, ("rules", index, "when"), domains)
    ]
    if lines:
        raise ConfigError("\n".join(lines))


def parse_rules(raw: Any, path: Path, known_tags: KnownTags) -> RuleSet:
    """Validate already-parsed YAML; errors name ``path``, rule and field (``ConfigError``).

    With a ``TagCatalogue`` the tags a condition may read are the catalogue's and the model tags,
    and every condition value is checked against its tag's domain (``check_values``); with a set
    of names only the tag names are checked.
    """
    catalogue = known_tags if isinstance(known_tags, TagCatalogue) else None
    names = set(tag_domains(catalogue)) if catalogue is not None else known_tags
    context = {"known_tags": names}
    rules = config_files.validate(raw, path, RuleSet, context=context, hint=_operators_hint)
    config_files.check_unique(path, raw, "rules", "id", (r.id for r in rules.rules), "rule id")
    if catalogue is not None:
        check_values(raw, path, rules, catalogue)
    return rules


def load_rules(path: Path, known_tags: KnownTags | None = None) -> RuleSet:
    """Load and validate a rule file against ``known_tags`` (see ``parse_rules``); by default the
    shipped catalogue (``load_catalogue()``), values checked.

    Raises ``ConfigError`` naming file, rule (id and item index) and field, one line per problem.
    The worker's hot reload loads with this function too: a change with a bad value is rejected.
    """
    raw = config_files.read_yaml(path, "rules")
    return parse_rules(raw, path, load_catalogue() if known_tags is None else known_tags)
