"""What a written batch records in Prometheus: outcomes, decisions, effect counters, latencies."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable

from stream.core.batch import BatchPlan
from stream.core.intake import Valid
from stream.core.writes import UserWrite
from stream.metrics import Metrics
from stream.rules.counters import EffectCounter, parsed


def record_decisions(metrics: Metrics, writes: Iterable[UserWrite]) -> None:
    """Rule firings (sent or suppressed, by reason) and exposure/conversion counters of ``writes``."""
    # summed over the batch first: one labelled increment per series, not one per user or firing
    totals: Counter[str] = Counter()
    sent: Counter[str] = Counter()
    suppressed: Counter[tuple[str, str]] = Counter()
    for w in writes:
        totals.update(w.counters)
        for d in w.decisions:
            if d.outcome == "send":
                sent[d.rule] += 1
            else:
                suppressed[(d.rule, d.reason)] += 1
    for counter, n in parsed(totals):
        if isinstance(counter, EffectCounter):
            metrics.rule_effect.labels(counter.rule, counter.group, counter.what).inc(n)
    for rule, n in sent.items():
        metrics.triggers_sent.labels(rule).inc(n)
    for (rule, reason), n in suppressed.items():
        metrics.triggers_suppressed.labels(rule, reason).inc(n)


def record_batch(
    metrics: Metrics, plan: BatchPlan, valid: list[Valid], messages: int, received: float, finished: float | None
) -> None:
    """A written batch's identity outcomes, event outcomes and latencies. ``received``: its
    ``perf_counter`` on arrival; ``finished``: the wall clock after the write (None in event time,
    where event-to-profile latency means nothing)."""
    for key, n in plan.identity.items():
        metrics.identity.labels(key.removeprefix("identity_refused_").removeprefix("identity_")).inc(n)
    for kind, n in plan.outcomes.items():
        metrics.applied.labels(kind).inc(n)
    # one labelled increment per (topic, type) of the batch, not one per event
    consumed = Counter((item.message.topic, item.event.type) for item in valid)
    for (topic, kind), n in consumed.items():
        metrics.events.labels(topic, kind).inc(n)
    metrics.batch_size.observe(messages)
    metrics.consume_to_profile.observe(time.perf_counter() - received)
    if finished is not None:
        observe = metrics.event_to_profile.observe
        for item in valid:
            observe(max(0.0, finished - item.event.epoch))
