"""Pure backtest: run a sequence of evaluations through the rules and count what would happen."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field

from stream.rules.config import RuleSet
from stream.rules.evaluate import Decision, evaluate_rules
from stream.rules.memory import DeliveryMemory

Evaluation = tuple[str, Mapping[str, str] | None, Mapping[str, str], float]
"""(user id, previous profile or None when unknown, current profile, now)."""


@dataclass
class Counts:
    """Firings of one rule (or of all rules) over a backtest."""

    fired: int = 0
    sent: int = 0
    suppressed: dict[str, int] = field(default_factory=dict)
    users_fired: set[str] = field(default_factory=set)
    users_sent: set[str] = field(default_factory=set)

    def add(self, decision: Decision) -> None:
        user = decision.trigger.user_id
        self.fired += 1
        self.users_fired.add(user)
        if decision.reason is None:
            self.sent += 1
            self.users_sent.add(user)
        else:
            self.suppressed[decision.reason] = self.suppressed.get(decision.reason, 0) + 1

    def summary(self) -> dict[str, object]:
        """JSON-friendly: counts, distinct users and suppressions by reason."""
        return {
            "fired": self.fired,
            "sent": self.sent,
            "suppressed": dict(sorted(self.suppressed.items())),
            "users_fired": len(self.users_fired),
            "users_sent": len(self.users_sent),
        }


@dataclass
class BacktestReport:
    evaluations: int = 0
    total: Counts = field(default_factory=Counts)
    per_rule: dict[str, Counts] = field(default_factory=dict)

    def summary(self) -> dict[str, object]:
        return {
            "evaluations": self.evaluations,
            "total": self.total.summary(),
            "rules": {rule: c.summary() for rule, c in sorted(self.per_rule.items())},
        }


def backtest(
    rules: RuleSet,
    evaluations: Iterable[Evaluation],
    memories: MutableMapping[str, DeliveryMemory] | None = None,
) -> BacktestReport:
    """Evaluate each step in order with a per-user ``DeliveryMemory`` (fresh unless given in
    ``memories``, which is updated) and count firings, sends, distinct users and suppressions."""
    memories = {} if memories is None else memories
    report = BacktestReport()
    for user_id, previous, current, now in evaluations:
        report.evaluations += 1
        memory = memories.setdefault(user_id, DeliveryMemory())
        for decision in evaluate_rules(rules, user_id, previous, current, now, memory):
            report.total.add(decision)
            report.per_rule.setdefault(decision.rule.id, Counts()).add(decision)
    return report
