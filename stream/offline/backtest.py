"""Offline rule backtest: replay an export in event time, in memory, with the worker's own code.

``portrait rules backtest RULES --data EXPORT`` answers "what would these rules have sent on this
data?" without Kafka, Redis or any delivery. The replay mirrors the worker in event-time mode:

* Messages are validated in file order exactly like the worker (``stream.core.pipeline.classify``, with
  the running event-time clock for ``too_old``); unusable ones are counted by dead-letter reason.
* Valid events are applied in event-time order (ties: file order) with ``apply_event``; producer
  duplicates (same event id) are skipped as live.
* Evaluation points are the worker's: right after each event at its time (a batch of one), and the
  time-driven points of the due set: before the clock passes a user's due time, the user is
  re-evaluated *at* that due time (every user, globally in time order, as the timer does), and at
  the end every due time up to the final clock (last event time + ``horizon``).
* Each evaluation is ``stream.core.pipeline.plan_write`` (tags, rules, delivery memory, trigger
  payloads), so firings and suppressions (cooldown, quiet hours, caps, holdout) are the live ones.
  Version 0 marks a brand-new user (rules may fire on the first evaluation); an expired user is
  deleted and starts afresh, as in Redis.
* RFM thresholds are recomputed every ``rfm_interval`` of event time from each buyer's last written
  R/F/M metrics (the rank sets), with the Redis script's quintile rule ``t_k = v[ceil(k*n/5)-1]``.
* Effect: sends are treated and holdouts control exposures (``EffectTracker``) with the rule's
  conversion window; every applied ``order_paid`` converts the user's open exposures.

Differences from a live run: one input in strict event-time order (live reads partitions at
different speeds, see docs/rules.md "Effect tracking in replays"), thresholds refresh in event
time (live: every few wall-clock seconds), and the models (``--models``) learn immediately instead
of via the trainer's periodic checkpoints.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from stream.contracts.deadletter import DeadLetter
from stream.contracts.events import Event, OrderPaid
from stream.contracts.topics import Topics
from stream.core.intake import Message, classify
from stream.core.pipeline import PlanContext, plan_write
from stream.kafka.replay import Format, parse_mapping, read_events, route
from stream.models import Models, load_models_config
from stream.rules import MODEL_TAGS, REASONS, EffectTracker, Rule, RuleSet, load_rules
from stream.rules.conditions import tags_of
from stream.settings import ConfigError
from stream.tagging.definitions import TagCatalogue, load_catalogue, parse_duration
from stream.tagging.engine import Applied, RfmThresholds, apply_event
from stream.tagging.state import UserState

DAY = 86400.0
SOURCE = "backtest/0"  # one pseudo partition: offsets follow the replay order, so nothing looks redelivered
MAX_FUTURE_SKEW_S = 300.0
PROCESSOR_VERSION = "backtest"


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Firing:
    """One rule firing: ``outcome`` ``send`` or ``suppressed`` (``reason`` says why)."""

    rule_id: str
    user_id: str
    at: float
    outcome: str
    reason: str | None
    time_driven: bool


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
    event_evaluations: int = 0
    time_evaluations: int = 0
    expired_users: int = 0
    rfm_refreshes: int = 0
    rfm_version: int = 0
    rules: dict[str, RuleResult] = field(default_factory=dict)  # file order
    topics: Counter[str] = field(default_factory=Counter)
    triggers: list[tuple[str, str]] = field(default_factory=list)
    firings: list[Firing] = field(default_factory=list)
    effect: dict[str, dict[str, Any]] = field(default_factory=dict)  # EffectTracker.report()
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
            "evaluations": {"event_driven": self.event_evaluations, "time_driven": self.time_evaluations},
            "rfm": {"refreshes": self.rfm_refreshes, "version": self.rfm_version},
            "models": self.models,
            "rules": {rid: r.to_dict() for rid, r in self.rules.items()},
            "total": {"fired": self.fired, "sent": self.sent, "suppressed": {k: suppressed.get(k, 0) for k in REASONS}},
            "topics": dict(sorted(self.topics.items())),
            "effect": self.effect,
            "seconds": round(self.seconds, 3),
        }

    def to_text(self) -> str:
        lines = [
            f"period: {_iso(self.start)} .. {_iso(self.end)} ({_days(self.start, self.end)} days)"
            + (f", time-driven evaluations until {_iso(self.clock_end)}" if self.clock_end != self.end else ""),
            f"messages: {self.messages:,}; events replayed: {self.events:,}; duplicates skipped: {self.duplicates:,}; "
            f"dead letters: {sum(self.dead_letters.values()):,}"
            + (
                f" ({', '.join(f'{k}={n}' for k, n in sorted(self.dead_letters.items()))})" if self.dead_letters else ""
            ),
            f"users: {self.users:,} ({self.expired_users:,} expired); evaluations: {self.event_evaluations:,} "
            f"event-driven + {self.time_evaluations:,} time-driven; RFM refreshes: {self.rfm_refreshes} "
            f"(thresholds v{self.rfm_version}); models: {'on' if self.models else 'off'}",
            "",
        ]
        width = max([len("rule"), len("total"), *(len(r) for r in self.rules)])
        head = f"{'rule':<{width}}  {'fired':>7} {'users':>6} {'sent':>7}"
        head += "".join(f" {r:>11}" for r in REASONS) + f" {'timed':>6}"
        lines += [head, "-" * len(head)]
        total: Counter[str] = Counter()
        for rid, r in self.rules.items():
            row = f"{rid:<{width}}  {r.fired:>7,} {len(r.users):>6,} {r.sent:>7,}"
            row += "".join(f" {r.suppressed.get(k, 0):>11,}" for k in REASONS) + f" {r.time_driven:>6,}"
            lines.append(row)
            total.update(r.suppressed)
        users = len(set().union(*(r.users for r in self.rules.values()))) if self.rules else 0
        row = f"{'total':<{width}}  {self.fired:>7,} {users:>6,} {self.sent:>7,}"
        row += "".join(f" {total.get(k, 0):>11,}" for k in REASONS)
        row += f" {sum(r.time_driven for r in self.rules.values()):>6,}"
        lines += ["-" * len(head), row]
        if self.model_rules and not self.models:
            lines.append(f"note: {', '.join(self.model_rules)} read model tags; run with --models to score them")
        lines += ["", "triggers per topic:"]
        lines += [f"  {t}: {n:,}" for t, n in sorted(self.topics.items())] or ["  (none)"]
        lines += ["", "effect (order_paid within the conversion window; rates over closed exposures):"]
        if not self.effect:
            lines.append("  (no exposures)")
        for rid, e in self.effect.items():
            lines.append(
                f"  {rid:<{width}}  treated {_group(e['treated'])}  control {_group(e['control'])}  "
                f"uplift {_pct(e['uplift'], signed=True)}"
            )
        return "\n".join(lines)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _days(start: float | None, end: float | None) -> float:
    return 0.0 if start is None or end is None else round((end - start) / DAY, 2)


def _pct(value: object, signed: bool = False) -> str:
    if not isinstance(value, int | float):
        return "n/a"
    return f"{value * 100:+.1f}pp" if signed else f"{value * 100:.1f}%"


def _group(g: dict[str, Any]) -> str:
    closed = g["exposures"] - g["open"]
    return f"{g['conversions']:>4}/{closed:<5} {_pct(g['rate']):>6} ({g['open']} open)"


# --------------------------------------------------------------------------------------------
# Replay
# --------------------------------------------------------------------------------------------


def quintile_thresholds(values: Iterable[float]) -> tuple[float, ...]:
    """The Redis refresh script's rule: sorted ascending ``v``, ``t_k = v[ceil(k*n/5) - 1]``, k=1..4."""
    v = sorted(values)
    n = len(v)
    return tuple(float(v[math.ceil(k * n / 5) - 1]) for k in range(1, 5)) if n else ()


