"""Offline model evaluation (``portrait evaluate EXPORT [--horizon 90d]``), on the worker's code path.

The export is replayed by ``stream.offline.driver`` (the processor scoring with published
checkpoints, the trainer learning in-process, everything in event time on a scratch Redis
namespace), so the examples are the ones the worker takes, when it takes them. The churn
metrics are progressive: each example is scored by the trainer's model just before it learns
from it (``ChurnModel.learn``), and the exact ROC AUC of that score and of the recency-only
baseline are computed over the same examples.

Censoring: only examples whose label window ends within the data (snapshot + horizon <= last
event) are counted; a later snapshot could only have resolved early, as "came back", which would
bias the positive rate down. ``censored`` counts counted examples still unresolved at the end (0
unless the time-driven path missed a deadline).

Segment purity is measured on the segments the worker published (``behaviour_segment`` of
the stored profiles at the end) against a ``user id -> persona`` mapping when one is given (e.g.
``portrait_dev.synth.personas`` for synthetic data); segment descriptions are the last published
checkpoint's.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream.kafka.replay import Format, read_events
from stream.models.churn import roc_auc
from stream.models.config import ModelsConfig, load_models_config
from stream.models.segments import SegmentDescription
from stream.offline.driver import drive
from stream.settings import Settings
from stream.storage.store import Store
from stream.tagging.definitions import TagCatalogue, load_catalogue
from stream.tagging.state import DAY, UserState


@dataclass
class EvaluationReport:
    horizon_days: float
    users: int
    events: int
    examples: int
    positive_rate: float
    censored: int  # counted examples (window within the data) still unresolved at the end
    auc_model: float  # exact progressive ROC AUC of the churn model
    auc_baseline: float  # exact ROC AUC of the recency-only baseline on the same examples
    log_loss: float  # the trainer's progressive log loss (all learned examples)
    rolling_auc: float  # the model's own RollingROCAUC (what the service exposes)
    drifts: int
    purity: float  # segment purity vs the persona mapping (nan without one)
    segments: list[SegmentDescription] = field(default_factory=list)
    composition: dict[str, dict[str, int]] = field(default_factory=dict)  # segment -> persona -> users
    learned: int = 0  # churn examples the trainer learned (before the censoring cut)
    checkpoints: int = 0
    seconds: float = 0.0

    @property
    def auc_margin(self) -> float:
        return self.auc_model - self.auc_baseline

    def to_dict(self) -> dict[str, Any]:
        def num(x: float) -> float | None:
            return None if math.isnan(x) else round(x, 6)

        return {
            "horizon_days": self.horizon_days,
            "users": self.users,
            "events": self.events,
            "churn": {
                "examples": self.examples,
                "learned": self.learned,
                "positive_rate": num(self.positive_rate),
                "censored": self.censored,
                "auc_model": num(self.auc_model),
                "auc_recency_baseline": num(self.auc_baseline),
                "auc_margin": num(self.auc_margin),
                "log_loss": num(self.log_loss),
                "rolling_auc": num(self.rolling_auc),
                "drifts": self.drifts,
            },
            "segments": {
                "purity": num(self.purity),
                "descriptions": [s.__dict__ for s in self.segments],
                "composition": self.composition,
            },
            "checkpoints": self.checkpoints,
            "seconds": round(self.seconds, 3),
        }

    def to_text(self) -> str:
        lines = [
            f"events {self.events}, users {self.users}, horizon {self.horizon_days:g}d",
            f"churn examples {self.examples} of {self.learned} learned (label window within the data; "
            f"positive rate {self.positive_rate:.3f}, censored {self.censored})",
            f"progressive AUC model {self.auc_model:.4f} vs recency baseline {self.auc_baseline:.4f} "
            f"(margin {self.auc_margin:+.4f}); log loss {self.log_loss:.4f}; drifts {self.drifts}",
            f"segment purity {self.purity:.3f}",
        ]
        for seg in self.segments:
            mix = self.composition.get(seg.segment_id, {})
            top = ", ".join(f"{p} {n}" for p, n in sorted(mix.items(), key=lambda kv: -kv[1])[:3])
            lines.append(f"  {seg.segment_id}: {seg.text} [{top}]")
        lines.append(
            f"took {self.seconds:.1f}s (worker code on a scratch Redis namespace, {self.checkpoints} checkpoints)"
        )
        return "\n".join(lines)


def purity(assignments: Mapping[str, str], truth: Mapping[str, str]) -> tuple[float, dict[str, dict[str, int]]]:
    """Share of users whose segment's majority persona is their own, and the composition table."""
    table: dict[str, Counter[str]] = {}
    for user, segment in assignments.items():
        if user in truth:
            table.setdefault(segment, Counter())[truth[user]] += 1
    total = sum(sum(c.values()) for c in table.values())
    score = sum(max(c.values()) for c in table.values()) / total if total else math.nan
    return score, {s: dict(c) for s, c in sorted(table.items())}


