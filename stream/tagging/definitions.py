"""Tag catalogue and parameters loaded from YAML, validated strictly at start.

A bad file stops the service before it consumes anything, with an error naming the file, the
tag (by name and position) and the field.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from stream import config_files

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

    @field_validator("currency_rates")
    @classmethod
    def _positive_rates(cls, rates: dict[str, float]) -> dict[str, float]:
        for code, rate in rates.items():
            if not re.fullmatch(r"[A-Z]{3}", code) or rate <= 0:
                raise ValueError(f"currency {code!r}: need a 3-letter code and a positive rate")
        return rates


class TagDef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    level: Literal["L1", "L2", "L3"]
    category: str
    owner: str
    description: str
    type: Literal["str", "int", "float", "bool", "money", "ratio", "time"]
    unit: str | None = None
    audience: bool = False

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
        return frozenset(t.name for t in self.tags)

    @property
    def audience_tags(self) -> frozenset[str]:
        return frozenset(t.name for t in self.tags if t.audience)


def default_tags_path() -> Path:
    return Path(str(resources.files("stream") / "tags.yaml"))


def load_catalogue(path: Path | None = None) -> TagCatalogue:
    """Load and validate a tag catalogue. Raises ``ConfigError`` naming file, tag and field."""
    path = path or default_tags_path()
    raw = config_files.read_yaml(path, "tag definitions")
    catalogue = config_files.validate(raw, path, TagCatalogue)
    config_files.check_unique(path, raw, "tags", "name", (t.name for t in catalogue.tags), "tag")
    return catalogue