@dataclass
class _Sim:
    rules: RuleSet
    catalogue: TagCatalogue
    topics: Topics
    models: Models | None
    rfm_interval: float
    keep_triggers: bool
    result: BacktestResult
    by_id: dict[str, Rule]
    tracker: EffectTracker = field(default_factory=EffectTracker)
    states: dict[str, UserState] = field(default_factory=dict)
    known: set[str] = field(default_factory=set)  # users evaluated at least once (version 1)
    due: dict[str, float] = field(default_factory=dict)
    heap: list[tuple[float, str]] = field(default_factory=list)
    ranks: dict[str, tuple[float, int, int]] = field(default_factory=dict)
    thresholds: RfmThresholds = field(default_factory=RfmThresholds)
    rfm_period: int | None = None
    seen: set[str] = field(default_factory=set)

    def refresh_rfm(self, at: float) -> None:
        """Recompute thresholds when ``at`` enters a new refresh period (before evaluating at ``at``)."""
        period = math.floor(at / self.rfm_interval)
        if self.rfm_period is not None and period <= self.rfm_period:
            return
        self.rfm_period = period
        self.result.rfm_refreshes += 1
        rs = self.ranks.values()
        r = quintile_thresholds(x[0] for x in rs)
        f = quintile_thresholds(float(x[1]) for x in rs)
        m = quintile_thresholds(float(x[2]) for x in rs)
        old = self.thresholds
        if (r, f, m) != (old.r, old.f, old.m):
            self.thresholds = RfmThresholds(old.version + 1, r, f, m)
            self.result.rfm_version = self.thresholds.version

    def run_due(self, until: float, inclusive: bool) -> None:
        """Time-driven evaluations of every due time before ``until`` (or at it), in time order."""
        heap = self.heap
        while heap and (heap[0][0] < until or (inclusive and heap[0][0] == until)):
            at, uid = heapq.heappop(heap)
            if self.due.get(uid) != at:
                continue  # superseded by a later evaluation
            del self.due[uid]
            state = self.states[uid]
            self.evaluate(uid, max(at, state.evaluated_at or 0.0), time_driven=True)

    def apply(self, event: Event, offset: int) -> None:
        at = event.epoch
        self.run_due(at, inclusive=False)
        uid = event.subject_id
        state = self.states.setdefault(uid, UserState())
        applied = apply_event(state, event, SOURCE, offset, self.catalogue.params)
        if applied is not Applied.APPLIED:
            self.result.duplicates += 1
            return
        self.result.events += 1
        self.seen.add(uid)
        if isinstance(event, OrderPaid):
            self.tracker.order(uid, at)  # before this step's exposures: an order cannot convert its own firing
        self.evaluate(uid, max(at, state.evaluated_at or 0.0), time_driven=False)

    def evaluate(self, uid: str, at: float, time_driven: bool) -> None:
        self.refresh_rfm(at)
        result = self.result
        if time_driven:
            result.time_evaluations += 1
        else:
            result.event_evaluations += 1
        version = 1 if uid in self.known else 0
        context = PlanContext(
            catalogue=self.catalogue,
            thresholds=self.thresholds,
            wall_now=at,
            rules=self.rules,
            topics=self.topics,
            models=self.models,
        )
        write = plan_write(uid, version, self.states[uid], at, context)
        if write.state is None:  # expired: Redis deletes the user; a later event starts afresh (version 0)
            result.expired_users += 1
            self.states.pop(uid, None)
            self.known.discard(uid)
            self.due.pop(uid, None)
            self.ranks.pop(uid, None)
            return
        self.known.add(uid)
        self.due[uid] = write.due
        heapq.heappush(self.heap, (write.due, uid))
        if write.ranks is None:
            self.ranks.pop(uid, None)
        else:
            self.ranks[uid] = write.ranks
        if self.models is not None:
            for item in write.learn:
                self.models.learn_item(orjson.loads(item))
        for rule_id, outcome, reason in write.decisions:
            rule = self.by_id[rule_id]
            stats = result.rules[rule_id]
            stats.fired += 1
            stats.users.add(uid)
            stats.time_driven += time_driven
            if outcome == "send":
                stats.sent += 1
                stats.users_sent.add(uid)
            else:
                stats.suppressed[reason] += 1
            result.firings.append(Firing(rule_id, uid, at, outcome, reason or None, time_driven))
            window = self.rules.conversion_window_for(rule)
            if outcome == "send":
                self.tracker.expose(rule_id, uid, "treated", at, window)
            elif reason == "holdout":
                self.tracker.expose(rule_id, uid, "control", at, window)
        for topic, payload in write.triggers:
            result.topics[topic] += 1
            if self.keep_triggers:
                result.triggers.append((topic, payload))


