"""BG/NBD (Fader, Hardie & Lee 2005) fitted offline, the classic churn reference of ``portrait evaluate``.

The model is fitted with the ``lifetimes`` package (the ``evaluation`` extra) on each customer's
purchase history before a cutoff, in days: ``frequency`` = repeat purchase days (distinct days
with an order, minus one), ``recency`` = first to last purchase day, ``T`` = first purchase to the
cutoff. The churn probability within ``horizon`` days after the cutoff is the probability of no
purchase in ``(T, T + horizon]``:

    P(churn) = 1 - P(alive) + P(alive) * ((alpha + T) / (alpha + T + horizon)) ** (r + frequency)

(while alive, purchases are Poisson with a rate whose posterior is Gamma(r + x, alpha + T); no
purchase also means no drop-out, which happens only right after a purchase).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

DAY = 86400.0
INSTALL_HINT = "BG/NBD needs the evaluation extra: pip install 'portrait[evaluation]' (the lifetimes package)"


class MissingExtra(RuntimeError):
    """An optional dependency is not installed (the message says how to install it)."""


@dataclass(frozen=True)
class Summary:
    """One customer's history before the cutoff, in days (BTYD's x, t_x, T)."""

    frequency: float
    recency: float
    T: float


def summarise(orders: Iterable[float], cutoff: float) -> Summary | None:
    """The summary of one customer's order times (epoch seconds) before ``cutoff`` (None: no order).

    Days are UTC calendar days, as in ``lifetimes.utils.summary_data_from_transaction_data(freq="D")``."""
    days = sorted({math.floor(t / DAY) for t in orders if t < cutoff})
    if not days:
        return None
    end = math.floor(cutoff / DAY)
    return Summary(frequency=len(days) - 1, recency=days[-1] - days[0], T=end - days[0])


@dataclass(frozen=True)
class BgNbd:
    r: float
    alpha: float
    a: float
    b: float

    def p_alive(self, s: Summary) -> float:
        """P(alive at T | x, t_x, T) (Fader, Hardie & Lee 2005, eq. 19; 1 without repeat purchases)."""
        if s.frequency == 0:
            return 1.0
        x, r, alpha, a, b = s.frequency, self.r, self.alpha, self.a, self.b
        log_ratio = (r + x) * math.log((alpha + s.T) / (alpha + s.recency))
        return 1.0 / (1.0 + (a / (b + x - 1)) * math.exp(log_ratio))

    def p_churn(self, s: Summary, horizon_days: float) -> float:
        """P(no purchase in the next ``horizon_days``) given the history."""
        alive = self.p_alive(s)
        quiet = math.pow((self.alpha + s.T) / (self.alpha + s.T + horizon_days), self.r + s.frequency)
        return 1.0 - alive + alive * quiet


def fit(summaries: Mapping[str, Summary], penalizer: float = 0.001) -> BgNbd:
    """Fit BG/NBD to the summaries with ``lifetimes.BetaGeoFitter``. Raises ``MissingExtra``."""
    try:
        pd: Any = importlib.import_module("pandas")
        lifetimes: Any = importlib.import_module("lifetimes")
    except ImportError as exc:
        raise MissingExtra(INSTALL_HINT) from exc
    frame = pd.DataFrame([(s.frequency, s.recency, s.T) for s in summaries.values()], columns=["f", "r", "T"])
    fitter: Any = lifetimes.BetaGeoFitter(penalizer_coef=penalizer)
    fitter.fit(frame["f"], frame["r"], frame["T"])
    params = fitter.params_
    return BgNbd(r=float(params["r"]), alpha=float(params["alpha"]), a=float(params["a"]), b=float(params["b"]))


def available() -> bool:
    """Whether the ``lifetimes`` package can be imported."""
    return importlib.util.find_spec("lifetimes") is not None
