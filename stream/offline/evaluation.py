"""Offline model evaluation at cutoffs (``portrait evaluate EXPORT``), on the worker's code path.

**Cutoff evaluation** (what a marketer acting on ``churn_risk`` gets). The export is replayed once
by ``stream.offline.driver`` (the processor scoring with published checkpoints, the trainer
learning in-process from the labels the time-driven path resolves, all in event time, on a scratch
Redis namespace). At each cutoff the replay pauses (``drive(pauses=...)``): everything before the
cutoff has been applied and learned from, nothing after it. Then every *customer* (a subject with
a qualifying order, or activity for ``qualifying: activity``, before the cutoff) is scored:

* ``portrait``: the ``churn_risk`` of the profile the worker would publish at the cutoff (a
  customer without a profile then, e.g. deleted by retention, counts as risk 1.0 and is counted in
  ``without_profile``);
* ``recency``: days since the customer's last qualifying order (ranking only: no probability);
* ``bgnbd``: BG/NBD fitted offline on the same history before the cutoff (``stream.offline.btyd``;
  needs the ``evaluation`` extra, skipped with a note without it).

The label comes from the data after the cutoff: churned (1) when the customer has no qualifying
event in ``[cutoff, cutoff + horizon)``. Reported per scorer: ROC AUC, PR AUC (churned = positive),
Brier score and a decile calibration table (probabilities only), from ``stream.models.quality``.
Cutoffs must leave a full horizon of data after them; by default they are at 50 % and 75 % of
``[first event, last event - horizon]``, at UTC midnight.

The replay stops at the last cutoff (nothing after it is needed: labels are read from the data).

**Progressive** (what ``portrait models status`` shows live): each resolved example is scored by
the trainer's model just before it learns it, up to the last cutoff. Only examples whose label
window ends within the replayed data count. These examples are snapshots on the model's cadence,
a different population from a cutoff's customers: the number is a learning curve, not the
score's quality for a campaign.

Segment purity is measured on the segments the worker published against a ``user id -> persona``
mapping when one is given (synthetic data).
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from stream.contracts.events import parse_event
from stream.contracts.topics import Topics
from stream.kafka.replay import Format, read_events, route
from stream.models.churn import churn_band
from stream.models.config import ModelsConfig, load_models_config
from stream.models.quality import brier, calibration_error, calibration_table, pr_auc, roc_auc
from stream.models.segments import SegmentDescription
from stream.offline import btyd
from stream.offline.driver import drive
from stream.settings import Settings
from stream.storage.store import Store
from stream.tagging.definitions import TagCatalogue, load_catalogue
from stream.tagging.engine import iso
from stream.tagging.state import DAY, UserState

DEFAULT_CUTOFF_FRACTIONS = (0.5, 0.75)
NO_PROFILE_RISK = 1.0


class CutoffError(ValueError):
    """A cutoff the data cannot evaluate (names the cutoff and why)."""


class CalibrationRow(BaseModel):
    model_config = ConfigDict(frozen=True)

    n: int
    predicted: float
    observed: float


class ScorerResult(BaseModel):
    """One scorer at one cutoff. ``brier``/``calibration`` only for probabilities."""

    model_config = ConfigDict(frozen=True)

    roc_auc: float | None
    pr_auc: float | None
    brier: float | None = None
    calibration_error: float | None = None
    calibration: list[CalibrationRow] | None = None


class BandResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    customers: int
    churned_rate: float | None


class CutoffResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    cutoff: str  # ISO 8601 (UTC)
    cutoff_ts: float
    horizon_days: float
    customers: int  # with a qualifying order (or activity) before the cutoff
    churned: int  # of them, without one in [cutoff, cutoff + horizon)
    positive_rate: float | None
    without_profile: int  # customers Portrait had no profile for at the cutoff (scored 1.0)
    median_risk: float | None
    portrait: ScorerResult
    recency: ScorerResult
    bgnbd: ScorerResult | None  # None: the evaluation extra is not installed
    bands: dict[str, BandResult]  # Portrait's churn_band: customers and their observed churn rate


class ProgressiveResult(BaseModel):
    """The trainer's own examples (its cadence snapshots), each scored before it was learned."""

    model_config = ConfigDict(frozen=True)

    examples: int
    learned: int
    positive_rate: float | None
    censored: int
    auc_model: float | None
    auc_recency_baseline: float | None
    brier: float | None
    log_loss: float | None
    drifts: int


class SegmentResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    purity: float | None
    descriptions: list[dict[str, Any]]
    composition: dict[str, dict[str, int]]


