"""A firing's deterministic trigger id and holdout assignment."""

from __future__ import annotations

import hashlib
import math
import uuid

from stream.contracts.triggers import Explanation, Trigger, TriggerAction, ValueChange

__all__ = [
    "Explanation",
    "Trigger",
    "TriggerAction",
    "ValueChange",
    "firing_window",
    "holdout",
    "holdout_point",
    "trigger_id",
]

TRIGGER_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "portrait:v1:triggers")


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
