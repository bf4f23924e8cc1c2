"""Profile tags (``dict[str, str]`` as written to the Redis hash) → numeric feature vectors."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from stream.models.config import FeatureSpec

Vector = dict[str, float]


class FeatureError(ValueError):
    """A tag value could not be parsed as its declared kind (names the tag and the value)."""


def _number(spec: FeatureSpec, text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise FeatureError(f"feature {spec.name!r}: tag {spec.tag!r} = {text!r} is not a number") from exc
    if not math.isfinite(value):
        raise FeatureError(f"feature {spec.name!r}: tag {spec.tag!r} = {text!r} is not finite")
    return value


def _scaled(spec: FeatureSpec, raw: float) -> float:
    if spec.cap is not None:
        raw = min(raw, spec.cap)
    if spec.transform == "log1p":
        raw = math.log1p(max(raw, 0.0))
    return raw / spec.scale


def feature_columns(specs: Iterable[FeatureSpec]) -> tuple[str, ...]:
    """Every column ``build_features`` produces for ``specs``, in order."""
    return tuple(col for spec in specs for col in spec.columns)


def build_features(profile: Mapping[str, str], specs: Iterable[FeatureSpec]) -> Vector:
    """The feature vector of one profile. Always has every column of ``feature_columns(specs)``.

    Pure and deterministic. Raises ``FeatureError`` on a tag value that does not parse as its
    declared kind (e.g. ``"abc"`` for a number); missing tags never raise.
    """
    out: Vector = {}
    for spec in specs:
        text = profile.get(spec.tag)
        if spec.kind == "category":
            for value in spec.categories:
                out[f"{spec.name}={value}"] = 1.0 if text == value else 0.0
        elif spec.kind == "bool":
            if text is None:
                out[spec.name] = spec.missing
            elif text in ("true", "false"):
                out[spec.name] = 1.0 if text == "true" else 0.0
            else:
                raise FeatureError(f"feature {spec.name!r}: tag {spec.tag!r} = {text!r} is not true/false")
        else:
            raw = spec.missing if text is None else _number(spec, text)
            out[spec.name] = _scaled(spec, raw)
            if spec.bins:
                capped = min(raw, spec.cap) if spec.cap is not None else raw
                for edge in spec.bins:
                    out[f"{spec.name}>={edge:g}"] = 1.0 if capped >= edge else 0.0
        if spec.missing_indicator:
            out[f"{spec.name}_missing"] = 1.0 if text is None else 0.0
    return out


def distance(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """Euclidean distance over the union of keys (a missing key counts as 0)."""
    return math.sqrt(sum((a.get(k, 0.0) - b.get(k, 0.0)) ** 2 for k in {*a, *b}))