class EvaluationReport(BaseModel):
    """What ``portrait evaluate`` prints (``--json``: this document) and saves for ``models status``."""

    model_config = ConfigDict(frozen=True)

    source: str
    events: int  # valid events in the data
    users: int  # users replayed (up to the last cutoff)
    start: str | None
    end: str | None
    horizon_days: float
    qualifying: str
    cutoffs: list[CutoffResult]
    progressive: ProgressiveResult
    segments: SegmentResult
    notes: list[str]
    evaluated_at: str
    seconds: float

    # shorthand used by tests and the text report
    @property
    def auc_model(self) -> float:
        return _nan(self.progressive.auc_model)

    @property
    def auc_baseline(self) -> float:
        return _nan(self.progressive.auc_recency_baseline)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_text(self) -> str:
        lines = [
            f"{self.source}: {self.events:,} events, {self.users:,} users, {self.start} .. {self.end}",
            f"churned = no qualifying {self.qualifying} within {self.horizon_days:g} days after the cutoff",
        ]
        for c in self.cutoffs:
            lines += [
                "",
                f"cutoff {c.cutoff}: {c.customers:,} customers, {c.churned:,} churned "
                f"({_fmt(c.positive_rate, '.1%')}); without a profile {c.without_profile:,}; "
                f"median churn_risk {_fmt(c.median_risk, '.3f')}",
                f"  {'scorer':<10} {'ROC AUC':>8} {'PR AUC':>8} {'Brier':>8} {'ECE':>7}",
            ]
            for name, s in (("portrait", c.portrait), ("recency", c.recency), ("bgnbd", c.bgnbd)):
                if s is None:
                    continue
                lines.append(
                    f"  {name:<10} {_fmt(s.roc_auc, '.4f'):>8} {_fmt(s.pr_auc, '.4f'):>8} "
                    f"{_fmt(s.brier, '.4f'):>8} {_fmt(s.calibration_error, '.3f'):>7}"
                )
            for name, s in (("portrait", c.portrait), ("bgnbd", c.bgnbd)):
                if s is not None and s.calibration:
                    cells = " ".join(f"{r.predicted:.2f}/{r.observed:.2f}" for r in s.calibration)
                    lines.append(f"  calibration {name} (decile predicted/observed): {cells}")
            bands = ", ".join(
                f"{b} {r.customers:,} ({_fmt(r.churned_rate, '.0%')} churned)" for b, r in c.bands.items()
            )
            lines.append(f"  bands: {bands}")
        p = self.progressive
        lines += [
            "",
            f"progressive (the trainer's own cadence snapshots, each scored before it was learned; not the "
            f"customers a cutoff scores): {p.examples:,} examples, AUC {_fmt(p.auc_model, '.4f')} vs recency "
            f"{_fmt(p.auc_recency_baseline, '.4f')}, Brier {_fmt(p.brier, '.4f')}, positive rate "
            f"{_fmt(p.positive_rate, '.3f')}, drifts {p.drifts}",
        ]
        if self.segments.purity is not None:
            lines.append(f"segment purity {self.segments.purity:.3f}")
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"took {self.seconds:.1f}s (worker code on a scratch Redis namespace)")
        return "\n".join(lines)


def _nan(x: float | None) -> float:
    return math.nan if x is None else x


def _num(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 6)


def _fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else iso(ts)


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
class History:
    """Qualifying event times per subject, read from the export independently of the replay, and
    every item's event time (``None``: not a valid event)."""

    times: dict[str, list[float]] = field(default_factory=dict)
    start: float | None = None
    end: float | None = None
    epochs: list[float | None] = field(default_factory=list)


def history_of(items: Sequence[dict[str, Any] | bytes], qualifying: str, topics: Topics) -> History:
    """Every valid event's subject and time; ``qualifying`` ``order`` keeps paid orders, ``activity``
    every event but ``identify`` (the state's ``last_order`` / ``last_activity``)."""
    out = History()
    for item in items:
        _, _, value, _ = route(item, topics)
        try:
            event = parse_event(value)
        except ValidationError:
            out.epochs.append(None)
            continue
        ts = event.epoch
        out.epochs.append(ts)
        out.start = ts if out.start is None else min(out.start, ts)
        out.end = ts if out.end is None else max(out.end, ts)
        if event.type == "order_paid" if qualifying == "order" else event.type != "identify":
            out.times.setdefault(event.subject_id, []).append(ts)
    return out


