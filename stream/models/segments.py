"""Online behaviour segments: river ``KMeans`` + stable segment ids + readable descriptions.

* The clusterer is ``river.cluster.KMeans``. Its random Gaussian initial centres are replaced by
  a k-means++ seeding plus a few Lloyd passes over the first ``init_buffer`` vectors (river's
  random centres otherwise leave clusters dead; see docs/models.md for the measurement).
* ``behaviour_segment`` is a *stable id* (``"s1"``, ``"s2"``…), not the model's raw cluster
  index: every ``publish_every`` learns the current centres are matched (Hungarian, Euclidean)
  to the previously published ones, so a renumbered / restarted model does not make users hop.
  A centre further than ``rematch_max_distance`` from its match gets a fresh id.
* Descriptions come from the model: the share of recent learns each cluster absorbed, and the
  columns whose centre z-score (vs the running population mean/std of all learned vectors) is
  largest in absolute value.
"""

from __future__ import annotations

import collections
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from river import cluster as _cluster
from scipy.optimize import linear_sum_assignment  # type: ignore[import-untyped]

from stream.models.config import FeatureSpec, ReassignPolicy, SegmentParams
from stream.models.features import Vector, distance, feature_columns

LLOYD_PASSES = 5
cluster: Any = _cluster  # river is only partly annotated


@dataclass(frozen=True)
class SegmentDescription:
    """One published segment. ``share`` is its fraction of recent (decayed) learns."""

    segment_id: str
    share: float
    learned: float
    top_features: tuple[tuple[str, float], ...]  # (column, z-score), largest |z| first
    text: str


def should_reassign(
    previous: Mapping[str, float] | None,
    current: Mapping[str, float],
    last_ts: float | None,
    now: float,
    policy: ReassignPolicy,
) -> bool:
    """Cadence policy: is it time to re-assign (and learn from) this user's vector?

    True when the user was never assigned; when ``max_interval`` passed since ``last_ts``; or when
    ``min_interval`` passed and the vector moved by at least ``min_change``. Pure.
    """
    if previous is None or last_ts is None:
        return True
    elapsed = now - last_ts
    if elapsed >= policy.max_interval:
        return True
    return elapsed >= policy.min_interval and distance(previous, current) >= policy.min_change


def match_centroids(
    previous: Mapping[str, Mapping[str, float]],
    current: Mapping[int, Mapping[str, float]],
    next_id: int,
    max_distance: float | None = None,
) -> tuple[dict[int, str], int]:
    """Map raw cluster indices of ``current`` to stable ids of ``previous`` (published centres).

    Minimum-total-distance one-to-one matching (Hungarian). A current centre left unmatched (more
    clusters than before) or matched further than ``max_distance`` gets a new id ``f"s{next_id}"``
    (``next_id`` then increases). Returns ``(raw index -> stable id, next unused id number)``.
    Deterministic: ties are broken by sorted raw index / sorted stable id.
    """
    raw_ids = sorted(current)
    stable_ids = sorted(previous, key=_id_order)
    mapping: dict[int, str] = {}
    if raw_ids and stable_ids:
        cost = [[distance(current[r], previous[s]) for s in stable_ids] for r in raw_ids]
        rows, cols = linear_sum_assignment(cost)
        for i, j in zip(rows.tolist(), cols.tolist(), strict=True):
            if max_distance is None or cost[i][j] <= max_distance:
                mapping[raw_ids[i]] = stable_ids[j]
    for r in raw_ids:
        if r not in mapping:
            mapping[r] = f"s{next_id}"
            next_id += 1
    return mapping, next_id


def _id_order(stable_id: str) -> tuple[int, str]:
    digits = stable_id[1:]
    return (int(digits), stable_id) if digits.isdigit() else (1 << 62, stable_id)


def _kmeans_pp(points: Sequence[Vector], k: int, rng: random.Random) -> list[Vector]:
    """k-means++ seeding followed by ``LLOYD_PASSES`` Lloyd iterations (deterministic given ``rng``)."""
    centres = [dict(points[rng.randrange(len(points))])]
    while len(centres) < k:
        d2 = [min(distance(p, c) ** 2 for c in centres) for p in points]
        total = sum(d2)
        if total <= 0:
            centres.append(dict(points[rng.randrange(len(points))]))
            continue
        pick = rng.random() * total
        acc = 0.0
        chosen = points[-1]
        for p, w in zip(points, d2, strict=True):
            acc += w
            if acc >= pick:
                chosen = p
                break
        centres.append(dict(chosen))
    for _ in range(LLOYD_PASSES):
        groups: list[list[Vector]] = [[] for _ in centres]
        for p in points:
            groups[min(range(len(centres)), key=lambda i: distance(p, centres[i]))].append(p)
        for i, group in enumerate(groups):
            if group:
                keys = {key for p in group for key in p}
                centres[i] = {key: sum(p.get(key, 0.0) for p in group) / len(group) for key in keys}
    return centres


