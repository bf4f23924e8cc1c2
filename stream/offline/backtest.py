"""Offline rule backtest: what would these rules have sent on this export? (``portrait rules backtest``)

A thin report over ``stream.offline.driver``: the export is replayed in event time through the
worker's own code (processor, store, Lua scripts, rules, delivery memory, trigger outbox) on the
Redis/Valkey of the settings, in a scratch key namespace deleted afterwards; nothing is sent. See
the driver for the replay's semantics (event-time order, time-driven path, RFM thresholds on an
event-time cadence, ``horizon``), and ``stream.rules.effect`` for exposures and conversions: the
effect table is the run's ``effect:`` counters, the ones ``portrait rules report`` reads live.

With ``with_models`` the processor scores churn and segment tags and the trainer learns in-process
(publishing checkpoints on an event-time cadence); without it, rules reading model tags never fire
and the report says so.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream.contracts.topics import Topics
from stream.kafka.replay import Format, read_events
from stream.models import ModelsConfig, load_models_config
from stream.offline.driver import DAY, Firing, OfflineRun, drive
from stream.rules import MODEL_TAGS, REASONS, RuleSet, load_rules
from stream.rules.conditions import tags_of
from stream.rules.effect import effects
from stream.settings import Settings
from stream.tagging.definitions import TagCatalogue, load_catalogue
from stream.tagging.engine import iso

__all__ = ["BacktestResult", "Firing", "RuleResult", "backtest", "backtest_file", "report"]


@dataclass
class RuleResult:
    rule_id: str
    channel: str
    topic: str
    holdout: float
    fired: int = 0
    sent: int = 0
    suppressed: Counter[str] = field(default_factory=Counter)
    users: set[str] = field(default_factory=set)
    users_sent: set[str] = field(default_factory=set)
    time_driven: int = 0  # firings on time-driven evaluations (no event at that moment)

    def to_dict(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "topic": self.topic,
            "holdout": self.holdout,
            "fired": self.fired,
            "users": len(self.users),
            "sent": self.sent,
            "users_sent": len(self.users_sent),
            "suppressed": {r: self.suppressed.get(r, 0) for r in REASONS},
            "time_driven": self.time_driven,
        }


@dataclass
class BacktestResult:
    """What a backtest counted. ``triggers`` holds every (topic, trigger JSON) that would be sent."""

    messages: int = 0
    events: int = 0  # applied
    duplicates: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    users: int = 0
    start: float | None = None  # first event time
    end: float | None = None  # last event time
    clock_end: float | None = None  # end + horizon: the last time-driven evaluation point
    batches: int = 0
    time_evaluations: int = 0  # re-evaluations of the time-driven path (the timer's)
    expired_users: int = 0
    rfm_refreshes: int = 0
    rfm_version: int = 0
    rules: dict[str, RuleResult] = field(default_factory=dict)  # file order
    topics: Counter[str] = field(default_factory=Counter)
    triggers: list[tuple[str, str]] = field(default_factory=list)
    firings: list[Firing] = field(default_factory=list)
    effect: dict[str, dict[str, Any]] = field(default_factory=dict)  # per rule: RuleEffect.to_dict()
    model_rules: list[str] = field(default_factory=list)  # rules reading model tags
    models: bool = False
    seconds: float = 0.0

    @property
    def fired(self) -> int:
        return sum(r.fired for r in self.rules.values())

    @property
    def sent(self) -> int:
        return sum(r.sent for r in self.rules.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (without the individual triggers and firings)."""
        suppressed: Counter[str] = Counter()
        for r in self.rules.values():
            suppressed.update(r.suppressed)
        return {
            "period": {
                "start": _iso(self.start),
                "end": _iso(self.end),
                "clock_end": _iso(self.clock_end),
                "days": _days(self.start, self.clock_end),
            },
            "messages": self.messages,
            "events": self.events,
            "duplicates": self.duplicates,
            "dead_letters": dict(sorted(self.dead_letters.items())),
            "users": self.users,
            "expired_users": self.expired_users,
            "batches": self.batches,
            "reevaluations": self.time_evaluations,
            "rfm": {"refreshes": self.rfm_refreshes, "version": self.rfm_version},
            "models": self.models,
            "rules": {rid: r.to_dict() for rid, r in self.rules.items()},
            "total": {
                "fired": self.fired,
                "users": len(set[str]().union(*(r.users for r in self.rules.values()))),
                "sent": self.sent,
                "time_driven": sum(r.time_driven for r in self.rules.values()),
                "suppressed": {k: suppressed.get(k, 0) for k in REASONS},
            },
            "topics": dict(sorted(self.topics.items())),
            "effect": self.effect,
            "seconds": round(self.seconds, 3),
        }


