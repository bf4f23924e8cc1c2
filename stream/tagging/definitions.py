"""Tag catalogue and parameters loaded from YAML, validated strictly at start.

A bad file stops the service before it consumes anything, with an error naming the file, the
tag (by name and position) and the field.
"""

from __future__ import annotations

import re
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from stream import config_files
from stream.tagging.lifecycle import LIFETIME_TAGS

BUILTIN_TAGS: tuple[str, ...] = (
    "region",
    "age_band",
    "member_level",
    "signup_channel",
    "timezone",
    "first_seen",
    "last_seen",
    "recency_days",
    "events_7d",
    "events_30d",
    "active_days_7d",
    "active_days_30d",
    "activity_level",
    "activity_trend",
    "preferred_daypart",
    "night_owl",
    "top_categories",
    "funnel_stage_7d",
    "cart_abandoned",
    "frequency_30d",
    "frequency_90d",
    "monetary_30d",
    "monetary_90d",
    "avg_order_value_90d",
    "refund_rate_90d",
    "days_since_last_order",
    "value_tier",
    "r_score",
    "f_score",
    "m_score",
    "rfm_segment",
    "avg_rating_90d",
    "complaints_90d",
    "nps_class",
    "satisfaction",
    *LIFETIME_TAGS,
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any) -> float:
    """``90`` (seconds), ``"90s"``, ``"15m"``, ``"6h"``, ``"30d"`` → seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and (match := _DURATION.match(value)):
        return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    raise ValueError(f"not a duration: {value!r} (use seconds or e.g. '6h', '30d')")


Duration = Annotated[float, BeforeValidator(parse_duration)]


class LifecycleParams(BaseModel):
    """Thresholds of ``lifecycle_stage`` (docs/tags.md, "Lifecycle"), in whole days."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    new_days: int = Field(default=30, ge=1)
    lapsing_overdue: float = Field(default=2.0, gt=0)
    lapsing_days: int = Field(default=45, ge=1)
    lapsed_days: int = Field(default=90, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> LifecycleParams:
        if not self.lapsing_days < self.lapsed_days:
            raise ValueError("lapsing_days must be smaller than lapsed_days")
        return self


class ValueTiers(BaseModel):
    """Lower bounds of ``value_tier`` on the 90-day order value, in the base currency."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vip: float = Field(default=1000.0, gt=0)
    high: float = Field(default=300.0, gt=0)
    medium: float = Field(default=50.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> ValueTiers:
        if not self.vip > self.high > self.medium:
            raise ValueError("need vip > high > medium")
        return self

    @property
    def vip_cents(self) -> int:
        return round(self.vip * 100)

    @property
    def high_cents(self) -> int:
        return round(self.high * 100)

    @property
    def medium_cents(self) -> int:
        return round(self.medium * 100)


class TagParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    base_currency: str = "USD"
    currency_rates: dict[str, float] = Field(default_factory=lambda: {"USD": 1.0})
    cart_abandon_after: Duration = 6 * 3600.0
    cart_abandon_expiry: Duration = 7 * 86400.0
    interest_half_life: Duration = 14 * 86400.0
    category_weights: dict[str, float] = Field(
        default_factory=lambda: {"page_view": 1.0, "search": 1.0, "add_to_cart": 3.0, "order_paid": 5.0}
    )
    max_categories: int = Field(default=20, ge=3)
    dedupe_window_events: int = Field(default=32, ge=0)
    lifecycle: LifecycleParams = Field(default_factory=LifecycleParams)
    value_tiers: ValueTiers = Field(default_factory=ValueTiers)

    @field_validator("currency_rates")
    @classmethod
    def _positive_rates(cls, rates: dict[str, float]) -> dict[str, float]:
        for code, rate in rates.items():
            if not re.fullmatch(r"[A-Z]{3}", code) or rate <= 0:
                raise ValueError(f"currency {code!r}: need a 3-letter code and a positive rate")
        return rates


TagType = Literal["str", "int", "float", "bool", "money", "ratio", "time"]
NUMERIC_TYPES: frozenset[str] = frozenset({"int", "float", "money", "ratio"})
BOOL_VALUES: tuple[str, ...] = ("true", "false")


def _value_texts(value: Any) -> Any:
    """YAML scalars → the profile's strings (``true``/``false`` for booleans, as the engine writes)."""
    if not isinstance(value, list | tuple):
        return value
    return tuple(("true" if v else "false") if isinstance(v, bool) else str(v) for v in value)


class ValueDomain(BaseModel):
    """The values a profile field can hold, which a rule's condition values are checked against.

    * categorical: ``type: str`` with ``values`` (``bool`` is always ``true``/``false``), or a
      ``pattern`` (a regular expression every value matches, shown as ``pattern_text``);
    * numeric (``int``, ``float``, ``money``, ``ratio``): any decimal number, within ``min``/``max``
      when given;
    * ``time``: an ISO 8601 time (the profile's form, compared as text);
    * ``str`` without ``values`` or ``pattern``: free text (any value).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: TagType
    values: Annotated[tuple[str, ...] | None, BeforeValidator(_value_texts)] = None
    pattern: str | None = None
    pattern_text: str | None = None
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ValueDomain:
        if self.values is not None:
            if self.type not in ("str", "bool"):
                raise ValueError(f"values: only str and bool tags have a list of values, not {self.type}")
            if not self.values or len(set(self.values)) != len(self.values):
                raise ValueError("values: need at least one value, each once")
            if self.type == "bool" and set(self.values) != set(BOOL_VALUES):
                raise ValueError("values: a bool tag's values are true and false")
        if self.pattern is not None and (self.type != "str" or self.values is not None):
            raise ValueError("pattern: only for a str tag without values")
        if (self.min is not None or self.max is not None) and self.type not in NUMERIC_TYPES:
            raise ValueError(f"min/max: only numeric tags ({', '.join(sorted(NUMERIC_TYPES))}) have a range")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min must not exceed max")
        return self

    @property
    def allowed(self) -> tuple[str, ...] | None:
        """The finite set of values, or None when the domain is not an enumeration."""
        return BOOL_VALUES if self.type == "bool" and self.values is None else self.values

    @property
    def numeric(self) -> bool:
        return self.type in NUMERIC_TYPES

    def describe(self) -> str:
        """The allowed values in words: ``low, medium, high``, ``numbers from 1 to 5``, ``numbers >= 0``."""
        if self.allowed is not None:
            return ", ".join(self.allowed)
        if self.pattern is not None:
            return self.pattern_text or f"text matching {self.pattern}"
        if self.numeric:
            if self.min is not None and self.max is not None:
                return f"numbers from {_number(self.min)} to {_number(self.max)}"
            if self.min is not None:
                return f"numbers >= {_number(self.min)}"
            if self.max is not None:
                return f"numbers <= {_number(self.max)}"
            return "numbers"
        if self.type == "time":
            return "ISO 8601 times, e.g. 2026-01-31T00:00:00+00:00"
        return "any text"

    def accepts(self, value: str) -> bool:
        """True when ``value`` (a profile string) belongs to the domain."""
        allowed = self.allowed
        if allowed is not None:
            return value in allowed
        if self.pattern is not None:
            return re.fullmatch(self.pattern, value) is not None
        if self.numeric:
            number = _as_number(value)
            return (
                number is not None
                and (self.min is None or number >= self.min)
                and (self.max is None or number <= self.max)
            )
        if self.type == "time":
            try:
                datetime.fromisoformat(value)
            except ValueError:
                return False
        return True


_DECIMAL = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")  # as rules compare numbers


def _as_number(value: str) -> float | None:
    return float(value) if _DECIMAL.match(value) else None


def _number(x: float) -> str:
    return str(int(x)) if x.is_integer() else str(x)


class Label(BaseModel):
    """A tag's display name per language (``en`` is the default, ``zh`` optional)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    en: str = Field(min_length=1)
    zh: str | None = Field(default=None, min_length=1)


class TagDef(ValueDomain):
    name: str
    level: Literal["L1", "L2", "L3"]
    category: str
    owner: str
    description: str
    unit: str | None = None
    audience: bool = False
    label: Label | None = None  # display names for dashboards; None: the name itself

    @field_validator("name")
    @classmethod
    def _builtin(cls, name: str) -> str:
        if name not in BUILTIN_TAGS:
            raise ValueError(f"unknown tag {name!r}: no built-in computation (see docs/tags.md)")
        return name


class TagCatalogue(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int
    params: TagParams = Field(default_factory=TagParams)
    tags: list[TagDef]

    @property
    def names(self) -> frozenset[str]:
        """Every tag name (computed once per catalogue: it is read per evaluation)."""
        return _derived(self)[0]

    def domain(self, name: str) -> TagDef | None:
        return next((t for t in self.tags if t.name == name), None)

    @property
    def audience_tags(self) -> frozenset[str]:
        """The tags users are grouped by (computed once per catalogue, like ``names``)."""
        return _derived(self)[1]


# id(catalogue) -> (catalogue, names, audience tags). Keyed by identity (a catalogue is frozen; a
# copy is another object); an entry holds its catalogue, so its id is not reused for another.
# Catalogues come from files (start-up, reloads): a bound keeps a long-lived process from growing.
_DERIVED: dict[int, tuple[TagCatalogue, frozenset[str], frozenset[str]]] = {}
_DERIVED_MAX = 64


def _derived(catalogue: TagCatalogue) -> tuple[frozenset[str], frozenset[str]]:
    hit = _DERIVED.get(id(catalogue))
    if hit is None or hit[0] is not catalogue:
        if len(_DERIVED) >= _DERIVED_MAX:
            _DERIVED.clear()
        names = frozenset(t.name for t in catalogue.tags)
        audience = frozenset(t.name for t in catalogue.tags if t.audience)
        hit = _DERIVED[id(catalogue)] = (catalogue, names, audience)
    return hit[1], hit[2]


def default_tags_path() -> Path:
    return Path(str(resources.files("stream") / "tags.yaml"))


def load_catalogue(path: Path | None = None) -> TagCatalogue:
    """Load and validate a tag catalogue. Raises ``ConfigError`` naming file, tag and field."""
    path = path or default_tags_path()
    raw = config_files.read_yaml(path, "tag definitions")
    catalogue = config_files.validate(raw, path, TagCatalogue)
    config_files.check_unique(path, raw, "tags", "name", (t.name for t in catalogue.tags), "tag")
    return catalogue