def run_backtest(
    rules: RuleSet,
    messages: Iterable[dict[str, Any] | bytes],
    catalogue: TagCatalogue | None = None,
    horizon: float = 0.0,
    rfm_interval: float = DAY,
    models: Models | None = None,
    topics: Topics | None = None,
    wall_now: float | None = None,
    keep_triggers: bool = True,
) -> BacktestResult:
    """Replay ``messages`` (``read_events`` items: raw JSONL bytes or event dicts) through ``rules``.

    ``horizon`` extends the time-driven evaluations past the last event (e.g. ``6h`` lets the last
    carts turn abandoned, ``14d`` lets conversion windows close). ``wall_now`` (default: now) is
    only used for the worker's ``future_timestamp`` check. See the module doc for the semantics.
    """
    started = time.perf_counter()
    if horizon < 0:
        raise ValueError("horizon must be >= 0")
    if rfm_interval <= 0:
        raise ValueError("rfm_interval must be > 0")
    catalogue = catalogue or load_catalogue()
    topics = topics or Topics()
    wall = time.time() if wall_now is None else wall_now
    result = BacktestResult(models=models is not None)
    for rule in rules.active:
        result.rules[rule.id] = RuleResult(
            rule.id, rule.channel, topics.trigger(rule.action.topic_suffix), rule.holdout
        )
    model_tags = set(MODEL_TAGS)
    result.model_rules = [r.id for r in rules.active if tags_of(r.when) & model_tags]

    # 1. validate in file order, exactly as the worker would (running event-time clock for too_old)
    valid: list[tuple[float, int, Event]] = []
    clock = 0.0
    for index, item in enumerate(messages):
        result.messages += 1
        topic, key, value, _known = route(item, topics)
        outcome = classify(
            Message(topic, 0, index, key, value), catalogue, wall, clock, MAX_FUTURE_SKEW_S, PROCESSOR_VERSION
        )
        if isinstance(outcome, DeadLetter):
            result.dead_letters[outcome.reason] += 1
            continue
        ts = outcome.event.epoch
        clock = max(clock, ts)
        valid.append((ts, index, outcome.event))
    valid.sort(key=lambda v: (v[0], v[1]))

    # 2. replay in event time with the due set
    sim = _Sim(rules, catalogue, topics, models, rfm_interval, keep_triggers, result, {r.id: r for r in rules.active})
    for offset, (_ts, _index, event) in enumerate(valid):
        sim.apply(event, offset)
    if valid:
        result.start, result.end = valid[0][0], valid[-1][0]
        result.clock_end = result.end + horizon
        sim.run_due(result.clock_end, inclusive=True)
        sim.tracker.expire(result.clock_end)
    result.users = len(sim.seen)
    result.effect = sim.tracker.report()
    result.seconds = time.perf_counter() - started
    return result


