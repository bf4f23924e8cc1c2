"""Online behaviour segments and churn risk (pure: no Faust, Redis or Kafka; river only).

See docs/models.md. Entry points: ``load_models_config``, ``Models`` (with ``UserModelState``
per user), ``checkpoint.dump`` / ``checkpoint.restore``; offline evaluation on the worker's code path is
``stream.offline.evaluation``.
"""

from stream.models.checkpoint import CheckpointError, CorruptCheckpoint, IncompatibleCheckpoint, dump, restore
from stream.models.churn import (
    ChurnMetrics,
    ChurnModel,
    PendingExample,
    churn_band,
    format_risk,
    next_snapshot,
    resolve,
    take_snapshot,
)
from stream.models.config import FeatureSpec, ModelsConfig, load_models_config, parse_models_config
from stream.models.features import FeatureError, build_features, feature_columns
from stream.models.quality import brier, calibration_table, pr_auc, roc_auc
from stream.models.runtime import MODEL_TAGS, Models, StepResult, next_model_time, qualifying_ts
from stream.models.segments import SegmentDescription, SegmentModel, match_centroids, should_reassign
from stream.tagging.memory import UserModelState

__all__ = [
    "MODEL_TAGS",
    "CheckpointError",
    "ChurnMetrics",
    "ChurnModel",
    "CorruptCheckpoint",
    "FeatureError",
    "FeatureSpec",
    "IncompatibleCheckpoint",
    "Models",
    "ModelsConfig",
    "PendingExample",
    "SegmentDescription",
    "SegmentModel",
    "StepResult",
    "UserModelState",
    "brier",
    "build_features",
    "calibration_table",
    "churn_band",
    "dump",
    "feature_columns",
    "format_risk",
    "load_models_config",
    "match_centroids",
    "next_model_time",
    "next_snapshot",
    "parse_models_config",
    "pr_auc",
    "qualifying_ts",
    "resolve",
    "restore",
    "roc_auc",
    "should_reassign",
    "take_snapshot",
]
