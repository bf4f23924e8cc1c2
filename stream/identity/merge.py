"""Identity resolution: an anonymous profile merges into the known user it is linked to.

An event carrying both ``user_id`` and ``anonymous_id`` links the two. The anonymous profile
(subject ``anon:<id>``) is folded into the user's state, deleted, and replaced by an alias
``P:v2:{sN}:alias:anon:<id> -> user id`` so later events of the anonymous id go to the user.

Because every part of ``UserState`` is commutative (sums, min/max, latest-by-timestamp, per-source
offsets), folding the anonymous state into the user's gives the state the user would have had if
all events had carried the user id from the start. Merges are decided in a worker's batch and
written by the same compare-and-set script as every update: the user's and the anonymous
profile's versions are both checked, and no profile that has an alias may be written, so a merge
and concurrent events for either id on other partitions (other workers) cannot lose or double
anything; the loser re-reads, follows the alias and recomputes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from stream.tagging.state import EVENTS, MergedId, NpsAnswer, Trait, UserState

DAY = 86400.0
ANON_PREFIX = "anon:"
Refusal = Literal["blocked_id", "already_linked", "too_many_per_day", "too_many_total"]
REFUSALS: tuple[str, ...] = Refusal.__args__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class IdentityPolicy:
    """Safeguards (settings ``PORTRAIT_IDENTITY_*``)."""

    blocked: frozenset[str]  # lower-cased identifier values that never identify anyone
    max_per_day: int  # anonymous ids merged into one user within 24 h of event time
    max_total: int  # anonymous ids merged into one user ever

    def is_blocked(self, value: str | None) -> bool:
        return value is not None and value.strip().lower() in self.blocked


def anon_subject(anonymous_id: str) -> str:
    return f"{ANON_PREFIX}{anonymous_id}"


def refusal(policy: IdentityPolicy, user: UserState | None, at: float) -> Refusal | None:
    """Why merging one more anonymous id into ``user`` at event time ``at`` is refused, if it is."""
    merged = user.merged if user is not None else []
    if len(merged) >= policy.max_total:
        return "too_many_total"
    if sum(1 for m in merged if at - DAY < m.at <= at) >= policy.max_per_day:
        return "too_many_per_day"
    return None


def merge_into(target: UserState, source: UserState, source_subject: str, at: float, keep_ids: int) -> None:
    """Fold ``source`` (an anonymous profile) into ``target`` (the known user), in place."""
    both_active = {
        d: 1 for d, t in source.tiles.items() if t[EVENTS] and (mine := target.tiles.get(d)) and mine[EVENTS]
    }
    target.lifetime.merge(source.lifetime, both_active)
    for day, tile in source.tiles.items():
        mine = target.tile(day)
        for i, n in enumerate(tile):
            mine[i] += n
    for day, hours in source.hours.items():
        mine_h = target.hours.setdefault(day, {})
        for hour, n in hours.items():
            mine_h[hour] = mine_h.get(hour, 0) + n
    target.first_seen = _min(target.first_seen, source.first_seen)
    for name in ("last_seen", "last_activity", "last_order", "last_cart_add", "order_seen", "evaluated_at"):
        setattr(target, name, _max(getattr(target, name), getattr(source, name)))
    target.due_at = _min(target.due_at, source.due_at)
    for category, score in source.interest.items():
        target.interest[category] = target.interest.get(category, 0.0) + score
    for name, trait in source.traits.items():
        current = target.traits.get(name)
        if current is None or _later(trait, current):
            target.traits[name] = trait
    if source.nps is not None and (target.nps is None or _later(source.nps, target.nps)):
        target.nps = source.nps
    for src, offset in source.offsets.items():
        target.offsets[src] = max(offset, target.offsets.get(src, -1))
    seen = set(target.recent_ids)
    ids = target.recent_ids + [i for i in source.recent_ids if i not in seen]
    target.recent_ids = ids[-keep_ids:] if keep_ids else []
    if target.rule_baseline is None:  # a brand-new user continues from the anonymous profile's baseline
        target.rule_baseline = source.rule_baseline
    target.delivery.merge(source.delivery)
    target.exposures = target.exposures + source.exposures
    if target.models is None:
        target.models = source.models
    target.merged = [*target.merged, MergedId(source_subject, at)]


def _later(a: Trait | NpsAnswer, b: Trait | NpsAnswer) -> bool:
    """Latest by event time, then event id (as ``stream.tagging.engine`` keeps them)."""
    return (a.ts, a.event_id) > (b.ts, b.event_id)


def _min(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _max(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)
