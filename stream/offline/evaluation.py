"""Offline evaluation by event-time replay (backs ``portrait evaluate FILE [--horizon 90d]``).

``evaluate_events`` folds the events into ``stream.tagging`` user states in event-time order and,
at every UTC midnight, evaluates each known user's profile and runs ``Models.step`` on it — the
same calls the worker makes on its timers. Churn examples are scored progressively (before being
learned from); the exact ROC AUC of the model and of the recency-only baseline are computed over
the same resolved examples. Snapshots are only taken while ``now + horizon`` is within the data,
so every example resolves (no censoring bias towards label 0). Segment purity is measured at the
end against a ``user id -> persona`` mapping (e.g. ``portrait_dev.synth.personas``).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stream.contracts.events import EVENT_ADAPTER, Event, OrderPaid
from stream.models.churn import roc_auc
from stream.models.config import ModelsConfig, load_models_config
from stream.models.features import build_features
from stream.models.runtime import Models, UserModelState, qualifying_ts
from stream.models.segments import SegmentDescription
from stream.tagging.definitions import TagParams, load_catalogue
from stream.tagging.engine import RfmThresholds, apply_event, day_of, evaluate, is_expired, prune
from stream.tagging.state import DAY, UserState


@dataclass
class EvaluationReport:
    horizon_days: float
    users: int
    events: int
    examples: int
    positive_rate: float
    censored: int  # pending examples still unresolved at the end (0 by construction)
    auc_model: float  # exact progressive ROC AUC of the churn model
    auc_baseline: float  # exact ROC AUC of the recency-only baseline on the same examples
    log_loss: float
    rolling_auc: float  # the model's own RollingROCAUC (what the service exposes)
    drifts: int
    purity: float  # segment purity vs the persona mapping (nan without one)
    segments: list[SegmentDescription] = field(default_factory=list)
    composition: dict[str, dict[str, int]] = field(default_factory=dict)  # segment -> persona -> users
    seconds: float = 0.0

    @property
    def auc_margin(self) -> float:
        return self.auc_model - self.auc_baseline

    def to_text(self) -> str:
        lines = [
            f"events {self.events}, users {self.users}, horizon {self.horizon_days:g}d",
            f"churn examples {self.examples} (positive rate {self.positive_rate:.3f}, censored {self.censored})",
            f"progressive AUC model {self.auc_model:.4f} vs recency baseline {self.auc_baseline:.4f} "
            f"(margin {self.auc_margin:+.4f}); log loss {self.log_loss:.4f}; drifts {self.drifts}",
            f"segment purity {self.purity:.3f}",
        ]
        for seg in self.segments:
            mix = self.composition.get(seg.segment_id, {})
            top = ", ".join(f"{p} {n}" for p, n in sorted(mix.items(), key=lambda kv: -kv[1])[:3])
            lines.append(f"  {seg.segment_id}: {seg.text} [{top}]")
        lines.append(f"took {self.seconds:.1f}s")
        return "\n".join(lines)


def _parse(events: Iterable[Mapping[str, Any] | Event]) -> list[Event]:
    parsed: list[Event] = [ev if not isinstance(ev, Mapping) else EVENT_ADAPTER.validate_python(ev) for ev in events]
    parsed.sort(key=lambda e: (e.epoch, e.event_id))
    return parsed


def purity(assignments: Mapping[str, str], truth: Mapping[str, str]) -> tuple[float, dict[str, dict[str, int]]]:
    """Share of users whose segment's majority persona is their own, and the composition table."""
    table: dict[str, Counter[str]] = {}
    for user, segment in assignments.items():
        if user in truth:
            table.setdefault(segment, Counter())[truth[user]] += 1
    total = sum(sum(c.values()) for c in table.values())
    score = sum(max(c.values()) for c in table.values()) / total if total else math.nan
    return score, {s: dict(c) for s, c in sorted(table.items())}


def evaluate_events(
    events: Iterable[Mapping[str, Any] | Event],
    horizon: float | None = None,
    personas: Mapping[str, str] | None = None,
    config: ModelsConfig | None = None,
    params: TagParams | None = None,
) -> EvaluationReport:
    """Replay ``events`` in event time with fresh models and report churn AUC and segment purity.

    ``events`` are wire-format dicts (as from ``portrait_dev.synth.generate``) or parsed events; invalid
    dicts raise ``pydantic.ValidationError``. ``horizon`` (seconds) overrides the config's churn
    horizon. Deterministic for the same inputs.
    """
    started = time.perf_counter()
    config = config or load_models_config()
    if horizon is not None:
        config = config.model_copy(update={"churn": config.churn.model_copy(update={"horizon": float(horizon)})})
    params = params or load_catalogue().params
    models = Models(config)
    record: list[tuple[int, float, float]] = []
    models.churn.record = record
    parsed = _parse(events)
    states: dict[str, UserState] = {}
    users: dict[str, UserModelState] = {}
    thresholds = RfmThresholds()
    h = config.churn.horizon
    if not parsed:
        return EvaluationReport(h / DAY, 0, 0, 0, math.nan, 0, math.nan, math.nan, math.nan, math.nan, 0, math.nan)
    end = float((day_of(parsed[-1].epoch) + 1) * DAY)

    def daily(now: float) -> None:
        for subject in sorted(states):
            state = states[subject]
            prune(state, now)
            if is_expired(state, now):
                continue
            profile = evaluate(state, now, thresholds, params)
            models.step(users[subject], profile, qualifying_ts(state, config), now, allow_snapshot=now + h <= end)

    day = day_of(parsed[0].epoch)
    for offset, event in enumerate(parsed):
        ts = event.epoch
        while (day + 1) * DAY <= ts:
            day += 1
            daily(float(day * DAY))
        subject = event.subject_id
        state = states.setdefault(subject, UserState())
        user = users.setdefault(subject, UserModelState())
        apply_event(state, event, "replay/0", offset, params)
        qualifies = isinstance(event, OrderPaid) if config.churn.qualifying == "order" else event.type != "identify"
        if qualifies and user.pending is not None:
            models.resolve_pending(user, qualifying_ts(state, config), ts)
    while day * DAY < end:
        day += 1
        daily(float(day * DAY))
    censored = 0
    for subject, user in users.items():
        if (
            user.pending is not None
            and models.resolve_pending(user, qualifying_ts(states[subject], config), end) is None
        ):
            censored += 1

    assignments: dict[str, str] = {}
    for subject, state in states.items():
        segment = models.segments.assign(build_features(evaluate(state, end, thresholds, params), models.segment_specs))
        if segment is not None:
            assignments[subject] = segment
    score, composition = purity(assignments, personas) if personas is not None else (math.nan, {})
    labels = [y for y, _, _ in record]
    churn_metrics = models.churn.metrics()
    models.churn.record = None
    return EvaluationReport(
        horizon_days=h / DAY,
        users=len(states),
        events=len(parsed),
        examples=len(record),
        positive_rate=sum(labels) / len(labels) if labels else math.nan,
        censored=censored,
        auc_model=roc_auc(labels, [p for _, p, _ in record]),
        auc_baseline=roc_auc(labels, [b for _, _, b in record]),
        log_loss=churn_metrics.log_loss,
        rolling_auc=churn_metrics.auc,
        drifts=churn_metrics.drifts,
        purity=score,
        segments=models.segments.describe(),
        composition=composition,
        seconds=time.perf_counter() - started,
    )
