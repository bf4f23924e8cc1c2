"""Churn risk: online logistic regression trained from delayed labels, resolved in event time.

Label definition (``churn`` in ``stream/models.yaml``): a snapshot of a user's features taken at
``ts`` is *churned* (1) when the user has no qualifying activity (default: a paid order) in
``(ts, ts + horizon]``, and *retained* (0) as soon as such activity is seen. Resolution is driven
by ``now`` (wall clock, or the watermark in event-time replays), so it fits the time-driven path:
call ``resolve`` whenever the user's qualifying timestamp advances and when ``now`` reaches
``pending.ts + horizon`` (``deadline``).

Progressive validation: every resolved example is scored by the current model *before* it is
learned from; the score feeds a rolling ROC AUC, a log loss and an ADWIN drift detector on the
absolute error. A recency-only baseline (the value of ``baseline_feature`` in the snapshot, e.g.
scaled days since the last order: higher = more likely churned) is scored on the same examples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from river import (
    drift as _drift,
    linear_model as _linear_model,
    metrics as _metrics,
    optim as _optim,
)

from stream.models.calibration import PlattCalibrator
from stream.models.config import ChurnBands, ChurnParams
from stream.models.features import Vector
from stream.models.quality import roc_auc
from stream.tagging.memory import PendingExample

GOLDEN = (math.sqrt(5) - 1) / 2

# river is only partly annotated: use it through ``Any`` so mypy --strict accepts the calls.
drift: Any = _drift
linear_model: Any = _linear_model
metrics: Any = _metrics
optim: Any = _optim


def take_snapshot(features: Mapping[str, float], now: float) -> PendingExample:
    """Freeze ``features`` as a pending example at ``now`` (copied, rounded to 4 decimals: it is
    stored in the user's state until the label resolves, and the model cannot use more)."""
    return PendingExample(features={k: round(v, 4) for k, v in features.items()}, ts=float(now))


def resolve(
    pending: PendingExample, last_qualifying_activity_ts: float | None, now: float, horizon: float
) -> int | None:
    """The label of ``pending`` at ``now``: 0 (came back), 1 (churned) or ``None`` (not yet known).

    * 0 when ``pending.ts < last_qualifying_activity_ts <= pending.ts + horizon``;
    * 1 when ``now >= pending.ts + horizon`` and the latest qualifying activity is not in that range
      (none, at/before the snapshot, or — only when the caller resolved late — after the deadline);
    * ``None`` otherwise.
    Contract: call it whenever the qualifying timestamp advances (so a return inside the horizon is
    not hidden by a later one) and when ``now`` passes the deadline. Pure.
    """
    deadline = pending.ts + horizon
    last = last_qualifying_activity_ts
    if last is not None and pending.ts < last <= deadline:
        return 0
    if now >= deadline:
        return 1
    return None


def first_cadence_point(now: float, interval: float) -> float:
    """A user's first snapshot time, after their first eligible evaluation at ``now``: a phase in
    ``[0, interval)`` spread deterministically over users by ``now`` (golden-ratio hashing), so the
    first snapshot is not the moment of the first order (every first snapshot would then have zero
    days since the last order, and a young model would learn nothing about recency)."""
    return now + math.fmod(now * GOLDEN, 1.0) * interval


def next_snapshot(last_snapshot_ts: float | None, now: float, interval: float) -> float | None:
    """The cadence point of a snapshot due at ``now``, or ``None`` when none is due. Pure.

    Snapshots follow a fixed cadence per user, whatever the user does: every ``interval`` after
    the user's first cadence point (``first_cadence_point``; ``last_snapshot_ts`` holds the latest
    point, or that first point minus ``interval`` before any snapshot). A late evaluation takes the
    latest cadence point it passed; the cadence does not shift. So the examples are the population
    that is scored (every customer, active or lapsed, at arbitrary moments), not moments right
    after activity."""
    if last_snapshot_ts is None or now - last_snapshot_ts < interval:
        return None
    return last_snapshot_ts + math.floor((now - last_snapshot_ts) / interval) * interval


def churn_band(p: float, bands: ChurnBands) -> str:
    """``low`` below ``bands.medium``, ``high`` from ``bands.high``, else ``medium``."""
    if p >= bands.high:
        return "high"
    if p >= bands.medium:
        return "medium"
    return "low"


def format_risk(p: float) -> str:
    return f"{p:.4f}"


@dataclass(frozen=True)
class ChurnMetrics:
    examples: int
    positive_rate: float
    auc: float  # rolling ROC AUC of the model (progressive)
    baseline_auc: float  # same window, recency-only baseline
    log_loss: float
    drifts: int
    drift_detected: bool  # ADWIN fired on the latest resolved example
    version: str


class ChurnModel:
    """LogisticRegression (river) on the configured features, Platt calibration, progressive metrics.

    ``score(x)`` is the calibrated churn probability; ``learn(example, label)`` scores the example
    with the current model and calibration, updates the metrics, the baseline and the drift
    detector, then the calibration learns the raw score (out of sample) and the model the example.
    ``version`` is the number of learned examples as a string (changes whenever the model does).
    """

    def __init__(self, params: ChurnParams) -> None:
        self.params = params
        self.calibrator = PlattCalibrator() if params.calibration == "platt" else None
        # No StandardScaler: the features are scaled in models.yaml, and a running variance learned
        # while a column is (nearly) constant, as early in a replay, blows up the values seen later.
        self.pipeline: Any = linear_model.LogisticRegression(optimizer=optim.SGD(params.learning_rate), l2=params.l2)
        self.auc: Any = metrics.RollingROCAUC(window_size=params.auc_window)
        self.baseline_auc: Any = metrics.RollingROCAUC(window_size=params.auc_window)
        self.log_loss: Any = metrics.LogLoss()
        self.adwin: Any = drift.ADWIN(delta=params.adwin_delta)
        self.n_learned = 0
        self.positives = 0
        self.drifts = 0
        self.drift_detected = False
        # (label, score, baseline, snapshot time) of every learned example, when set (offline evaluation)
        self.record: list[tuple[int, float, float, float]] | None = None

    @property
    def version(self) -> str:
        return str(self.n_learned)

    def raw_score(self, x: Mapping[str, float]) -> float:
        """The logistic regression's probability (0.5 before anything was learned)."""
        proba = self.pipeline.predict_proba_one(dict(x))
        p = float(proba.get(True, 0.5)) if proba else 0.5
        return min(max(p, 0.0), 1.0)

    def score(self, x: Mapping[str, float]) -> float:
        """Probability of churn within the horizon: the raw score calibrated (``calibration``)."""
        return self._calibrated(self.raw_score(x))

    def _calibrated(self, raw: float) -> float:
        return self.calibrator.calibrate(raw) if self.calibrator is not None else raw

    def baseline(self, x: Mapping[str, float]) -> float:
        """Recency-only score: the snapshot's ``baseline_feature`` value (monotone in days since last order)."""
        return float(x.get(self.params.baseline_feature, 0.0))

    def learn(self, example: PendingExample, label: int) -> float:
        """Progressive step: score ``example`` (before learning), update metrics, learn. Returns the score."""
        y = bool(label)
        raw = self.raw_score(example.features)
        p = self._calibrated(raw)
        self.auc.update(y, p)
        self.baseline_auc.update(y, self.baseline(example.features))
        self.log_loss.update(y, {True: p, False: 1.0 - p})
        self.adwin.update(abs(float(y) - p))
        self.drift_detected = bool(self.adwin.drift_detected)
        if self.drift_detected:
            self.drifts += 1
        self.positives += int(y)
        if self.record is not None:
            self.record.append((int(y), p, self.baseline(example.features), example.ts))
        if self.calibrator is not None:
            self.calibrator.learn(raw, label)
        self.pipeline.learn_one(dict(example.features), y)
        self.n_learned += 1
        return p

    def tags(self, x: Mapping[str, float]) -> dict[str, str]:
        """Profile fields for one user: ``churn_risk`` ("0.1234"), ``churn_band``, ``churn_model``."""
        p = self.score(x)
        return {
            "churn_risk": format_risk(p),
            "churn_band": churn_band(p, self.params.bands),
            "churn_model": self.version,
        }

    def metrics(self) -> ChurnMetrics:
        n = self.n_learned
        return ChurnMetrics(
            examples=n,
            positive_rate=self.positives / n if n else 0.0,
            auc=float(self.auc.get()) if n else math.nan,
            baseline_auc=float(self.baseline_auc.get()) if n else math.nan,
            log_loss=float(self.log_loss.get()) if n else math.nan,
            drifts=self.drifts,
            drift_detected=self.drift_detected,
            version=self.version,
        )


__all__ = [
    "ChurnMetrics",
    "ChurnModel",
    "PendingExample",
    "Vector",
    "churn_band",
    "first_cadence_point",
    "format_risk",
    "next_snapshot",
    "resolve",
    "roc_auc",
    "take_snapshot",
]
