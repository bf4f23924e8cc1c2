"""Rule files: the YAML model, strict validation and loading.

A bad file raises ``ConfigError`` naming the file, the rule (id and item index) and the field,
before the service consumes anything.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from stream import config_files
from stream.rules.actions import ActionSpec
from stream.rules.conditions import OPERATORS, Condition, tags_of
from stream.tagging.definitions import BUILTIN_TAGS, Duration

DAY = 86400.0
DEFAULT_RULES_PATH = Path("deploy/rules.yaml")

MODEL_TAGS: dict[str, str] = {
    "churn_risk": "float in [0, 1]",
    "churn_band": "low | medium | high",
    "behaviour_segment": "segment id (string)",
}

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
        return tuple(r for r in self.rules if r.enabled)

    def quiet_hours_for(self, rule: Rule) -> QuietHours | None:
        """The rule's quiet hours: its own, none when ``off``, else the file-wide setting."""
        if rule.quiet_hours == "off":
            return None
        return rule.quiet_hours or self.settings.quiet_hours

    def conversion_window_for(self, rule: Rule) -> float:
        return rule.conversion_window or self.settings.default_conversion_window


def tags_referenced(rules: RuleSet) -> set[str]:
    """Tags read by enabled rules' conditions: the worker must keep their previous values per user."""
    return set().union(*(tags_of(r.when) for r in rules.active))


def _operators_hint(loc: config_files.Loc, kind: str) -> str | None:
    """An unknown key in a condition is most often a mistyped operator: list the ones there are."""
    if kind == "extra_forbidden" and "when" in loc:
        return f"(operators: {', '.join(OPERATORS)}; groups: all, any, not)"
    return None


def parse_rules(raw: Any, path: Path, known_tags: set[str] | frozenset[str]) -> RuleSet:
    """Validate already-parsed YAML; errors name ``path``, rule and field (``ConfigError``)."""
    context = {"known_tags": known_tags}
    rules = config_files.validate(raw, path, RuleSet, context=context, hint=_operators_hint)
    config_files.check_unique(path, raw, "rules", "id", (r.id for r in rules.rules), "rule id")
    return rules


def load_rules(path: Path, known_tags: set[str] | frozenset[str] | None = None) -> RuleSet:
    """Load and validate a rule file. ``known_tags`` defaults to ``default_known_tags()``.

    Raises ``ConfigError`` naming file, rule (id and item index) and field.
    """
    raw = config_files.read_yaml(path, "rules")
    return parse_rules(raw, path, default_known_tags() if known_tags is None else known_tags)
