"""Independent expectations for tests/data/test_rules.yaml and a reader of the trigger topics."""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from pathlib import Path

from stream.contracts.topics import Topics
from stream.settings import Settings
from tests.integration.helpers import read_topics

RULES = Path(__file__).resolve().parents[1] / "data" / "test_rules.yaml"
# The id contract (docs/rules.md): uuid5 in this namespace over rule, version, user, window index.
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "portrait:v1:triggers")
YEAR = 365 * 86400


def expected_id(rule: str, version: int, user: str, at: float) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{rule}\x1f{version}\x1f{user}\x1f{int(at // YEAR)}"))


def held_out(user: str, rule: str, share: float) -> bool:
    point = int.from_bytes(hashlib.sha256(f"{rule}\x1f{user}".encode()).digest()[:8], "big") / 2.0**64
    return point < share


def first_activity(events: list[dict]) -> dict[str, float]:
    """user -> time of their first event other than identify (what events_30d counts)."""
    first: dict[str, float] = {}
    for e in events:
        if e["type"] != "identify":
            t = datetime.fromisoformat(e["ts"]).timestamp()
            first[e["user_id"]] = min(first.get(e["user_id"], t), t)
    return first


def expected_triggers(events: list[dict]) -> dict[str, set[str]]:
    """topic suffix -> trigger ids the replay must produce (each user fires each rule once)."""
    complainers: dict[str, float] = {}
    for e in events:
        if e["type"] == "feedback" and e.get("complaint"):
            t = datetime.fromisoformat(e["ts"]).timestamp()
            complainers[e["user_id"]] = min(complainers.get(e["user_id"], t), t)
    active = first_activity(events)
    sms = {expected_id("care_after_complaint", 3, u, t) for u, t in complainers.items()}
    coupons = {
        expected_id("welcome_first_activity", 1, u, t)
        for u, t in active.items()
        if not held_out(u, "welcome_first_activity", 0.3)
    }
    return {"triggers.care_sms": sms, "triggers.coupon": coupons}


def expected_conversions(
    events: list[dict], rule: str, holdout: float, window_s: float, fired_at: dict[str, float] | None = None
) -> dict[str, int]:
    """Users of a first-activity rule whose exposure converts, by group (treated = sent, control =
    held out): an order at ``t`` with ``start <= t < start + window`` (docs/rules.md), other than the
    event the rule fired on. ``start`` is the user's first activity, or ``fired_at[user]`` when the
    firing times are given (a replay through Kafka may apply a user's order before an earlier page
    view, and fire there). The datasets used have no order sharing its second with another activity
    of its user (``assert_unambiguous_orders``), so an order at ``start`` is the one fired on."""
    orders: dict[str, list[float]] = {}
    for e in events:
        if e["type"] == "order_paid":
            orders.setdefault(e["user_id"], []).append(datetime.fromisoformat(e["ts"]).timestamp())
    starts = first_activity(events) if fired_at is None else fired_at
    out = {"treated": 0, "control": 0}
    for user, start in starts.items():
        if any(start < t < start + window_s for t in orders.get(user, [])):
            out["control" if held_out(user, rule, holdout) else "treated"] += 1
    return out


def assert_unambiguous_orders(events: list[dict]) -> None:
    """No order shares its second with another activity of its user (see ``expected_conversions``)."""
    seen: dict[tuple[str, float], int] = {}
    for e in events:
        if e["type"] != "identify":
            key = (e["user_id"], datetime.fromisoformat(e["ts"]).timestamp())
            seen[key] = seen.get(key, 0) + 1
    shared = [
        e
        for e in events
        if e["type"] == "order_paid" and seen[(e["user_id"], datetime.fromisoformat(e["ts"]).timestamp())] > 1
    ]
    assert not shared, f"orders sharing a second with another activity: {shared[:3]}"


async def read_triggers(settings: Settings, idle_s: float = 3.0) -> dict[str, list[dict]]:
    """Every message on the trigger topics (duplicates included), by topic suffix."""
    found = await read_topics(settings, list(Topics(settings.topic_prefix).triggers), idle_s=idle_s)
    return {topic[len(settings.topic_prefix) + 1 :]: messages for topic, messages in found.items()}