def backtest_file(
    rules_path: Path,
    data: Path,
    horizon: float = 0.0,
    fmt: Format = "auto",
    mapping: dict[str, str] | None = None,
    default_type: str | None = None,
    tz: str = "UTC",
    tags_file: Path | None = None,
    rfm_interval: float = DAY,
    with_models: bool = False,
    topic_prefix: str = "portrait",
) -> BacktestResult:
    """Load the tag catalogue and rule file (validated like the worker) and backtest an export."""
    catalogue = load_catalogue(tags_file)
    rules = load_rules(rules_path, catalogue.names | set(MODEL_TAGS))
    models = Models(load_models_config()) if with_models else None
    source = read_events(data, fmt=fmt, mapping=mapping, default_type=default_type, tz=tz)
    return run_backtest(
        rules,
        source,
        catalogue,
        horizon=horizon,
        rfm_interval=rfm_interval,
        models=models,
        topics=Topics(topic_prefix),
        keep_triggers=False,
    )


# --------------------------------------------------------------------------------------------
# Command line: portrait rules backtest RULES --data EXPORT
# --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="rules YAML (e.g. deploy/rules.yaml)")
    parser.add_argument("--data", required=True, help="JSONL or CSV export (optionally gzipped)")
    parser.add_argument(
        "--horizon",
        default="0",
        help="keep the time-driven evaluations going this long after the last event, e.g. 6h or 14d (default 0)",
    )
    parser.add_argument("--format", choices=["auto", "jsonl", "csv"], default="auto")
    parser.add_argument("--map", help="CSV column mapping, e.g. user=user_id,date=ts")
    parser.add_argument("--type", help="event type for CSV rows without a type column")
    parser.add_argument("--tz", default="UTC", help="time zone of naive CSV timestamps")
    parser.add_argument("--tags", help="tag catalogue YAML (default: the shipped one)")
    parser.add_argument("--rfm-interval", default="1d", help="RFM threshold refresh period in event time")
    parser.add_argument("--models", action="store_true", help="score churn/segment model tags (slower)")
    parser.add_argument("--topic-prefix", default="portrait", help="prefix of the trigger topics in the report")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    """Run the backtest described by ``args`` (see ``add_arguments``) and print the report."""
    try:
        horizon = parse_duration(args.horizon)
        rfm_interval = parse_duration(args.rfm_interval)
        mapping = parse_mapping(args.map) if args.map else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    data = Path(args.data)
    if not data.is_file():
        print(f"error: no such file: {data}", file=sys.stderr)
        return 2
    try:
        result = backtest_file(
            Path(args.file),
            data,
            horizon=horizon,
            fmt=args.format,
            mapping=mapping,
            default_type=args.type,
            tz=args.tz,
            tags_file=Path(args.tags) if args.tags else None,
            rfm_interval=rfm_interval,
            with_models=args.models,
            topic_prefix=args.topic_prefix,
        )
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(f"backtest of {args.file} on {data} ({result.seconds:.1f}s, nothing sent)")
        print(result.to_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point until the CLI wiring lands: ``python -m stream.offline.backtest RULES --data X``."""
    parser = argparse.ArgumentParser(prog="portrait rules backtest", description="offline rule backtest")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
