"""Unit tests for the pure online models (stream/models): features, labels, bands, checkpoints,
stable segment ids (the end-to-end evaluation on the driver is in tests/integration/test_offline.py)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import orjson
import pytest

from stream.models import (
    CheckpointError,
    CorruptCheckpoint,
    FeatureError,
    IncompatibleCheckpoint,
    Models,
    ModelsConfig,
    PendingExample,
    SegmentModel,
    UserModelState,
    build_features,
    churn_band,
    dump,
    feature_columns,
    format_risk,
    load_models_config,
    match_centroids,
    next_snapshot,
    parse_models_config,
    resolve,
    restore,
    roc_auc,
    should_reassign,
    take_snapshot,
)
from stream.models.checkpoint import MAGIC
from stream.models.config import ChurnBands, FeatureSpec, ReassignPolicy
from stream.offline.evaluation import purity
from stream.settings import ConfigError

DAY = 86400.0
T0 = 1_790_000_000.0


@pytest.fixture(scope="module")
def config() -> ModelsConfig:
    return load_models_config()


# ---- config -------------------------------------------------------------------------------------


def test_shipped_config_loads(config: ModelsConfig) -> None:
    assert config.churn.horizon == 90 * DAY and config.churn.snapshot_interval == 30 * DAY
    assert config.churn.max_pending == 3
    assert config.churn.baseline_feature in feature_columns(config.churn_specs)
    assert config.segments.n_clusters == 8


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(body)
    return path


def test_config_error_names_file_item_and_field(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "version: 1\nfeatures:\n"
        "  - {name: f1, tag: events_7d, kind: number}\n"
        "  - {name: f2, tag: events_30d, kind: numbr}\n",
    )
    with pytest.raises(ConfigError) as err:
        load_models_config(path)
    assert str(err.value) == f"{path}: features[1] (f2).kind: Input should be 'number', 'money', 'bool' or 'category'"


def test_config_rejects_extra_unknown_tag_and_bad_references(tmp_path: Path) -> None:
    base = "version: 1\nfeatures:\n  - {name: f1, tag: days_since_last_order, kind: number}\n"
    with pytest.raises(ConfigError, match=r"features\[0\] \(f1\)\.colour: Extra inputs are not permitted"):
        load_models_config(_write(tmp_path, base.replace("kind: number", "kind: number, colour: red")))
    with pytest.raises(ConfigError, match=r"features\[0\] \(f1\)\.tag: unknown tag 'shoe_size'"):
        load_models_config(_write(tmp_path, base.replace("days_since_last_order", "shoe_size")))
    with pytest.raises(ConfigError, match=r"segments\.features\[0\]: unknown feature 'nope'"):
        load_models_config(_write(tmp_path, base + "segments: {features: [nope]}\n"))
    with pytest.raises(ConfigError, match=r"churn\.baseline_feature: 'days_since_last_order' is not a churn"):
        load_models_config(_write(tmp_path, base))  # the default baseline column is not produced (f1)
    with pytest.raises(ConfigError, match=r"<models config>: features\[1\] \(a\)\.name: duplicate feature 'a'"):
        parse_models_config(
            {
                "version": 1,
                "features": [{"name": "a", "tag": "events_7d", "kind": "number"}] * 2,
                "churn": {"baseline_feature": "a"},
            }
        )
    with pytest.raises(ConfigError, match=r"<models config>: churn\.bands: need medium < high$"):
        parse_models_config(
            {
                "version": 1,
                "features": [{"name": "a", "tag": "events_7d", "kind": "number"}],
                "churn": {"baseline_feature": "a", "bands": {"medium": 0.7, "high": 0.6}},
            }
        )


# ---- features -----------------------------------------------------------------------------------

SPECS = (
    FeatureSpec(name="money", tag="monetary_90d", kind="money", transform="log1p", scale=2.0),
    FeatureSpec(name="days", tag="days_since_last_order", kind="number", cap=120, missing=120, scale=30,
                missing_indicator=True),
    FeatureSpec(name="owl", tag="night_owl", kind="bool"),
    FeatureSpec(name="part", tag="preferred_daypart", kind="category",
                categories={"night": "night-time", "morning": "mornings"}),
)  # fmt: skip


def test_features_scaling_bool_and_one_hot() -> None:
    x = build_features(
        {"monetary_90d": "99.00", "days_since_last_order": "15", "night_owl": "true", "preferred_daypart": "night"},
        SPECS,
    )
    assert x == {
        "money": pytest.approx(math.log1p(99.0) / 2),
        "days": 0.5,
        "days_missing": 0.0,
        "owl": 1.0,
        "part=night": 1.0,
        "part=morning": 0.0,
    }
    assert tuple(x) == feature_columns(SPECS)
    capped = build_features(
        {"days_since_last_order": "400", "night_owl": "false", "preferred_daypart": "evening"}, SPECS
    )
    assert capped["days"] == 4.0 and capped["owl"] == 0.0
    assert capped["part=night"] == capped["part=morning"] == 0.0  # undeclared category: no column set


def test_features_missing_tags() -> None:
    x = build_features({}, SPECS)
    assert x == {"money": 0.0, "days": 4.0, "days_missing": 1.0, "owl": 0.0, "part=night": 0.0, "part=morning": 0.0}


def test_features_bad_values_raise() -> None:
    with pytest.raises(FeatureError, match="monetary_90d"):
        build_features({"monetary_90d": "lots"}, SPECS)
    with pytest.raises(FeatureError, match="night_owl"):
        build_features({"night_owl": "yes"}, SPECS)


def test_shipped_features_from_engine_profile(config: ModelsConfig) -> None:
    profile = {"events_7d": "3", "recency_days": "2", "avg_order_value_90d": "12.50", "night_owl": "false"}
    x = build_features(profile, config.churn_specs)
    assert set(x) == set(feature_columns(config.churn_specs))
    assert all(math.isfinite(v) for v in x.values())
    assert x["order_recency"] == pytest.approx(math.log1p(730) / 2.0)  # never ordered: the cap
    assert [x[f"order_recency>={d}"] for d in (7, 365)] == [1.0, 1.0]
    assert build_features({"days_since_last_order": "10"}, config.churn_specs)["order_recency>=14"] == 0.0


# ---- churn labels -------------------------------------------------------------------------------


@pytest.mark.parametrize("horizon_days", [30, 90])
def test_resolve_in_event_time(horizon_days: int) -> None:
    h = horizon_days * DAY
    snap = take_snapshot({"a": 1.0}, T0)
    # nothing yet: unknown until the horizon passes
    assert resolve(snap, None, T0 + h - 1, h) is None
    assert resolve(snap, T0 - 5 * DAY, T0 + h - 1, h) is None  # an order before the snapshot does not count
    assert resolve(snap, T0, T0 + DAY, h) is None  # nor one at the snapshot time
    # came back before H: 0, as soon as the order is seen
    assert resolve(snap, T0 + 3600, T0 + 3600, h) == 0
    assert resolve(snap, T0 + h, T0 + h, h) == 0  # inclusive at the horizon
    # H passed without a qualifying order: 1
    assert resolve(snap, None, T0 + h, h) == 1
    assert resolve(snap, T0 - DAY, T0 + h + 5 * DAY, h) == 1
    assert resolve(snap, T0 + h + 1, T0 + h + 1, h) == 1  # returned, but too late
    assert snap.deadline(h) == T0 + h


def test_resolve_30d_vs_90d_differ() -> None:
    snap = take_snapshot({}, T0)
    back = T0 + 45 * DAY
    assert resolve(snap, back, back, 30 * DAY) == 1
    assert resolve(snap, back, back, 90 * DAY) == 0
    assert resolve(snap, None, T0 + 60 * DAY, 90 * DAY) is None


def test_snapshot_is_a_copy_and_cadence() -> None:
    x = {"a": 1.0, "b": 0.123456789}
    snap = take_snapshot(x, T0)
    x["a"] = 2.0
    assert snap.features == {"a": 1.0, "b": 0.1235}  # a copy, rounded for storage
    assert PendingExample.from_json(snap.to_json()) == snap
    assert next_snapshot(None, T0, 7 * DAY) is None  # before the cadence started (first_cadence_point)
    assert next_snapshot(T0, T0 + 7 * DAY - 1, 7 * DAY) is None
    assert next_snapshot(T0, T0 + 7 * DAY, 7 * DAY) == T0 + 7 * DAY
    # a late evaluation takes the latest cadence point it passed: the cadence never shifts
    assert next_snapshot(T0, T0 + 23 * DAY, 7 * DAY) == T0 + 21 * DAY


# ---- bands and scores ---------------------------------------------------------------------------


def test_band_mapping_at_thresholds() -> None:
    bands = ChurnBands(medium=0.3, high=0.6)
    assert churn_band(0.0, bands) == "low"
    assert churn_band(0.2999, bands) == "low"
    assert churn_band(0.3, bands) == "medium"
    assert churn_band(0.5999, bands) == "medium"
    assert churn_band(0.6, bands) == "high"
    assert churn_band(1.0, bands) == "high"
    assert format_risk(0.123456) == "0.1235" and format_risk(1.0) == "1.0000"


def test_roc_auc_exact_with_ties() -> None:
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert math.isnan(roc_auc([1, 1], [0.1, 0.2]))


def test_purity() -> None:
    score, table = purity(
        {"u1": "s1", "u2": "s1", "u3": "s2", "u4": "s2"}, {"u1": "a", "u2": "a", "u3": "a", "u4": "b"}
    )
    assert score == 0.75 and table == {"s1": {"a": 2}, "s2": {"a": 1, "b": 1}}


# ---- models, state, checkpoints -----------------------------------------------------------------


def _random_profile(rng: random.Random) -> dict[str, str]:
    profile = {
        "events_7d": str(rng.randint(0, 30)),
        "events_30d": str(rng.randint(0, 120)),
        "active_days_30d": str(rng.randint(0, 30)),
        "recency_days": str(rng.randint(0, 60)),
        "frequency_90d": str(rng.randint(0, 12)),
        "monetary_90d": f"{rng.randint(0, 3000)}.{rng.randint(0, 99):02d}",
        "night_owl": rng.choice(("true", "false")),
        "cart_abandoned": rng.choice(("true", "false")),
        "preferred_daypart": rng.choice(("night", "morning", "afternoon", "evening")),
        "activity_trend": rng.choice(("rising", "stable", "falling", "new", "none")),
    }
    if rng.random() < 0.7:
        profile["days_since_last_order"] = str(rng.randint(0, 80))
        profile["avg_order_value_90d"] = f"{rng.randint(5, 400)}.00"
    return profile


def _trained(config: ModelsConfig, n: int = 600, seed: int = 1) -> tuple[Models, list[dict[str, str]]]:
    rng = random.Random(seed)
    models = Models(config)
    profiles = [_random_profile(rng) for _ in range(n)]
    for i, profile in enumerate(profiles):
        user = UserModelState()
        models.step(user, profile, None, T0 + i * 60)
        label = 1 if "days_since_last_order" not in profile or int(profile["days_since_last_order"]) > 30 else 0
        models.churn.learn(take_snapshot(build_features(profile, models.churn_specs), T0 + i * 60), label)
    return models, profiles


def test_step_assigns_segment_and_churn_tags(config: ModelsConfig) -> None:
    models, profiles = _trained(config)
    user = UserModelState()
    buyer = next(p for p in profiles if "days_since_last_order" in p)
    browser = {k: v for k, v in buyer.items() if k != "days_since_last_order"}
    assert not models.step(UserModelState(), browser, None, T0).snapshot  # not a customer (eligible: buyer)
    assert not models.step(user, buyer, T0 - DAY, T0 - 3600).snapshot  # the first order starts the cadence
    first = user.last_snapshot_ts + config.churn.snapshot_interval  # its first cadence point
    result = models.step(user, buyer, T0 - DAY, first)
    assert result.reassigned and result.snapshot
    assert set(result.tags) == {"behaviour_segment", "churn_risk", "churn_band", "churn_model"}
    assert result.tags["churn_model"] == "600"
    assert 0.0 <= float(result.tags["churn_risk"]) <= 1.0 and len(result.tags["churn_risk"]) == 6
    # the order at T0 - DAY is before the snapshot; one 2 days later marks it returned, learned when
    # its window closes
    again = models.step(user, buyer, first + 2 * DAY, first + 2 * DAY)
    assert again.resolved is None and not again.snapshot and not again.reassigned  # vector unchanged, < 7 days
    assert [p.returned for p in user.pending] == [True]
    closed = models.step(user, buyer, first + 2 * DAY, first + config.churn.horizon)
    assert closed.resolved == 0 and models.churn.n_learned == 601
    assert UserModelState.from_doc(orjson.loads(orjson.dumps(user.to_doc()))) == user
    descriptions = models.segments.describe()
    assert len(descriptions) == config.segments.n_clusters
    assert all(d.text for d in descriptions) and math.isclose(sum(d.share for d in descriptions), 1.0)


def test_checkpoint_round_trip_predicts_identically(config: ModelsConfig) -> None:
    models, profiles = _trained(config)
    raw = dump(models)
    assert raw.startswith(MAGIC)
    restored = restore(raw, config)
    for profile in profiles[:100]:
        xs = build_features(profile, models.segment_specs)
        xc = build_features(profile, models.churn_specs)
        assert restored.segments.assign(xs) == models.segments.assign(xs)
        assert restored.churn.score(xc) == models.churn.score(xc)
    assert restored.churn.metrics() == models.churn.metrics()
    assert restored.segments.describe() == models.segments.describe()
    # both keep learning identically
    for model in (models, restored):
        for profile in profiles[:50]:
            model.churn.learn(take_snapshot(build_features(profile, model.churn_specs), T0), 1)
            model.segments.learn(build_features(profile, model.segment_specs))
    for profile in profiles[100:200]:
        xs = build_features(profile, models.segment_specs)
        xc = build_features(profile, models.churn_specs)
        assert restored.segments.assign(xs) == models.segments.assign(xs)
        assert restored.churn.score(xc) == models.churn.score(xc)
    assert restored.churn.metrics() == models.churn.metrics()


def test_score_step_scores_follow_the_model_as_it_learns(config: ModelsConfig) -> None:
    """The scoring memo (values of the input tags -> scores) never serves a score of a model state
    that has since learned, and is not part of a checkpoint."""
    models, profiles = _trained(config, n=250)
    profile = next(p for p in profiles if "days_since_last_order" in p)

    def expected(model: Models) -> dict[str, str]:
        return model.churn.tags(build_features(profile, model.churn_specs))

    first = models.score_step(UserModelState(), profile, None, T0).tags
    assert {k: first[k] for k in ("churn_risk", "churn_band", "churn_model")} == expected(models)
    for other in profiles[:40]:  # the model moves on: a new version, another risk for the same inputs
        models.churn.learn(take_snapshot(build_features(other, models.churn_specs), T0), 1)
    again = models.score_step(UserModelState(), dict(profile), None, T0).tags
    assert again["churn_model"] == "290" and again["churn_risk"] == expected(models)["churn_risk"]
    assert again["churn_risk"] != first["churn_risk"]
    restored = restore(dump(models), config)
    assert not restored._features and not restored._churn  # the memo is not checkpointed
    assert restored.score_step(UserModelState(), profile, None, T0).tags == again


def test_corrupt_or_incompatible_checkpoint_raises(config: ModelsConfig) -> None:
    models, _ = _trained(config, n=250)
    raw = dump(models)
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0xFF
    for bad in (bytes(flipped), raw[:-10], raw[:12], b"garbage" * 10, b""):
        with pytest.raises(CorruptCheckpoint):
            restore(bad, config)
    other = config.model_copy(update={"churn": config.churn.model_copy(update={"horizon": 30 * DAY})})
    with pytest.raises(IncompatibleCheckpoint, match="model config"):
        restore(raw, other)
    newer = bytearray(raw)
    newer[len(MAGIC) : len(MAGIC) + 2] = (99).to_bytes(2, "big")
    with pytest.raises(IncompatibleCheckpoint, match="format 99"):
        restore(bytes(newer), config)
    assert issubclass(CorruptCheckpoint, CheckpointError) and issubclass(IncompatibleCheckpoint, CheckpointError)


# ---- stable segment ids -------------------------------------------------------------------------


def test_match_centroids_is_permutation_invariant() -> None:
    rng = random.Random(5)
    published = {f"s{i + 1}": {"a": rng.uniform(-5, 5), "b": rng.uniform(-5, 5)} for i in range(6)}
    ids = list(published)
    perm = list(range(6))
    rng.shuffle(perm)
    # raw index j now holds (a slightly moved copy of) published centre ids[perm[j]]
    current = {j: {k: v + 0.01 for k, v in published[ids[perm[j]]].items()} for j in range(6)}
    mapping, next_id = match_centroids(published, current, next_id=7)
    assert mapping == {j: ids[perm[j]] for j in range(6)} and next_id == 7
    # a centre that jumped far away gets a fresh id when a max distance is set
    current[0] = {"a": 100.0, "b": 100.0}
    mapping, next_id = match_centroids(published, current, next_id=7, max_distance=1.0)
    assert mapping[0] == "s7" and next_id == 8
    assert {mapping[j] for j in range(1, 6)} == {ids[perm[j]] for j in range(1, 6)}
    # more clusters than before: the extra one gets a new id
    mapping, _ = match_centroids({"s1": {"a": 0.0}}, {0: {"a": 5.0}, 1: {"a": 0.1}}, next_id=2)
    assert mapping == {0: "s2", 1: "s1"}


def test_segment_ids_stable_when_model_renumbers(config: ModelsConfig) -> None:
    models, profiles = _trained(config)
    seg: SegmentModel = models.segments
    xs = [build_features(p, models.segment_specs) for p in profiles[:200]]
    before = [seg.assign(x) for x in xs]
    raw_before = [seg.raw_cluster(x) for x in xs]
    centres = dict(seg.kmeans.centers)
    order = list(centres)
    random.Random(9).shuffle(order)
    seg.kmeans.centers = {new: centres[old] for new, old in enumerate(order)}  # renumber the raw clusters
    seg.publish()
    assert [seg.raw_cluster(x) for x in xs] != raw_before
    assert [seg.assign(x) for x in xs] == before


def test_reassign_cadence() -> None:
    policy = ReassignPolicy(min_interval=DAY, max_interval=7 * DAY, min_change=0.25)
    x = {"a": 1.0}
    assert should_reassign(None, x, None, T0, policy)
    assert not should_reassign(x, {"a": 2.0}, T0, T0 + DAY - 1, policy)  # too soon, however big the change
    assert should_reassign(x, {"a": 2.0}, T0, T0 + DAY, policy)
    assert not should_reassign(x, {"a": 1.1}, T0, T0 + 3 * DAY, policy)  # small change
    assert should_reassign(x, {"a": 1.0}, T0, T0 + 7 * DAY, policy)  # refresh at most every 7 days
