"""Model configuration (``stream/models.yaml``), validated strictly at start.

The file declares which profile tags become model features and how each is scaled, plus the
parameters of the segment (online k-means) and churn (online logistic regression) models. A bad
file raises ``ConfigError`` naming the file, the item (by name and position) and the field, the
same way ``stream/tags.yaml`` errors do.
"""

from __future__ import annotations

import hashlib
import math
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from stream import config_files
from stream.tagging.definitions import BUILTIN_TAGS, Duration

DAY = 86400.0


class FeatureSpec(BaseModel):
    """How one profile tag becomes one or more numeric model inputs.

    ``kind``:
      * ``number`` (int / float / ratio tags) and ``money`` (``"12.34"``) — parsed as a float,
        clipped to ``cap``, optionally ``log1p``-transformed, then divided by ``scale``;
      * ``bool`` — ``"true"`` → 1.0, ``"false"`` → 0.0 (no transform);
      * ``category`` — one-hot: one column ``"<name>=<value>"`` per declared category (an
        undeclared value sets no column).
    A missing tag uses ``missing`` (the raw value before transform; for ``category`` all columns
    are 0). ``missing_indicator`` adds a ``"<name>_missing"`` 0/1 column.
    ``high`` / ``low`` are the phrases used in segment descriptions when a segment's centroid is
    far above / below the population; for categories the mapping value is the "high" phrase;
    ``missing_phrase`` describes a segment where the tag is mostly absent (``missing_indicator``).
    ``bins`` (number/money, increasing raw edges) adds one 0/1 column ``"<name>>=<edge>"`` per edge,
    1 when the raw value (after ``cap``, before transform) reaches it: a step function of the value
    next to its linear term, so a linear model can bend (e.g. churn risk against days since the
    last order). Columns of edges no example reached yet stay 0 in training, so their weight stays
    0 and a value beyond what was learned extrapolates along the linear term.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[a-z][a-z0-9_]*$")
    tag: str
    kind: Literal["number", "money", "bool", "category"]
    transform: Literal["none", "log1p"] = "none"
    scale: float = Field(default=1.0, gt=0)
    cap: float | None = None
    missing: float = 0.0
    missing_indicator: bool = False
    categories: dict[str, str] = Field(default_factory=dict)
    high: str | None = None
    low: str | None = None
    missing_phrase: str | None = None
    bins: list[float] = Field(default_factory=list)

    @field_validator("tag")
    @classmethod
    def _builtin(cls, tag: str) -> str:
        if tag not in BUILTIN_TAGS:
            raise ValueError(f"unknown tag {tag!r}: not a built-in tag (see docs/tags.md)")
        return tag

    @model_validator(mode="after")
    def _consistent(self) -> FeatureSpec:
        if self.kind == "category" and not self.categories:
            raise ValueError("a category feature needs 'categories' (value -> description phrase)")
        if self.kind != "category" and self.categories:
            raise ValueError("'categories' is only valid with kind 'category'")
        if self.kind in ("bool", "category") and self.transform != "none":
            raise ValueError(f"kind {self.kind!r} takes no transform")
        if self.bins and (self.kind not in ("number", "money") or self.bins != sorted(set(self.bins))):
            raise ValueError("'bins' needs a number or money feature and strictly increasing edges")
        return self

    @property
    def columns(self) -> tuple[str, ...]:
        """Output column names in a fixed order."""
        cols = [f"{self.name}={c}" for c in self.categories] if self.kind == "category" else [self.name]
        cols += [f"{self.name}>={edge:g}" for edge in self.bins]
        if self.missing_indicator:
            cols.append(f"{self.name}_missing")
        return tuple(cols)


class ReassignPolicy(BaseModel):
    """When a user's segment is recomputed (and the model learns from the user's vector).

    A user is (re)assigned when never assigned; or when at least ``min_interval`` passed since the
    last assignment and the vector moved by at least ``min_change`` (Euclidean, in feature
    space); or unconditionally after ``max_interval``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_interval: Duration = DAY
    max_interval: Duration = 7 * DAY
    min_change: float = Field(default=0.25, ge=0)


class DescribeParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    top: int = Field(default=3, ge=1)
    min_z: float = Field(default=0.5, ge=0)


class SegmentParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    n_clusters: int = Field(default=8, ge=2, le=64)
    halflife: float = Field(default=0.05, gt=0, le=1)
    seed: int = 42
    init_buffer: int = Field(default=200, ge=1)
    publish_every: int = Field(default=500, ge=1)
    rematch_max_distance: float | None = Field(default=None, gt=0)
    size_halflife: float = Field(default=2000.0, gt=0)
    features: list[str] = Field(default_factory=list)
    reassign: ReassignPolicy = Field(default_factory=ReassignPolicy)
    describe: DescribeParams = Field(default_factory=DescribeParams)


class ChurnBands(BaseModel):
    """``p < medium``: low; ``medium <= p < high``: medium; ``p >= high``: high."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    medium: float = Field(default=0.3, gt=0, lt=1)
    high: float = Field(default=0.6, gt=0, lt=1)

    @model_validator(mode="after")
    def _ordered(self) -> ChurnBands:
        if self.medium >= self.high:
            raise ValueError("need medium < high")
        return self


class ChurnParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    horizon: Duration = 90 * DAY
    qualifying: Literal["order", "activity"] = "order"
    eligible: Literal["any", "buyer"] = "buyer"
    snapshot_interval: Duration = 30 * DAY
    features: list[str] = Field(default_factory=list)
    baseline_feature: str = "days_since_last_order"
    learning_rate: float = Field(default=0.05, gt=0)
    l2: float = Field(default=0.0, ge=0)
    auc_window: int = Field(default=5000, ge=10)
    adwin_delta: float = Field(default=0.002, gt=0, lt=1)
    bands: ChurnBands = Field(default_factory=ChurnBands)
    calibration: Literal["platt", "none"] = "platt"

    @property
    def max_pending(self) -> int:
        """Snapshots a user can have waiting for their label at once (one per cadence point in a horizon)."""
        return max(1, math.ceil(self.horizon / self.snapshot_interval))

    @field_validator("horizon", "snapshot_interval")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be positive")
        return value


class ModelsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int
    features: list[FeatureSpec] = Field(min_length=1)
    segments: SegmentParams = Field(default_factory=SegmentParams)
    churn: ChurnParams = Field(default_factory=ChurnParams)

    def specs(self, names: list[str]) -> tuple[FeatureSpec, ...]:
        """The specs named (all of them, in file order, when ``names`` is empty)."""
        if not names:
            return tuple(self.features)
        by_name = {f.name: f for f in self.features}
        return tuple(by_name[n] for n in names)

    @property
    def segment_specs(self) -> tuple[FeatureSpec, ...]:
        return self.specs(self.segments.features)

    @property
    def churn_specs(self) -> tuple[FeatureSpec, ...]:
        return self.specs(self.churn.features)

    def fingerprint(self) -> str:
        """Stable hash of everything that shapes model state (checkpoints of another config are refused)."""
        doc = self.model_dump(mode="json")
        return hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def default_models_path() -> Path:
    return Path(str(resources.files("stream") / "models.yaml"))


def parse_models_config(raw: Any, path: Path | str = "<models config>") -> ModelsConfig:
    """Validate an already-parsed YAML document. Raises ``ConfigError`` naming file, item and field."""
    config = config_files.validate(raw, path, ModelsConfig)
    config_files.check_unique(path, raw, "features", "name", (f.name for f in config.features), "feature")
    columns: set[str] = set()
    for index, spec in enumerate(config.features):
        for col in spec.columns:
            if col in columns:
                raise config_files.error(path, raw, ("features", index), f"column {col!r} is produced twice")
            columns.add(col)
    names = {f.name for f in config.features}
    for section, listed in (("segments", config.segments.features), ("churn", config.churn.features)):
        for index, name in enumerate(listed):
            if name not in names:
                raise config_files.error(path, raw, (section, "features", index), f"unknown feature {name!r}")
    churn_columns = {c for s in config.churn_specs for c in s.columns}
    if config.churn.baseline_feature not in churn_columns:
        baseline = config.churn.baseline_feature
        raise config_files.error(
            path, raw, ("churn", "baseline_feature"), f"{baseline!r} is not a churn feature column"
        )
    return config


def load_models_config(path: Path | None = None) -> ModelsConfig:
    """Load and validate ``stream/models.yaml`` (or ``path``). Raises ``ConfigError``."""
    path = path or default_models_path()
    return parse_models_config(config_files.read_yaml(path, "model definitions"), path)
