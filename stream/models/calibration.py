"""Online Platt calibration of a probabilistic score, learned from progressive predictions.

The churn model's raw probability is trained on snapshots; what a marketer reads is the share of
customers with that score who actually churn. ``PlattCalibrator`` maps the raw score's logit ``z``
to ``sigmoid(a * z + b)``, with ``(a, b)`` learned by stochastic gradient descent on the log loss
of the *progressive* raw predictions (each made before the model learned the example: out of
sample). It starts as the identity (``a = 1, b = 0``) and ``a`` is kept positive, so calibration
never reorders customers (the ROC AUC of ``churn_risk`` is the raw model's). Chosen over isotonic
binning, which flattened the narrow raw range of a young model into one value (ROC AUC 0.48 on
synthetic personas where the raw score had 0.76). Deterministic; picklable; ~1 µs per call.
"""

from __future__ import annotations

import math

MIN_SLOPE = 0.05
LOGIT_LIMIT = 20.0


def logit(p: float) -> float:
    p = min(max(p, 1e-9), 1 - 1e-9)
    return math.log(p / (1 - p))


def sigmoid(z: float) -> float:
    z = min(max(z, -LOGIT_LIMIT), LOGIT_LIMIT)
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


class PlattCalibrator:
    def __init__(self, learning_rate: float = 0.01) -> None:
        if learning_rate <= 0:
            raise ValueError("learning_rate must be > 0")
        self.learning_rate = learning_rate
        self.a = 1.0
        self.b = 0.0
        self.learned = 0

    def calibrate(self, raw: float) -> float:
        """The calibrated probability of a raw score (the raw score itself before any learning)."""
        return sigmoid(self.a * logit(raw) + self.b)

    def learn(self, raw: float, label: int) -> None:
        """One SGD step on the log loss of a progressive prediction ``raw`` with outcome ``label``."""
        z = logit(raw)
        error = self.calibrate(raw) - (1.0 if label else 0.0)  # d(log loss) / d(a z + b)
        self.a = max(MIN_SLOPE, self.a - self.learning_rate * error * z)
        self.b -= self.learning_rate * error
        self.learned += 1