def default_cutoffs(start: float, end: float, horizon: float) -> list[float]:
    """UTC midnights at ``DEFAULT_CUTOFF_FRACTIONS`` of ``[start, end - horizon]``."""
    last = end - horizon
    if last <= start:
        raise CutoffError(
            f"the data spans {(end - start) / DAY:.0f} days: no room for a {horizon / DAY:g}-day label window"
        )
    return sorted({math.floor((start + f * (last - start)) / DAY) * DAY for f in DEFAULT_CUTOFF_FRACTIONS})


def check_cutoffs(cutoffs: Sequence[float], start: float, end: float, horizon: float) -> list[float]:
    for c in cutoffs:
        if c <= start:
            raise CutoffError(f"cutoff {_iso(c)} is not after the first event ({_iso(start)})")
        if c + horizon > end:
            raise CutoffError(
                f"cutoff {_iso(c)}: its {horizon / DAY:g}-day label window ends after the last event ({_iso(end)})"
            )
    return sorted(set(cutoffs))


def _scorer(labels: list[int], scores: list[float], probability: bool) -> ScorerResult:
    if not probability:
        return ScorerResult(roc_auc=_num(roc_auc(labels, scores)), pr_auc=_num(pr_auc(labels, scores)))
    table = calibration_table(labels, scores)
    return ScorerResult(
        roc_auc=_num(roc_auc(labels, scores)),
        pr_auc=_num(pr_auc(labels, scores)),
        brier=_num(brier(labels, scores)),
        calibration_error=_num(calibration_error(table)),
        calibration=[
            CalibrationRow(n=b.n, predicted=round(b.predicted, 4), observed=round(b.observed, 4)) for b in table
        ],
    )


def score_cutoff(
    cutoff: float,
    history: History,
    profiles: Mapping[str, Mapping[str, str]],
    config: ModelsConfig,
    with_bgnbd: bool,
) -> CutoffResult:
    """The cutoff's customers, labels and the three scorers' metrics (see the module docstring)."""
    h = config.churn.horizon
    customers = sorted(u for u, ts in history.times.items() if any(t < cutoff for t in ts))
    labels = [0 if any(cutoff <= t < cutoff + h for t in history.times[u]) else 1 for u in customers]
    risks: list[float] = []
    bands: dict[str, list[int]] = {"low": [], "medium": [], "high": []}
    missing = 0
    for u, y in zip(customers, labels, strict=True):
        text = profiles.get(u, {}).get("churn_risk")
        if text is None:
            missing += 1
        risk = float(text) if text is not None else NO_PROFILE_RISK
        risks.append(risk)
        bands[churn_band(risk, config.churn.bands)].append(y)
    recency = [(cutoff - max(t for t in history.times[u] if t < cutoff)) / DAY for u in customers]
    bgnbd: ScorerResult | None = None
    if with_bgnbd and customers:
        summaries = {u: s for u in customers if (s := btyd.summarise(history.times[u], cutoff)) is not None}
        fitted = btyd.fit(summaries)
        bgnbd = _scorer(labels, [fitted.p_churn(summaries[u], h / DAY) for u in customers], True)
    ordered = sorted(risks)
    return CutoffResult(
        cutoff=_iso(cutoff) or "",
        cutoff_ts=cutoff,
        horizon_days=h / DAY,
        customers=len(customers),
        churned=sum(labels),
        positive_rate=sum(labels) / len(labels) if labels else None,
        without_profile=missing,
        median_risk=ordered[len(ordered) // 2] if ordered else None,
        portrait=_scorer(labels, risks, True),
        recency=_scorer(labels, recency, False),
        bgnbd=bgnbd,
        bands={
            b: BandResult(customers=len(ys), churned_rate=sum(ys) / len(ys) if ys else None) for b, ys in bands.items()
        },
    )


@dataclass
class _Final:
    """What the run left in Redis: published segments, pending examples, the trainer's status."""

    segments: dict[str, str] = field(default_factory=dict)
    pending_ts: list[float] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)


async def _read_final(store: Store, final: _Final, chunk: int = 500) -> None:
    uids = [uid async for uid in store.reads.stored_users()]
    for start in range(0, len(uids), chunk):  # one round trip per chunk of users
        part = uids[start : start + chunk]
        loaded, _, _ = await store.load(part)
        for uid in part:
            state: UserState | None = loaded[uid].state
            if state is None or state.models is None:
                continue
            user = state.models
            if user.segment is not None:
                final.segments[uid] = user.segment
            final.pending_ts.extend(p.ts for p in user.pending)
    final.status = await store.model_status()


