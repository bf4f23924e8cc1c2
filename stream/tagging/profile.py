"""Typed values of a profile hash: what a reader (CLI, HTTP API, export) should make of each field.

The Redis hash stores every value as a string (docs/redis-keys.md). ``type_profile`` turns a hash
into JSON-ready values using the tag catalogue's types: ``int`` -> number, ``float``/``money``/
``ratio`` -> number, ``bool`` -> boolean, ``time`` -> ISO 8601 (UTC); the model tags and the meta
fields (``_evaluated_at``...) have fixed types here. A value that does not parse as its type, and a
field nobody declared, stay strings: typing never loses a value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from stream.tagging.definitions import TagCatalogue

FieldType = Literal["str", "int", "float", "bool", "money", "ratio", "time"]


@dataclass(frozen=True)
class FieldSpec:
    """A profile field that is not a catalogue tag."""

    type: FieldType
    description: str
    unit: str | None = None


# Written by the models (stream/models/runtime.py MODEL_TAGS) next to the catalogue's tags.
MODEL_FIELDS: dict[str, FieldSpec] = {
    "churn_risk": FieldSpec("ratio", "Probability of no qualifying activity within the churn horizon"),
    "churn_band": FieldSpec("str", "low / medium / high from churn_risk (bands in models.yaml)"),
    "behaviour_segment": FieldSpec("str", "Behaviour segment id (see `portrait models segments`)"),
    "churn_model": FieldSpec("int", "Version of the churn model that scored churn_risk (learned examples)"),
}

# Written with every profile (stream/core/pipeline.py).
META_FIELDS: dict[str, FieldSpec] = {
    "_evaluated_at": FieldSpec("time", "the clock time the tags are exact at"),
    "_updated_at": FieldSpec("time", "wall-clock time the profile was written"),
    "_rfm_version": FieldSpec("int", "version of the RFM thresholds used"),
    "_tags_version": FieldSpec("int", "version of the tag catalogue the tags were computed with"),
    "_unavailable": FieldSpec("str", "tags not computable yet: their stored inputs do not reach back far enough"),
}


def field_types(catalogue: TagCatalogue) -> dict[str, FieldType]:
    """The type of every known profile field: catalogue tags, model tags and meta fields."""
    types: dict[str, FieldType] = {name: spec.type for name, spec in (MODEL_FIELDS | META_FIELDS).items()}
    types.update({tag.name: tag.type for tag in catalogue.tags})
    return types


def to_iso(epoch: float) -> str:
    """Epoch seconds -> ISO 8601 in UTC (``2026-11-30T12:00:00+00:00``; milliseconds when present)."""
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.isoformat(timespec="milliseconds" if moment.microsecond else "seconds")


def typed_value(kind: str, raw: str) -> Any:
    """One stored string as its type (see the module doc); unparseable values stay strings."""
    text = raw.strip()
    try:
        if kind == "int":
            return int(text)
        if kind in ("float", "money", "ratio"):
            number = float(text)
            return number if math.isfinite(number) else None
        if kind == "time":
            try:
                return to_iso(float(text))
            except ValueError:
                return datetime.fromisoformat(text).isoformat()
    except (ValueError, OverflowError, OSError):
        return raw
    if kind == "bool":
        lowered = text.lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
    return raw


def type_profile(profile: Mapping[str, str], catalogue: TagCatalogue) -> dict[str, Any]:
    """A profile hash (strings) as typed, JSON-ready values, keys unchanged.

    >>> from stream.tagging.definitions import load_catalogue
    >>> type_profile({"recency_days": "3", "night_owl": "true", "_evaluated_at": "0.000"}, load_catalogue())
    {'recency_days': 3, 'night_owl': True, '_evaluated_at': '1970-01-01T00:00:00+00:00'}
    """
    types = _types_of(catalogue)
    return {name: typed_value(types.get(name, "str"), value) for name, value in profile.items()}


_last_types: tuple[TagCatalogue, dict[str, FieldType]] | None = None


def _types_of(catalogue: TagCatalogue) -> dict[str, FieldType]:
    """``field_types`` of the catalogue in use, built once per catalogue object (a batch of 1,000
    profiles used to build it 1,000 times; a reload brings a new object)."""
    global _last_types
    if _last_types is None or _last_types[0] is not catalogue:
        _last_types = (catalogue, field_types(catalogue))
    return _last_types[1]


def catalogue_rows(catalogue: TagCatalogue) -> list[dict[str, Any]]:
    """Every profile field a worker writes: the catalogue's tags, then the model tags."""
    rows: list[dict[str, Any]] = [
        {
            "name": t.name,
            "level": t.level,
            "category": t.category,
            "type": t.type,
            "unit": t.unit,
            "audience": t.audience,
            "owner": t.owner,
            "description": t.description,
        }
        for t in sorted(catalogue.tags, key=lambda t: (t.level, t.category, t.name))
    ]
    types = field_types(catalogue)
    rows.extend(
        {
            "name": name,
            "level": "model",
            "category": "models",
            "type": types[name],
            "unit": spec.unit,
            "audience": name in ("churn_band", "behaviour_segment"),
            "owner": "models",
            "description": spec.description,
        }
        for name, spec in MODEL_FIELDS.items()
    )
    return rows
