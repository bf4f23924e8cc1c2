"""The rule counters kept in ``P:v1:stats``: one typed key per (rule, outcome) and per (rule, group, what).

Writers build keys with ``encode``; readers (``portrait rules report``, the uplift metrics, the
backtest, the bench) get them back with ``parse``, never by splitting strings themselves. Rule ids
cannot contain ``:`` (see ``stream.rules.config.Rule.id``), so the encoding is unambiguous:

>>> RuleCounter("winback", "send").encode()
'rule:winback:send'
>>> parse("effect:winback:treated:converted")
EffectCounter(rule='winback', group='treated', what='converted')
>>> parse("events_applied") is None
True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, get_args

Group = Literal["treated", "control"]
EffectWhat = Literal["exposed", "converted", "expired"]
# ``send``, or the suppression reason (stream.rules.evaluate.REASONS)
RuleOutcome = Literal["send", "cooldown", "quiet_hours", "cap", "holdout", "backfill", "dry_run"]
GROUPS: tuple[Group, ...] = get_args(Group)
EFFECT_WHATS: tuple[EffectWhat, ...] = get_args(EffectWhat)
RULE_OUTCOMES: tuple[RuleOutcome, ...] = get_args(RuleOutcome)


@dataclass(frozen=True)
class RuleCounter:
    """Firings of ``rule`` that were sent (``send``) or suppressed for ``outcome`` (the reason)."""

    rule: str
    outcome: RuleOutcome

    def encode(self) -> str:
        return f"rule:{self.rule}:{self.outcome}"


@dataclass(frozen=True)
class EffectCounter:
    """Exposures of ``rule`` in ``group``: opened (``exposed``), converted by an order within the
    window (``converted``), or closed at the window's end without one (``expired``)."""

    rule: str
    group: Group
    what: EffectWhat

    def encode(self) -> str:
        return f"effect:{self.rule}:{self.group}:{self.what}"


Counter = RuleCounter | EffectCounter


def parse(key: str) -> Counter | None:
    """The counter a stats field encodes, or None for any other field (events, identity, ...)."""
    parts = key.split(":")
    if len(parts) == 3 and parts[0] == "rule" and parts[2] in RULE_OUTCOMES:
        return RuleCounter(parts[1], parts[2])
    if len(parts) == 4 and parts[0] == "effect" and parts[2] in GROUPS and parts[3] in EFFECT_WHATS:
        return EffectCounter(parts[1], parts[2], parts[3])
    return None


def count(counters: dict[str, int], counter: Counter, n: int = 1) -> None:
    """Add ``n`` to ``counter`` in a stats dict (field -> increment)."""
    key = counter.encode()
    counters[key] = counters.get(key, 0) + n


def parsed(stats: Mapping[str, int]) -> Iterable[tuple[Counter, int]]:
    """The rule and effect counters among ``stats`` fields, typed."""
    for key, n in stats.items():
        counter = parse(key)
        if counter is not None:
            yield counter, n