def evaluate_events(
    settings: Settings,
    items: Iterable[dict[str, Any] | bytes],
    *,
    horizon: float | None = None,
    cutoffs: Sequence[float] | None = None,
    personas: Mapping[str, str] | None = None,
    config: ModelsConfig | None = None,
    catalogue: TagCatalogue | None = None,
    source: str = "<events>",
    bgnbd: bool = True,
) -> EvaluationReport:
    """Replay ``items`` (``read_events`` items or wire-format dicts) with fresh models and report.

    ``horizon`` (seconds) overrides the config's churn horizon; ``cutoffs`` (epoch seconds)
    default to ``default_cutoffs``; ``bgnbd=False`` (or the extra missing) leaves BG/NBD out.
    Raises ``CutoffError`` for a cutoff the data cannot label. Deterministic for the same inputs.
    """
    config = config or load_models_config(settings.models_file)
    if horizon is not None:
        config = config.model_copy(update={"churn": config.churn.model_copy(update={"horizon": float(horizon)})})
    catalogue = catalogue or load_catalogue(settings.tags_file)
    materialised = list(items)
    h = config.churn.horizon
    history = history_of(materialised, config.churn.qualifying, Topics(settings.topic_prefix))
    notes: list[str] = []
    if history.start is None or history.end is None:
        raise CutoffError("no valid event in the data")
    points = (
        check_cutoffs(cutoffs, history.start, history.end, h)
        if cutoffs
        else default_cutoffs(history.start, history.end, h)
    )
    with_bgnbd = bgnbd and btyd.available()
    if bgnbd and not with_bgnbd:
        notes.append(f"BG/NBD left out: {btyd.INSTALL_HINT}")
    final = _Final()
    at_cutoff: dict[float, dict[str, dict[str, str]]] = {}

    async def inspect(store: Store) -> None:
        await _read_final(store, final)

    def paused(at: float, profiles: dict[str, dict[str, str]]) -> None:
        at_cutoff[at] = {u: {k: p[k] for k in ("churn_risk",) if k in p} for u, p in profiles.items()}

    # nothing after the last cutoff is needed (labels are read from the data): the replay stops there
    last = points[-1]
    before = [item for item, ts in zip(materialised, history.epochs, strict=True) if ts is None or ts < last]
    replayed_end = max((ts for ts in history.epochs if ts is not None and ts < last), default=last)
    run = asyncio.run(
        drive(
            settings,
            before,
            catalogue=catalogue,
            models=config,
            learn=True,
            horizon=last - replayed_end,
            inspect=inspect,
            pauses=points,
            at_pause=paused,
        )
    )
    results = [score_cutoff(c, history, at_cutoff.get(c, {}), config, with_bgnbd) for c in points]
    end = last  # the replay's clock reached the last cutoff
    counted = [r for r in run.churn_record if r[3] + h <= end]
    labels = [y for y, _, _, _ in counted]
    churn = final.status.get("churn", {})
    log_loss = churn.get("log_loss")
    score, composition = purity(final.segments, personas) if personas is not None else (math.nan, {})
    return EvaluationReport(
        source=source,
        events=sum(1 for ts in history.epochs if ts is not None),
        users=run.users,
        start=_iso(history.start),
        end=_iso(history.end),
        horizon_days=h / DAY,
        qualifying=config.churn.qualifying,
        cutoffs=results,
        progressive=ProgressiveResult(
            examples=len(counted),
            learned=len(run.churn_record),
            positive_rate=sum(labels) / len(labels) if labels else None,
            censored=sum(1 for ts in final.pending_ts if ts + h <= end),
            auc_model=_num(roc_auc(labels, [p for _, p, _, _ in counted])),
            auc_recency_baseline=_num(roc_auc(labels, [b for _, _, b, _ in counted])),
            brier=_num(brier(labels, [p for _, p, _, _ in counted])),
            log_loss=float(log_loss) if log_loss is not None else None,
            drifts=int(churn.get("drifts", 0)),
        ),
        segments=SegmentResult(
            purity=_num(score),
            descriptions=[SegmentDescription(**d).__dict__ for d in final.status.get("segments", [])],
            composition=composition,
        ),
        notes=notes,
        evaluated_at=_iso(datetime.now(UTC).timestamp()) or "",
        seconds=round(run.seconds, 3),
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
    cutoffs: Sequence[float] | None = None,
    personas: Mapping[str, str] | None = None,
) -> EvaluationReport:
    """Evaluate the models on an export (``read_events`` options, as ``portrait replay``)."""
    source = read_events(data, fmt=fmt, mapping=mapping, default_type=default_type, tz=tz)
    return evaluate_events(settings, source, horizon=horizon, cutoffs=cutoffs, personas=personas, source=data.name)
