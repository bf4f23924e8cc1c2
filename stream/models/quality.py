"""Quality of probabilistic binary scores: ROC AUC, PR AUC, Brier score, calibration table.

Pure and exact (no sampling, no interpolation): the offline evaluation (``portrait evaluate``)
reports these for Portrait's ``churn_risk``, the recency-only baseline and BG/NBD on the same
customers. Conventions: ``labels`` are 0/1 (1 = churned, the positive class), a higher score means
"more likely positive"; tied scores count as one threshold. Every function returns ``nan`` where
the metric is undefined (no example, or a single class for the AUCs).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass


def _check(labels: Sequence[int], scores: Sequence[float]) -> None:
    if len(labels) != len(scores):
        raise ValueError(f"{len(labels)} labels but {len(scores)} scores")


def _tie_groups(labels: Sequence[int], scores: Sequence[float], *, descending: bool) -> Iterator[tuple[int, int, int]]:
    """The runs of tied scores in score order: (first position, last position, positives in the run)."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i] if descending else scores[i])
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        yield i, j, sum(1 for k in range(i, j + 1) if labels[order[k]])
        i = j + 1


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Exact ROC AUC by ranks (Mann-Whitney U; a tie between a positive and a negative counts one half)."""
    _check(labels, scores)
    pos = sum(1 for y in labels if y)
    neg = len(labels) - pos
    if not pos or not neg:
        return math.nan
    rank_sum = 0.0
    for i, j, positives in _tie_groups(labels, scores, descending=False):
        rank_sum += ((i + j) / 2 + 1) * positives
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def pr_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the precision-recall curve as average precision: the sum over thresholds (each
    distinct score, from the highest) of (recall gained) x (precision at that threshold)."""
    _check(labels, scores)
    pos = sum(1 for y in labels if y)
    if not pos or pos == len(labels):
        return math.nan
    tp = seen = 0
    area = 0.0
    for i, j, gained in _tie_groups(labels, scores, descending=True):
        tp += gained
        seen += j - i + 1
        area += (gained / pos) * (tp / seen)
    return area


def brier(labels: Sequence[int], probabilities: Sequence[float]) -> float:
    """Mean squared difference between the probability and the 0/1 outcome (0 is perfect)."""
    _check(labels, probabilities)
    if not labels:
        return math.nan
    return sum((p - y) ** 2 for y, p in zip(labels, probabilities, strict=True)) / len(labels)


@dataclass(frozen=True)
class CalibrationBin:
    """One bin of a calibration table: ``n`` examples whose mean predicted probability is
    ``predicted`` and whose observed positive rate is ``observed``."""

    n: int
    predicted: float
    observed: float
    low: float  # smallest probability in the bin
    high: float  # largest


def calibration_table(labels: Sequence[int], probabilities: Sequence[float], bins: int = 10) -> list[CalibrationBin]:
    """Equal-count bins (deciles by default) of the examples sorted by probability: the first
    ``n % bins`` bins hold one example more. Fewer examples than bins give one bin per example."""
    _check(labels, probabilities)
    if bins < 1:
        raise ValueError("bins must be >= 1")
    order = sorted(range(len(probabilities)), key=lambda i: probabilities[i])
    n = len(order)
    k = min(bins, n)
    out: list[CalibrationBin] = []
    start = 0
    for b in range(k):
        size = n // k + (1 if b < n % k else 0)
        idx = order[start : start + size]
        start += size
        ps = [probabilities[i] for i in idx]
        out.append(
            CalibrationBin(
                n=size,
                predicted=sum(ps) / size,
                observed=sum(labels[i] for i in idx) / size,
                low=min(ps),
                high=max(ps),
            )
        )
    return out


def calibration_error(table: Sequence[CalibrationBin]) -> float:
    """Expected calibration error of a table: the count-weighted mean |predicted - observed|."""
    total = sum(b.n for b in table)
    if not total:
        return math.nan
    return sum(b.n * abs(b.predicted - b.observed) for b in table) / total
