"""What the rules and the models remember about a user between evaluations: typed parts of
``UserState``, decoded once with the state and mutated in place by ``evaluate_rules`` and
``Models.score_step``.

They live here, below ``stream.rules`` and ``stream.models``, because the state record that stores
them (``stream.tagging.state``) does; those packages re-export them. Each part has ``to_doc`` /
``from_doc`` for its JSON document inside the stored state (layout in docs/redis-keys.md; the keys
never change meaning, old states must stay readable).

Delivery memory holds only what suppression and ``portrait explain`` need:
* ``last_fired``: rule id → time of the last firing that counts for the cooldown (sent or held out),
  only for rules with a cooldown, dropped once the cooldown has passed;
* ``sent``: local date (``YYYY-MM-DD`` in the user's zone) → channel → sends, for today and yesterday;
* ``recent``: the last ``MAX_RECENT`` firings and suppressions, oldest first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, NamedTuple

MAX_RECENT = 20


class DeliveryRecord(NamedTuple):
    """One firing: ``outcome`` is ``send`` or ``suppressed`` (then ``reason`` says why). A named
    tuple: immutable, and about 3x cheaper to build than a frozen dataclass (20 per user decode)."""

    at: float
    rule_id: str
    rule_version: int
    trigger_id: str
    channel: str
    outcome: str
    reason: str | None = None

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "at": self.at,
            "rule": self.rule_id,
            "v": self.rule_version,
            "id": self.trigger_id,
            "ch": self.channel,
            "out": self.outcome,
        }
        if self.reason is not None:
            doc["why"] = self.reason
        return doc

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> DeliveryRecord:
        return cls(doc["at"], doc["rule"], doc["v"], doc["id"], doc.get("ch", ""), doc["out"], doc.get("why"))


@dataclass(slots=True)
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

    def merge(self, other: DeliveryMemory) -> None:
        """Fold ``other`` in (identity merge): cooldowns keep the latest firing per rule, daily
        caps add up, recent firings interleave by time."""
        for rule, ts in other.last_fired.items():
            self.last_fired[rule] = max(ts, self.last_fired.get(rule, ts))
        for day, counts in other.sent.items():
            mine = self.sent.setdefault(day, {})
            for channel, n in counts.items():
                mine[channel] = mine.get(channel, 0) + n
        self.recent = sorted(self.recent + other.recent, key=lambda r: r.at)[-MAX_RECENT:]

    def to_doc(self) -> dict[str, Any]:
        """JSON document; empty parts are omitted (an empty memory is ``{}``)."""
        doc: dict[str, Any] = {}
        if self.last_fired:
            doc["last"] = dict(self.last_fired)
        if self.sent:
            doc["sent"] = {d: dict(c) for d, c in self.sent.items()}
        if self.recent:
            doc["recent"] = [r.to_doc() for r in self.recent]
        return doc

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any] | None) -> DeliveryMemory:
        """Inverse of ``to_doc``; ``None`` or ``{}`` gives an empty memory."""
        if not doc:
            return cls()
        return cls(
            last_fired=dict(doc.get("last", {})),
            sent={d: dict(counts) for d, counts in doc.get("sent", {}).items()},
            recent=[DeliveryRecord.from_doc(r) for r in doc.get("recent", ())][-MAX_RECENT:],
        )


@dataclass(frozen=True)
class PendingExample:
    """A user's churn features at snapshot time ``ts``, waiting for its label window to close.

    ``returned``: a qualifying activity was seen within the window (the label is 0; it is learned
    when the window closes, like every label)."""

    features: dict[str, float]
    ts: float
    returned: bool = False

    def deadline(self, horizon: float) -> float:
        """``now`` at which the example's label window closes (churned if nothing qualifying happened)."""
        return self.ts + horizon

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"x": self.features, "ts": self.ts}
        if self.returned:
            doc["r"] = True
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> PendingExample:
        return cls(
            features={str(k): float(v) for k, v in doc["x"].items()},
            ts=float(doc["ts"]),
            returned=bool(doc.get("r", False)),
        )


@dataclass(slots=True)
class UserModelState:
    """What must persist per user between model steps.

    ``pending``: the churn snapshots waiting for their label, oldest first (at most
    ``ceil(horizon / snapshot_interval)``; features rounded, ~0.2 KB each as JSON).
    ``last_snapshot_ts``: the cadence point of the latest snapshot. Stored as ``p`` (the oldest
    pending, the only one states had before) plus ``pq`` (the others).
    """

    segment: str | None = None
    segment_vector: dict[str, float] | None = None
    segment_ts: float | None = None
    pending: list[PendingExample] = field(default_factory=list)
    last_snapshot_ts: float | None = None

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "s": self.segment,
            "sv": self.segment_vector,
            "st": self.segment_ts,
            "p": self.pending[0].to_json() if self.pending else None,
            "ls": self.last_snapshot_ts,
        }
        if len(self.pending) > 1:
            doc["pq"] = [p.to_json() for p in self.pending[1:]]
        return doc

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> UserModelState:
        first = doc["p"]
        pending = [PendingExample.from_json(first)] if first is not None else []
        pending += [PendingExample.from_json(p) for p in doc.get("pq") or ()]
        return cls(
            segment=doc["s"],
            segment_vector=doc["sv"],
            segment_ts=doc["st"],
            pending=pending,
            last_snapshot_ts=doc["ls"],
        )
