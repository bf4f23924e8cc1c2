"""All models together, plus the per-user state the worker must keep to drive them.

``Models.score_step(user, profile, qualifying_ts, now)`` is the one call the worker needs per user
evaluation (on an event or on a timer): it resolves the user's pending churn examples whose label
window closed, re-assigns the segment when the cadence policy says so, takes a new churn snapshot
when due, and returns the model fields for the profile hash and what there is to learn (for the
single trainer, ``learn_item``). It mutates ``user`` (a ``UserModelState``), never the models.
``Models.step`` does the same and learns in place (the unit tests drive the models with it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from stream.models.churn import (
    ChurnModel,
    PendingExample,
    first_cadence_point,
    next_snapshot,
    resolve,
    take_snapshot,
)
from stream.models.config import ModelsConfig
from stream.models.features import Vector, build_features
from stream.models.segments import SegmentModel, should_reassign
from stream.tagging.memory import UserModelState
from stream.tagging.state import UserState

MODEL_TAGS: tuple[str, ...] = ("behaviour_segment", "churn_risk", "churn_band", "churn_model")
# Entries of each scoring memo (``Models.segment_features``/``churn_tags``) before it starts over.
MEMO_MAX = 65_536
Inputs = tuple[str | None, ...]


@dataclass
class StepResult:
    tags: dict[str, str]
    resolved: int | None = None  # label learned in this step, if any
    snapshot: bool = False
    reassigned: bool = False
    churn_features: Vector = field(default_factory=dict)


def qualifying_ts(state: UserState, config: ModelsConfig) -> float | None:
    """The user's latest qualifying activity time for the configured churn definition."""
    return state.last_order if config.churn.qualifying == "order" else state.last_activity


@dataclass
class ScoreResult:
    """A scoring-only step: tags to publish, and what the trainer must learn from (as JSON)."""

    tags: dict[str, str]
    learn: list[dict[str, Any]] = field(default_factory=list)
    next_due: float | None = None  # next_model_time after the step