def _iso(ts: float | None) -> str | None:
    return None if ts is None else iso(ts)


def _days(start: float | None, end: float | None) -> float:
    return 0.0 if start is None or end is None else round((end - start) / DAY, 2)


def report(
    run: OfflineRun, rules_by_id: dict[str, tuple[str, str, float]], model_rules: list[str], models: bool
) -> BacktestResult:
    """The backtest's view of a driver run: firings per rule (``rules_by_id``: id -> (channel,
    topic, holdout), in file order), triggers per topic, and the effect counters."""
    result = BacktestResult(
        messages=run.messages,
        events=run.applied,
        duplicates=run.duplicates + run.redelivered,
        dead_letters=Counter(run.dead_letters),
        users=run.users,
        start=run.start,
        end=run.end,
        clock_end=run.clock_end,
        batches=run.batches,
        time_evaluations=run.reevaluations,
        expired_users=run.expired_users,
        rfm_refreshes=run.rfm_refreshes,
        rfm_version=run.rfm_version,
        model_rules=model_rules,
        models=models,
        seconds=run.seconds,
    )
    for rule_id, (channel, topic, share) in rules_by_id.items():
        result.rules[rule_id] = RuleResult(rule_id, channel, topic, share)
    for f in sorted(run.firings, key=lambda f: (f.at, f.user_id, f.rule_id)):
        stats = result.rules.get(f.rule_id)
        if stats is None:
            continue
        result.firings.append(f)
        stats.fired += 1
        stats.users.add(f.user_id)
        stats.time_driven += f.time_driven
        if f.outcome == "send":
            stats.sent += 1
            stats.users_sent.add(f.user_id)
        else:
            stats.suppressed[f.reason or ""] += 1
    for entry in run.triggers:
        result.topics[entry.topic] += 1
        result.triggers.append((entry.topic, entry.value.decode()))
    result.effect = {rule: e.to_dict() for rule, e in effects(run.stats).items()}
    return result


def backtest(
    settings: Settings,
    rules: RuleSet,
    items: Iterable[dict[str, Any] | bytes],
    *,
    catalogue: TagCatalogue | None = None,
    horizon: float = 0,
    rfm_interval: float = DAY,
    models: ModelsConfig | None = None,
) -> BacktestResult:
    """Backtest ``rules`` on ``items`` (``read_events`` items: raw JSONL bytes or event dicts)."""
    catalogue = catalogue or load_catalogue(settings.tags_file)
    run = asyncio.run(
        drive(
            settings,
            items,
            catalogue=catalogue,
            rules=rules,
            models=models,
            learn=models is not None,
            horizon=horizon,
            rfm_interval=rfm_interval,
        )
    )
    topics = Topics(settings.topic_prefix)
    by_id = {r.id: (r.channel, topics.trigger(r.action.topic_suffix), r.holdout) for r in rules.active}
    model_tags = set(MODEL_TAGS)
    model_rules = [r.id for r in rules.active if tags_of(r.when) & model_tags]
    return report(run, by_id, model_rules, models is not None)


def backtest_file(
    settings: Settings,
    rules_file: Path,
    data: Path,
    *,
    horizon: float = 0,
    fmt: Format = "auto",
    mapping: dict[str, str] | None = None,
    default_type: str | None = None,
    tz: str = "UTC",
    tags_file: Path | None = None,
    rfm_interval: float = DAY,
    with_models: bool = False,
) -> BacktestResult:
    """Load the tag catalogue and rule file (validated like the worker, ``ConfigError`` if not) and
    backtest the export ``data`` (``read_events`` options) on the Redis of ``settings``.

    ``horizon`` (seconds) keeps the time-driven path going after the last event (``6h`` lets the
    last carts turn abandoned, ``14d`` lets conversion windows close); ``rfm_interval`` is the
    threshold refresh period in event time. Trigger topics use ``settings.topic_prefix``.
    """
    catalogue = load_catalogue(tags_file if tags_file is not None else settings.tags_file)
    rules = load_rules(rules_file, catalogue)
    models = load_models_config(settings.models_file) if with_models else None
    source = read_events(data, fmt=fmt, mapping=mapping, default_type=default_type, tz=tz)
    return backtest(
        settings, rules, source, catalogue=catalogue, horizon=horizon, rfm_interval=rfm_interval, models=models
    )
