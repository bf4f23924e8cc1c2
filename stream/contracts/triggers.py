"""The trigger payload published on a trigger topic for each firing of a rule."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

ParamValue = str | int | float | bool


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


def trigger_json_schema() -> dict[str, Any]:
    return Trigger.model_json_schema()
