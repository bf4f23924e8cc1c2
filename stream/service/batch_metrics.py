"""What a written batch records in Prometheus: outcomes, decisions, effect counters, latencies."""

from __future__ import annotations

import time
from collections.abc import Iterable

from stream.core.batch import BatchPlan
from stream.core.intake import Valid
from stream.core.writes import UserWrite
from stream.metrics import Metrics
from stream.rules.counters import EffectCounter, parsed


def record_decisions(metrics: Metrics, writes: Iterable[UserWrite]) -> None:
    """Rule firings (sent or suppressed, by reason) and exposure/conversion counters of ``writes``."""
    for w in writes:
        for counter, n in parsed(w.counters):
            if isinstance(counter, EffectCounter):
                metrics.rule_effect.labels(counter.rule, counter.group, counter.what).inc(n)
        for d in w.decisions:
            if d.outcome == "send":
                metrics.triggers_sent.labels(d.rule).inc()
            else:
                metrics.triggers_suppressed.labels(d.rule, d.reason).inc()


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
    for item in valid:
        metrics.events.labels(item.message.topic, item.event.type).inc()
    metrics.batch_size.observe(messages)
    metrics.consume_to_profile.observe(time.perf_counter() - received)
    if finished is not None:
        for item in valid:
            metrics.event_to_profile.observe(max(0.0, finished - item.event.epoch))
