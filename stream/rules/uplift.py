"""Confidence intervals for conversion rates and the uplift of treated over control (pure).

The uplift of a rule is ``p_t - p_c``: the treated conversion rate (sent) minus the control rate
(held out), each over closed exposures (``stream.rules.effect``). Its 95 % interval is Newcombe's
hybrid score interval (method 10 of Newcombe 1998), built from the two Wilson score intervals:
unlike the Wald interval it stays inside [-1, 1] and behaves at small counts and rates near 0 or 1.

>>> wilson(0, 10)[0]
0.0
>>> low, high = newcombe(56, 70, 48, 80)  # Newcombe's worked example: 0.0524 to 0.3339
>>> round(low, 4), round(high, 4)
(0.0524, 0.3339)
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (``trials`` > 0)."""
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(treated_conv: int, treated_n: int, control_conv: int, control_n: int) -> tuple[float, float]:
    """95 % interval of ``treated rate - control rate`` (both ``n`` > 0)."""
    p1, p2 = treated_conv / treated_n, control_conv / control_n
    l1, u1 = wilson(treated_conv, treated_n)
    l2, u2 = wilson(control_conv, control_n)
    d = p1 - p2
    return d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