@dataclass
class _Final:
    """What the run left in Redis: published segments, pending examples, the trainer's status."""

    segments: dict[str, str] = field(default_factory=dict)
    pending_ts: list[float] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)


async def _read_final(store: Store, final: _Final) -> None:
    base = store.keys.base
    async for key in store.client.scan_iter(match=f"{base}:*:state", count=1000):
        uid = key.decode()[len(base) + 2 : -len("}:state")]
        loaded, _, _ = await store.load([uid])
        state: UserState | None = loaded[uid].state
        if state is None or state.models is None:
            continue
        user = state.models
        if user.segment is not None:
            final.segments[uid] = user.segment
        if user.pending is not None:
            final.pending_ts.append(user.pending.ts)
    final.status = await store.model_status()


def evaluate_events(
    settings: Settings,
    items: Iterable[dict[str, Any] | bytes],
    *,
    horizon: float | None = None,
    personas: Mapping[str, str] | None = None,
    config: ModelsConfig | None = None,
    catalogue: TagCatalogue | None = None,
) -> EvaluationReport:
    """Replay ``items`` (``read_events`` items or wire-format dicts) with fresh models and report.

    ``horizon`` (seconds) overrides the config's churn horizon. Deterministic for the same inputs.
    """
    config = config or load_models_config(settings.models_file)
    if horizon is not None:
        config = config.model_copy(update={"churn": config.churn.model_copy(update={"horizon": float(horizon)})})
    catalogue = catalogue or load_catalogue(settings.tags_file)
    final = _Final()

    async def inspect(store: Store) -> None:
        await _read_final(store, final)

    run = asyncio.run(drive(settings, items, catalogue=catalogue, models=config, learn=True, inspect=inspect))
    h = config.churn.horizon
    end = run.end if run.end is not None else -math.inf
    counted = [r for r in run.churn_record if r[3] + h <= end]
    labels = [y for y, _, _, _ in counted]
    churn = final.status.get("churn", {})

    def metric(name: str) -> float:
        value = churn.get(name)
        return float(value) if value is not None else math.nan

    score, composition = purity(final.segments, personas) if personas is not None else (math.nan, {})
    return EvaluationReport(
        horizon_days=h / DAY,
        users=run.users,
        events=run.applied,
        examples=len(counted),
        positive_rate=sum(labels) / len(labels) if labels else math.nan,
        censored=sum(1 for ts in final.pending_ts if ts + h <= end),
        auc_model=roc_auc(labels, [p for _, p, _, _ in counted]),
        auc_baseline=roc_auc(labels, [b for _, _, b, _ in counted]),
        log_loss=metric("log_loss"),
        rolling_auc=metric("auc"),
        drifts=int(churn.get("drifts", 0)),
        purity=score,
        segments=[SegmentDescription(**d) for d in final.status.get("segments", [])],
        composition=composition,
        learned=len(run.churn_record),
        checkpoints=run.checkpoints,
        seconds=run.seconds,
    )


def evaluate_file(
    settings: Settings,
    data: Path,
    *,
    fmt: Format = "auto",
    mapping: dict[str, str] | None = None,
    default_type: str | None = None,
    tz: str = "UTC",
    horizon: float | None = None,
    personas: Mapping[str, str] | None = None,
) -> EvaluationReport:
    """Evaluate the models on an export (``read_events`` options, as ``portrait replay``)."""
    source = read_events(data, fmt=fmt, mapping=mapping, default_type=default_type, tz=tz)
    return evaluate_events(settings, source, horizon=horizon, personas=personas)