class Models:
    """Segment model + churn model sharing one config. Picklable (see ``checkpoint``)."""

    def __init__(self, config: ModelsConfig) -> None:
        self.config = config
        self.segment_specs = config.segment_specs
        self.churn_specs = config.churn_specs
        self.segments = SegmentModel(config.segments, self.segment_specs)
        self.churn = ChurnModel(config.churn)
        self._memo()

    def _memo(self) -> None:
        # Scoring memos, by the values of the input tags (a profile's features are a pure function
        # of them, the churn tags too for one churn model version): users share the values of the
        # few inputs, so most evaluations find their scores here. Never pickled (checkpoints).
        self._segment_inputs = tuple(spec.tag for spec in self.segment_specs)
        self._churn_inputs = tuple(spec.tag for spec in self.churn_specs)
        self._features: dict[Inputs, Vector] = {}
        self._churn: dict[tuple[str, Inputs], tuple[Vector, dict[str, str]]] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for memo in ("_segment_inputs", "_churn_inputs", "_features", "_churn"):
            state.pop(memo, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._memo()

    def segment_features(self, profile: Mapping[str, str]) -> Vector:
        """``build_features(profile, self.segment_specs)``, memoised (shared: do not mutate it)."""
        key = tuple(map(profile.get, self._segment_inputs))
        x = self._features.get(key)
        if x is None:
            x = build_features(profile, self.segment_specs)
            if len(self._features) >= MEMO_MAX:
                self._features.clear()
            self._features[key] = x
        return x

    def churn_tags(self, profile: Mapping[str, str]) -> tuple[Vector, dict[str, str]]:
        """The churn features of ``profile`` and the churn model's tags for them, memoised per
        churn model version (it changes whenever the model learns)."""
        key = (self.churn.version, tuple(map(profile.get, self._churn_inputs)))
        hit = self._churn.get(key)
        if hit is None:
            x = build_features(profile, self.churn_specs)
            hit = (x, self.churn.tags(x))
            if len(self._churn) >= MEMO_MAX:
                self._churn.clear()
            self._churn[key] = hit
        return hit

    def eligible(self, profile: Mapping[str, str]) -> bool:
        """Whether the user is in the churn population: ``buyer`` (has an order on record, the
        customers a cutoff evaluation scores) or ``any`` (has activity on record)."""
        if self.config.churn.eligible == "buyer":
            return "days_since_last_order" in profile
        return "recency_days" in profile

    def _resolve(self, user: UserModelState, qualifying: float | None, now: float) -> list[tuple[PendingExample, int]]:
        """Take the user's pending examples whose label window has closed at ``now`` (oldest first),
        with their label; note a return seen in a window that is still open.

        Every label is learned when its window closes, also a return seen early: learning
        returns as soon as they happen would over-represent them among the recent examples (a
        churned label is only known a horizon after its snapshot), and bias the model's level."""
        horizon = self.config.churn.horizon
        done: list[tuple[PendingExample, int]] = []
        kept: list[PendingExample] = []
        changed = False
        for pending in user.pending:
            label = 0 if pending.returned else resolve(pending, qualifying, now, horizon)
            if now >= pending.deadline(horizon) and label is not None:
                done.append((pending, label))
                changed = True
            elif label == 0 and not pending.returned:
                kept.append(replace(pending, returned=True))
                changed = True
            else:
                kept.append(pending)
        if changed:
            user.pending = kept
        return done

    def _snapshot(self, user: UserModelState, profile: Mapping[str, str], x: Vector, now: float) -> bool:
        """Take a snapshot when the user's cadence says so (see ``churn.next_snapshot``)."""
        params = self.config.churn
        if not self.eligible(profile):
            return False
        if user.last_snapshot_ts is None:  # a new customer: the cadence starts at a phase of its own
            user.last_snapshot_ts = first_cadence_point(now, params.snapshot_interval) - params.snapshot_interval
        point = next_snapshot(user.last_snapshot_ts, now, params.snapshot_interval)
        if point is None:
            return False
        user.last_snapshot_ts = point
        if len(user.pending) >= params.max_pending:
            return False  # only after a late evaluation: the cadence moves on, memory stays bounded
        user.pending.append(take_snapshot(x, now))
        return True

    def resolve_pending(self, user: UserModelState, qualifying: float | None, now: float) -> int | None:
        """Resolve and learn the user's pending examples whose label is known at ``now``; returns
        the label of the last one resolved (None: none)."""
        label: int | None = None
        for pending, label in self._resolve(user, qualifying, now):
            self.churn.learn(pending, label)
        return label

    def step(
        self,
        user: UserModelState,
        profile: Mapping[str, str],
        qualifying: float | None,
        now: float,
        allow_snapshot: bool = True,
    ) -> StepResult:
        """One model update for one user at ``now``, learning in place (see module docstring).

        ``profile`` is the tag dict from ``stream.tagging.engine.evaluate`` at ``now``;
        ``qualifying`` is ``qualifying_ts(state, config)``. ``allow_snapshot=False`` suppresses new
        snapshots (their labels could not resolve: the data or the user's retention ends first).
        """
        result = StepResult(tags={})
        result.resolved = self.resolve_pending(user, qualifying, now)

        x_seg = build_features(profile, self.segment_specs)
        if should_reassign(user.segment_vector, x_seg, user.segment_ts, now, self.config.segments.reassign):
            user.segment = self.segments.learn_assign(x_seg)
            user.segment_vector = x_seg
            user.segment_ts = now
            result.reassigned = True
        if user.segment is not None:
            result.tags["behaviour_segment"] = user.segment

        x_churn = build_features(profile, self.churn_specs)
        result.churn_features = x_churn
        result.snapshot = allow_snapshot and self._snapshot(user, profile, x_churn, now)
        result.tags.update(self.churn.tags(x_churn))
        return result

    def score_step(
        self,
        user: UserModelState,
        profile: Mapping[str, str],
        qualifying: float | None,
        now: float,
        allow_snapshot: bool = True,
    ) -> ScoreResult:
        """Like ``step`` but never learns: what to learn is returned for the single trainer.

        Workers score with the last published model; learning happens in one place so every worker
        scores with the same versioned model. Items of ``learn``: ``{"kind": "churn", "x": ..., "ts":
        ..., "y": 0|1}`` for a resolved example, ``{"kind": "segment", "x": ...}`` for a segment vector.
        ``next_due`` is ``next_model_time(user, now)`` after the step.
        """
        result = ScoreResult(tags={})
        for pending, label in self._resolve(user, qualifying, now):
            result.learn.append({"kind": "churn", **pending.to_json(), "y": label})
        x_seg = self.segment_features(profile)
        if should_reassign(user.segment_vector, x_seg, user.segment_ts, now, self.config.segments.reassign):
            user.segment = self.segments.assign(x_seg)
            user.segment_vector = dict(x_seg)
            user.segment_ts = now
            result.learn.append({"kind": "segment", "x": user.segment_vector})
        if user.segment is not None:
            result.tags["behaviour_segment"] = user.segment
        x_churn, churn_tags = self.churn_tags(profile)
        if allow_snapshot:
            self._snapshot(user, profile, x_churn, now)
        result.next_due = next_model_time(user, now, self.config)
        result.tags.update(churn_tags)
        return result

    def learn_item(self, item: Mapping[str, Any]) -> None:
        """Apply one item produced by ``score_step`` (the trainer's side)."""
        if item["kind"] == "churn":
            self.churn.learn(PendingExample.from_json(item), int(item["y"]))
        elif item["kind"] == "segment":
            self.segments.learn({str(k): float(v) for k, v in item["x"].items()})


def next_model_time(user: UserModelState, now: float, config: ModelsConfig) -> float | None:
    """The next time after ``now`` at which the models need this user evaluated without an event:
    the earliest label deadline of a pending snapshot, or the next snapshot cadence point
    (``None``: nothing due, e.g. never snapshotted: the first snapshot comes with an event).

    Pure. Between ``now`` and that time a model step changes nothing but the published score
    (which moves only when the tags do), so the time-driven path may skip the user until then.
    A new qualifying activity (an event) can resolve a pending example earlier; that comes with the
    event's own evaluation.
    """
    params = config.churn
    times = [p.deadline(params.horizon) for p in user.pending]
    if user.last_snapshot_ts is not None:
        times.append(user.last_snapshot_ts + params.snapshot_interval)
    later = [t for t in times if t > now]
    return min(later) if later else None