class SegmentModel:
    """Online clustering of user feature vectors with stable, described segment ids.

    Contract: ``learn(x)`` folds one vector in (cheap, O(k·d)); ``assign(x)`` returns the stable
    segment id, or ``None`` while the model is still collecting its first ``init_buffer`` vectors.
    Everything is picklable (see ``stream.models.checkpoint``).
    """

    def __init__(self, params: SegmentParams, specs: Sequence[FeatureSpec]) -> None:
        self.params = params
        self.columns = feature_columns(specs)
        self._labels = _labels(specs)
        self.kmeans: Any = cluster.KMeans(n_clusters=params.n_clusters, halflife=params.halflife, seed=params.seed)
        self.buffer: list[Vector] = []
        self.initialised = False
        self.n_learned = 0
        self.since_publish = 0
        self.count = 0
        self.mean: dict[str, float] = dict.fromkeys(self.columns, 0.0)
        self.m2: dict[str, float] = dict.fromkeys(self.columns, 0.0)
        self.sizes: dict[int, float] = dict.fromkeys(range(params.n_clusters), 0.0)
        self.mapping: dict[int, str] = {}
        self.published: dict[str, Vector] = {}
        self.next_id = 1
        self.version = 0  # number of publications (id matchings)
        self._decay = 0.5 ** (1.0 / params.size_halflife)
        # (the clusterer's centres, their column tuples by raw index): see ``_centre_tuples``
        self._centres: tuple[Any, dict[int, tuple[float, ...]]] | None = None

    # ---- learning -----------------------------------------------------------------------------

    def learn(self, x: Mapping[str, float]) -> None:
        """Fold one user vector into the population statistics and the clusterer."""
        vec = {c: float(x.get(c, 0.0)) for c in self.columns}
        self.count += 1
        for c, v in vec.items():
            delta = v - self.mean[c]
            self.mean[c] += delta / self.count
            self.m2[c] += delta * (v - self.mean[c])
        self.n_learned += 1
        if not self.initialised:
            self.buffer.append(vec)
            if len(self.buffer) >= self.params.init_buffer:
                self._initialise()
            return
        raw = self._learn_predict(vec)
        self._count_size(raw)
        self.since_publish += 1
        if self.since_publish >= self.params.publish_every:
            self.publish()

    def _learn_predict(self, vec: Vector) -> int:
        """river ``KMeans.learn_predict_one``: the nearest centre moves ``halflife`` of the way to
        ``vec`` (the same update, on the same centres), with the nearest found as in ``raw_cluster``."""
        raw = self._nearest([vec[c] for c in self.columns])
        centre = self.kmeans.centers[raw]
        step = self.kmeans.halflife
        for c, xi in vec.items():
            centre[c] += step * (xi - centre[c])
        self._centre_tuples()[raw] = tuple(float(centre[c]) for c in self.columns)
        return raw

    def _count_size(self, raw: int) -> None:
        for c in self.sizes:
            self.sizes[c] *= self._decay
        self.sizes[raw] = self.sizes.get(raw, 0.0) + 1.0

    def _initialise(self) -> None:
        rng = random.Random(self.params.seed)
        centres = _kmeans_pp(self.buffer, self.params.n_clusters, rng)
        for i, centre in enumerate(centres):
            self.kmeans.centers[i] = collections.defaultdict(float, {c: centre.get(c, 0.0) for c in self.columns})
        self._centres = None
        self.initialised = True
        buffered, self.buffer = self.buffer, []
        for vec in buffered:
            self._count_size(self._learn_predict(vec))
        self.publish()

    def centroids(self) -> dict[int, Vector]:
        """The clusterer's current centres by raw index (all columns present)."""
        return {
            int(i): {c: float(centre.get(c, 0.0)) for c in self.columns} for i, centre in self.kmeans.centers.items()
        }

    def publish(self) -> dict[int, str]:
        """Re-match the current centres to the published ones and publish them. Returns the mapping."""
        current = self.centroids()
        self.mapping, self.next_id = match_centroids(
            self.published, current, self.next_id, self.params.rematch_max_distance
        )
        self.published = {self.mapping[r]: centre for r, centre in current.items()}
        self.since_publish = 0
        self.version += 1
        return self.mapping

    # ---- assignment ----------------------------------------------------------------------------

    def raw_cluster(self, x: Mapping[str, float]) -> int | None:
        if not self.initialised:
            return None
        return self._nearest([float(x.get(c, 0.0)) for c in self.columns])

    def _nearest(self, point: Sequence[float]) -> int:
        """The raw index of the centre nearest to ``point`` (by column): river ``KMeans.predict_one``'s
        choice (Euclidean; the first of equally near centres), about 10x faster (scoring is on the
        hot path of every evaluation)."""
        best, nearest = -1, math.inf
        for raw, centre in self._centre_tuples().items():
            d = math.dist(point, centre)
            if d < nearest:
                best, nearest = raw, d
        return best

    def _centre_tuples(self) -> dict[int, tuple[float, ...]]:
        """The centres as column tuples, built again when the clusterer's centres were replaced
        (``_learn_predict`` keeps them up to date as it moves one)."""
        centers = self.kmeans.centers
        cached = getattr(self, "_centres", None)  # absent in checkpoints pickled before it existed
        if cached is None or cached[0] is not centers:
            rows = {int(i): tuple(float(c.get(col, 0.0)) for col in self.columns) for i, c in centers.items()}
            cached = self._centres = (centers, rows)
        return cached[1]

    def assign(self, x: Mapping[str, float]) -> str | None:
        """Stable segment id of ``x`` (``None`` until the model is initialised). Does not learn."""
        raw = self.raw_cluster(x)
        return None if raw is None else self.mapping[raw]

    def learn_assign(self, x: Mapping[str, float]) -> str | None:
        """``learn(x)`` then ``assign(x)``: what to call when the cadence policy says reassign."""
        self.learn(x)
        return self.assign(x)

    # ---- descriptions --------------------------------------------------------------------------

    def std(self) -> dict[str, float]:
        n = max(self.count - 1, 1)
        return {c: math.sqrt(max(self.m2[c], 0.0) / n) for c in self.columns}

    def describe(self) -> list[SegmentDescription]:
        """Every published segment with its share and distinguishing features (sorted by id)."""
        if not self.initialised:
            return []
        std = self.std()
        total = sum(self.sizes.values()) or 1.0
        out: list[SegmentDescription] = []
        for raw, centre in self.centroids().items():
            zs: list[tuple[str, float]] = []
            for c in self.columns:
                if std[c] > 1e-9:
                    zs.append((c, (centre[c] - self.mean[c]) / std[c]))
            zs.sort(key=lambda item: (-abs(item[1]), item[0]))
            phrases: list[str] = []
            top: list[tuple[str, float]] = []
            for column, z in zs:
                if len(phrases) >= self.params.describe.top or abs(z) < self.params.describe.min_z:
                    break
                high, low = self._labels.get(column, (None, None))
                phrase = high if z > 0 else low
                if phrase:
                    phrases.append(phrase)
                    top.append((column, round(z, 3)))
            share = self.sizes.get(raw, 0.0) / total
            text = ", ".join(phrases) if phrases else "typical"
            out.append(
                SegmentDescription(
                    segment_id=self.mapping[raw],
                    share=share,
                    learned=self.sizes.get(raw, 0.0),
                    top_features=tuple(top),
                    text=f"{text} ({share:.0%} of recent users)",
                )
            )
        out.sort(key=lambda d: _id_order(d.segment_id))
        return out


def _labels(specs: Sequence[FeatureSpec]) -> dict[str, tuple[str | None, str | None]]:
    """column -> (phrase when far above the population, phrase when far below)."""
    words: dict[str, tuple[str | None, str | None]] = {}
    for spec in specs:
        pretty = spec.name.replace("_", " ")
        if spec.kind == "category":
            for value, phrase in spec.categories.items():
                words[f"{spec.name}={value}"] = (phrase or f"{pretty} {value}", None)
        elif spec.kind == "bool":
            words[spec.name] = (spec.high or pretty, spec.low)
        else:
            words[spec.name] = (spec.high or f"high {pretty}", spec.low or f"low {pretty}")
        if spec.missing_indicator:
            words[f"{spec.name}_missing"] = (spec.missing_phrase or f"no {spec.tag}", None)
    return words
