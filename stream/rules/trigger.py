"""The trigger payload published for a firing, its deterministic id and holdout assignment."""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from stream.rules.actions import ParamValue

TRIGGER_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "portrait:v1:triggers")
SCHEMA_FILE = "trigger.schema.json"


class ValueChange(BaseModel):
    """A referenced tag's value before and after the evaluation (None: absent)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    previous: str | None
    current: str | None


class Explanation(BaseModel):
    """Why the rule fired."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    condition: str = Field(description="the rule's condition in readable form")
    fired_by: list[str] = Field(description="the tag tests that became true on this evaluation (the edge)")
    values: dict[str, ValueChange] = Field(description="every tag the rule references, previous and current")


class TriggerAction(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    params: dict[str, ParamValue]


class Trigger(BaseModel):
    """One firing of a rule for a user, as published on the action's trigger topic.

    ``trigger_id`` is the same for the same rule id + version, user and firing window, so
    consumers deduplicate replays and crash-restarts by it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    trigger_id: str
    rule_id: str
    rule_version: int
    user_id: str
    action: TriggerAction
    channel: str
    event_time: float = Field(description="the clock time of the evaluation (epoch seconds)")
    explanation: Explanation


def firing_window(now: float, window_s: float) -> int:
    """Index of the firing window containing ``now``: ``floor(now / window_s)``."""
    return math.floor(now / window_s)


def trigger_id(rule_id: str, rule_version: int, user_id: str, window: int) -> str:
    """uuid5 over (rule id, version, user, window index): a pure function of the firing's identity."""
    return str(uuid.uuid5(TRIGGER_NAMESPACE, f"{rule_id}\x1f{rule_version}\x1f{user_id}\x1f{window}"))


def holdout_point(user_id: str, rule_id: str) -> float:
    """Uniform point in [0, 1) from sha256 of (rule id, user): stable across processes and versions."""
    digest = hashlib.sha256(f"{rule_id}\x1f{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def holdout(user_id: str, rule_id: str, share: float) -> bool:
    """True when the user is in the rule's control group (a ``share`` fraction of users)."""
    return share > 0 and holdout_point(user_id, rule_id) < share


def trigger_json_schema() -> dict[str, Any]:
    return Trigger.model_json_schema()


def write_trigger_schema(out: Path) -> Path:
    """Write ``trigger.schema.json`` into ``out`` (same format as ``stream.schemas.write_schemas``)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / SCHEMA_FILE
    path.write_text(json.dumps(trigger_json_schema(), indent=2, sort_keys=True) + "\n")
    return path
