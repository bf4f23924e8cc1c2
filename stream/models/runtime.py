"""All models together, plus the per-user state the worker must keep to drive them.

``Models.step(user, profile, qualifying_ts, now)`` is the one call the worker needs per user
evaluation (on an event or on a timer): it resolves the user's pending churn example, re-assigns
the segment when the cadence policy says so, takes a new churn snapshot when due, and returns
the model fields for the profile hash. It mutates ``user`` (a ``UserModelState``) and the models.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stream.models.churn import ChurnModel, PendingExample, resolve, snapshot_due, take_snapshot
from stream.models.config import ModelsConfig
from stream.models.features import Vector, build_features
from stream.models.segments import SegmentModel, should_reassign
from stream.tagging.memory import UserModelState
from stream.tagging.state import UserState

MODEL_TAGS: tuple[str, ...] = ("behaviour_segment", "churn_risk", "churn_band", "churn_model")


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
    pending_deadline: float | None = None


class Models:
    """Segment model + churn model sharing one config. Picklable (see ``checkpoint``)."""

    def __init__(self, config: ModelsConfig) -> None:
        self.config = config
        self.segment_specs = config.segment_specs
        self.churn_specs = config.churn_specs
        self.segments = SegmentModel(config.segments, self.segment_specs)
        self.churn = ChurnModel(config.churn)

    def eligible(self, profile: Mapping[str, str]) -> bool:
        if self.config.churn.eligible == "buyer":
            return "days_since_last_order" in profile
        return "recency_days" in profile

    def resolve_pending(self, user: UserModelState, qualifying: float | None, now: float) -> int | None:
        """Resolve and learn the user's pending example if its label is known at ``now``."""
        if user.pending is None:
            return None
        label = resolve(user.pending, qualifying, now, self.config.churn.horizon)
        if label is not None:
            self.churn.learn(user.pending, label)
            user.pending = None
        return label

    def step(
        self,
        user: UserModelState,
        profile: Mapping[str, str],
        qualifying: float | None,
        now: float,
        allow_snapshot: bool = True,
    ) -> StepResult:
        """One model update for one user at ``now`` (see module docstring). Returns the model tags.

        ``profile`` is the tag dict from ``stream.tagging.engine.evaluate`` at ``now``;
        ``qualifying`` is ``qualifying_ts(state, config)``. ``allow_snapshot=False`` suppresses new
        snapshots (used by replays near the end of the data, whose labels could never resolve).
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
        if (
            allow_snapshot
            and self.eligible(profile)
            and snapshot_due(user.pending, user.last_snapshot_ts, now, self.config.churn.snapshot_interval)
        ):
            user.pending = take_snapshot(x_churn, now)
            user.last_snapshot_ts = now
            result.snapshot = True
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
        """
        result = ScoreResult(tags={})
        if user.pending is not None:
            label = resolve(user.pending, qualifying, now, self.config.churn.horizon)
            if label is not None:
                result.learn.append({"kind": "churn", **user.pending.to_json(), "y": label})
                user.pending = None
        x_seg = build_features(profile, self.segment_specs)
        if should_reassign(user.segment_vector, x_seg, user.segment_ts, now, self.config.segments.reassign):
            user.segment = self.segments.assign(x_seg)
            user.segment_vector = x_seg
            user.segment_ts = now
            result.learn.append({"kind": "segment", "x": x_seg})
        if user.segment is not None:
            result.tags["behaviour_segment"] = user.segment
        x_churn = build_features(profile, self.churn_specs)
        if (
            allow_snapshot
            and self.eligible(profile)
            and snapshot_due(user.pending, user.last_snapshot_ts, now, self.config.churn.snapshot_interval)
        ):
            user.pending = take_snapshot(x_churn, now)
            user.last_snapshot_ts = now
        if user.pending is not None:
            result.pending_deadline = user.pending.deadline(self.config.churn.horizon)
        result.tags.update(self.churn.tags(x_churn))
        return result

    def learn_item(self, item: Mapping[str, Any]) -> None:
        """Apply one item produced by ``score_step`` (the trainer's side)."""
        if item["kind"] == "churn":
            self.churn.learn(PendingExample.from_json(item), int(item["y"]))
        elif item["kind"] == "segment":
            self.segments.learn({str(k): float(v) for k, v in item["x"].items()})
