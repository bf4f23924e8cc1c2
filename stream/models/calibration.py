"""Online isotonic calibration of a probabilistic score, learned from progressive predictions.

The churn model's raw probability is trained on snapshots; what a marketer reads is the share of
customers with that score who actually churn. ``IsotonicCalibrator`` keeps, per bin of the raw
score's logit (``bins`` equal-width bins over ``[-limit, limit]``), the number of examples and of
positives seen, each example being the raw score the model gave *before* learning it (progressive,
so out of sample). ``calibrate(p)`` is the isotonic (non-decreasing) fit of the bins' positive
rates by pool-adjacent-violators, each bin shrunk towards its raw centre with ``prior`` pseudo
examples (so a bin with no data keeps the raw score), interpolated linearly in logit between bin
centres. The fit is recomputed every ``refit_every`` learns (and on the first call after), so
scoring costs one bisection and learning one counter update. Deterministic; picklable.
"""

from __future__ import annotations

import bisect
import math


def logit(p: float) -> float:
    p = min(max(p, 1e-9), 1 - 1e-9)
    return math.log(p / (1 - p))


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def isotonic(values: list[float], weights: list[float]) -> list[float]:
    """Weighted least-squares non-decreasing fit of ``values`` (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, weight, count]
    for v, w in zip(values, weights, strict=True):
        blocks.append([v, w, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, w2, c2 = blocks.pop()
            m1, w1, c1 = blocks.pop()
            w = w1 + w2
            blocks.append([(m1 * w1 + m2 * w2) / w if w else (m1 + m2) / 2, w, c1 + c2])
    out: list[float] = []
    for mean, _, count in blocks:
        out.extend([mean] * int(count))
    return out


class IsotonicCalibrator:
    def __init__(self, bins: int = 24, limit: float = 6.0, prior: float = 2.0, refit_every: int = 200) -> None:
        if bins < 2 or limit <= 0 or prior <= 0 or refit_every < 1:
            raise ValueError("need bins >= 2, limit > 0, prior > 0, refit_every >= 1")
        self.bins, self.limit, self.prior, self.refit_every = bins, limit, prior, refit_every
        width = 2 * limit / bins
        self.centres = [-limit + width * (i + 0.5) for i in range(bins)]
        self.n = [0.0] * bins
        self.pos = [0.0] * bins
        self.learned = 0
        self._fit: list[float] | None = None

    def _bin(self, z: float) -> int:
        i = int((z + self.limit) / (2 * self.limit) * self.bins)
        return min(max(i, 0), self.bins - 1)

    def learn(self, raw: float, label: int) -> None:
        """Count one progressive prediction ``raw`` (the raw score before the model learned it)."""
        i = self._bin(logit(raw))
        self.n[i] += 1
        self.pos[i] += 1 if label else 0
        self.learned += 1
        if self.learned % self.refit_every == 0:
            self._fit = None

    def fitted(self) -> list[float]:
        """The calibrated probability at each bin centre (non-decreasing)."""
        if self._fit is None:
            rates = [
                (self.pos[i] + self.prior * sigmoid(c)) / (self.n[i] + self.prior) for i, c in enumerate(self.centres)
            ]
            self._fit = isotonic(rates, [self.n[i] + self.prior for i in range(self.bins)])
        return self._fit

    def calibrate(self, raw: float) -> float:
        """The calibrated probability of a raw score (the raw score itself before any learning)."""
        if not self.learned:
            return raw
        fit, centres = self.fitted(), self.centres
        z = logit(raw)
        if z <= centres[0]:
            return fit[0]
        if z >= centres[-1]:
            return fit[-1]
        j = bisect.bisect_right(centres, z)
        a, b = centres[j - 1], centres[j]
        t = (z - a) / (b - a)
        return fit[j - 1] + t * (fit[j] - fit[j - 1])
