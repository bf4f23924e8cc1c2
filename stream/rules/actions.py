"""Action types a rule can trigger: a registry of small pydantic parameter models.

Adding an action type = one parameter model + one ``register_action`` call (its trigger topic is
``triggers.<name>`` unless given) + rules in YAML that use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stream.contracts.triggers import ParamValue

_CHANNEL = r"^[a-z][a-z0-9_]*$"


class ActionParams(BaseModel):
    """Base class of action parameter models (strict: unknown parameters are rejected)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class CouponParams(ActionParams):
    """Issue a coupon of ``value`` (base currency) from ``campaign``."""

    campaign: str = Field(min_length=1)
    value: float = Field(gt=0)


class CareSmsParams(ActionParams):
    """Send the customer-care SMS ``template``."""

    template: str = Field(min_length=1)


@dataclass(frozen=True)
class ActionType:
    """A registered action: its parameter model, default channel and trigger topic suffix."""

    name: str
    params: type[ActionParams]
    default_channel: str
    topic_suffix: str


ACTION_TYPES: dict[str, ActionType] = {}


def register_action(
    name: str, params: type[ActionParams], *, default_channel: str, topic_suffix: str | None = None
) -> ActionType:
    """Register (or replace) an action type; returns it. Topic suffix defaults to ``triggers.<name>``."""
    action = ActionType(name, params, default_channel, topic_suffix or f"triggers.{name}")
    ACTION_TYPES[name] = action
    return action


register_action("coupon", CouponParams, default_channel="push")
register_action("care_sms", CareSmsParams, default_channel="sms")


def _params_error(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error["loc"]) or "(params)"
        parts.append(f"params.{where}: {error['msg']}")
    return "; ".join(parts)


class ActionSpec(BaseModel):
    """A rule's ``action``: ``type`` (registered), optional ``channel`` (default per type) and ``params``.

    After validation ``params`` holds the parameter model's JSON dump and ``channel`` is set.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    channel: str = Field(default="", pattern=r"^$|" + _CHANNEL)
    params: dict[str, ParamValue] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _check_params(cls, raw: Any) -> Any:
        if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
            return raw
        action = ACTION_TYPES.get(raw["type"])
        if action is None:
            raise ValueError(f"unknown action type {raw['type']!r} (known: {', '.join(sorted(ACTION_TYPES))})")
        try:
            params = action.params.model_validate(raw.get("params") or {})
        except ValidationError as exc:
            raise ValueError(_params_error(exc)) from exc
        return {
            **raw,
            "params": params.model_dump(mode="json"),
            "channel": raw.get("channel") or action.default_channel,
        }

    @property
    def topic_suffix(self) -> str:
        """Trigger topic suffix of this action type, e.g. ``triggers.coupon``."""
        return ACTION_TYPES[self.type].topic_suffix
