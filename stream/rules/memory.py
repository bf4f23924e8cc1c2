"""Per-user delivery memory: small, JSON-friendly, pruned; lives inside the user's state blob.

Holds only what suppression and ``portrait explain`` need:
* ``last_fired``: rule id → time of the last firing that counts for the cooldown (sent or held out),
  only for rules with a cooldown, dropped once the cooldown has passed;
* ``sent``: local date (``YYYY-MM-DD`` in the user's zone) → channel → sends, for today and yesterday;
* ``recent``: the last ``MAX_RECENT`` firings and suppressions, oldest first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

MAX_RECENT = 20


@dataclass(frozen=True)
class DeliveryRecord:
    """One firing: ``outcome`` is ``send`` or ``suppressed`` (then ``reason`` says why)."""

    at: float
    rule_id: str
    rule_version: int
    trigger_id: str
    channel: str
    outcome: str
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "at": self.at,
            "rule": self.rule_id,
            "v": self.rule_version,
            "id": self.trigger_id,
            "ch": self.channel,
            "out": self.outcome,
        }
        if self.reason is not None:
            data["why"] = self.reason
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeliveryRecord:
        return cls(
            at=float(data["at"]),
            rule_id=str(data["rule"]),
            rule_version=int(data["v"]),
            trigger_id=str(data["id"]),
            channel=str(data.get("ch", "")),
            outcome=str(data["out"]),
            reason=data.get("why"),
        )


@dataclass
class DeliveryMemory:
    """Mutable per-user memory; ``evaluate_rules`` updates and prunes it."""

    last_fired: dict[str, float] = field(default_factory=dict)
    sent: dict[str, dict[str, int]] = field(default_factory=dict)
    recent: list[DeliveryRecord] = field(default_factory=list)

    def sent_on(self, local_date: str, channel: str) -> int:
        """Sends on ``channel`` on the user's local date ``YYYY-MM-DD``."""
        return self.sent.get(local_date, {}).get(channel, 0)

    def count_send(self, local_date: str, channel: str) -> None:
        day = self.sent.setdefault(local_date, {})
        day[channel] = day.get(channel, 0) + 1

    def record(self, entry: DeliveryRecord) -> None:
        """Append to ``recent``, keeping the newest ``MAX_RECENT``."""
        self.recent.append(entry)
        del self.recent[:-MAX_RECENT]

    def prune(self, now: float, local_date: str, cooldowns: Mapping[str, float]) -> None:
        """Drop cooldown entries that no longer matter (rule gone, or ``now - t >= cooldown``) and
        send counts older than yesterday (relative to ``local_date``)."""
        self.last_fired = {r: t for r, t in self.last_fired.items() if r in cooldowns and now - t < cooldowns[r]}
        yesterday = (date.fromisoformat(local_date) - timedelta(days=1)).isoformat()
        self.sent = {d: counts for d, counts in self.sent.items() if d >= yesterday}

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form; empty parts are omitted."""
        data: dict[str, Any] = {}
        if self.last_fired:
            data["last"] = dict(self.last_fired)
        if self.sent:
            data["sent"] = {d: dict(c) for d, c in self.sent.items()}
        if self.recent:
            data["recent"] = [r.to_dict() for r in self.recent]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> DeliveryMemory:
        """Inverse of ``to_dict``; ``None`` or ``{}`` gives an empty memory."""
        data = data or {}
        return cls(
            last_fired={str(k): float(v) for k, v in data.get("last", {}).items()},
            sent={str(d): {str(c): int(n) for c, n in counts.items()} for d, counts in data.get("sent", {}).items()},
            recent=[DeliveryRecord.from_dict(r) for r in data.get("recent", [])][-MAX_RECENT:],
        )
