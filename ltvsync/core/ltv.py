"""Customer lifetime value: simple LTV with credibility-weighted priors, discounted CLV, safe fitting.

The public face of the LTV maths (re-exports the RFM summary and the BG/NBD and Gamma-Gamma
models). Everything is pure: values and arrays in, frozen values out; no I/O, clock or environment.

References (no vendor API involved):
- Credibility weighting (Buhlmann): estimate = (n*observed + k*prior) / (n + k).
- Discounted CLV as defined by the ``lifetimes`` library (``customer_lifetime_value``,
  lifetimes.readthedocs.io): a sum over months of expected purchases in that month times expected
  spend per purchase, discounted by (1 + monthly rate)^month.
- Fader, Hardie & Lee (2005) for BG/NBD; Fader & Hardie (2013) for Gamma-Gamma.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from ltvsync.core.bgnbd import BgNbdModel, fit_bgnbd
from ltvsync.core.gamma_gamma import GammaGammaModel, fit_gamma_gamma
from ltvsync.core.rfm import FloatArray, RfmSummary, as_float, rfm_summary

__all__ = [
    "BgNbdModel",
    "GammaGammaModel",
    "ModelFit",
    "PriorParams",
    "RfmSummary",
    "SimpleLtv",
    "clv",
    "credibility",
    "fit_bgnbd",
    "fit_gamma_gamma",
    "fit_models",
    "rfm_summary",
    "simple_ltv",
]

DAYS_PER_YEAR = 365.25
# Time units per month, as in lifetimes' customer_lifetime_value (52.14 weeks / 12; 30 days).
UNITS_PER_MONTH: dict[str, float] = {"week": 4.345, "day": 30.0}


@dataclass(frozen=True, slots=True)
class PriorParams:
    """Benchmark figures assumed for a customer with no history, and how much they weigh.

    ``weight`` is k in the credibility formula: the amount of observation (orders for AOV, years
    of tenure for frequency and lifespan) that counts as much as the prior. Mirrors
    ``ltvsync.config.settings.PriorSettings``; the caller converts so this module stays pure.
    """

    aov: float
    purchases_per_year: float
    lifespan_years: float
    weight: float


@dataclass(frozen=True, slots=True)
class SimpleLtv:
    """Per-customer factors of the simple LTV and the LTV itself (arrays of equal length).

    ``prior_weight`` in [0, 1] is the mean over the three factors of k/(n+k): the share of the
    figure that still comes from the prior (1 = no history, towards 0 as data accumulates).
    """

    aov: FloatArray
    purchases_per_year: FloatArray
    lifespan_years: FloatArray
    margin: FloatArray
    ltv: FloatArray
    prior_weight: FloatArray


def credibility(observed: ArrayLike, n: ArrayLike, prior: float, k: float) -> FloatArray:
    """(n*observed + k*prior) / (n + k); exactly ``prior`` where n == 0 (observed is then ignored)."""
    obs, nn = np.broadcast_arrays(as_float(observed), as_float(n))
    with np.errstate(invalid="ignore", divide="ignore"):
        blended = (nn * obs + k * prior) / (nn + k)
    return np.where(nn > 0, blended, prior)


def _prior_share(n: FloatArray, k: float) -> FloatArray:
    with np.errstate(invalid="ignore", divide="ignore"):
        share = k / (n + k)
    return np.where(n > 0, share, 1.0)


def simple_ltv(
    orders: ArrayLike,
    revenue: ArrayLike,
    tenure_days: ArrayLike,
    priors: PriorParams,
    gross_margin: ArrayLike | None = None,
) -> SimpleLtv:
    """LTV = AOV x purchases per year x lifespan in years (x gross margin), each factor blended.

    - AOV: revenue/orders, blended with ``priors.aov`` by n = orders.
    - Purchases per year: orders / tenure years, blended by n = tenure years (a rate is only
      credible over time: one order on day one says little about a yearly rate).
    - Lifespan: the tenure so far (a lower bound of the lifespan), blended by n = tenure years.
    Invalid entries (non-finite or negative orders, tenure or revenue) count as no observation,
    so such a customer gets the prior figure rather than a crash or a NaN. ``gross_margin`` is a
    fraction (scalar or per customer); None means 1.
    """
    o, rev, days = np.broadcast_arrays(as_float(orders), as_float(revenue), as_float(tenure_days))
    valid_orders = np.isfinite(o) & (o >= 0)
    o = np.where(valid_orders, o, 0.0)
    years = np.where(np.isfinite(days) & (days >= 0), days, 0.0) / DAYS_PER_YEAR
    n_aov = np.where(np.isfinite(rev) & (rev >= 0), o, 0.0)
    k = priors.weight
    with np.errstate(invalid="ignore", divide="ignore"):
        aov_obs = np.where(n_aov > 0, rev / np.where(n_aov > 0, n_aov, 1.0), 0.0)
        rate_obs = np.where(years > 0, o / np.where(years > 0, years, 1.0), 0.0)
    aov = credibility(aov_obs, n_aov, priors.aov, k)
    rate = credibility(rate_obs, years, priors.purchases_per_year, k)
    lifespan = credibility(years, years, priors.lifespan_years, k)
    if gross_margin is None:
        margin = np.ones_like(aov)
    else:
        margin = np.broadcast_to(as_float(gross_margin), aov.shape).astype(np.float64)
        margin = np.where(np.isfinite(margin), margin, 1.0)
    prior_weight = (_prior_share(n_aov, k) + 2.0 * _prior_share(years, k)) / 3.0
    return SimpleLtv(aov, rate, lifespan, margin, aov * rate * lifespan * margin, prior_weight)


def clv(
    bgnbd: BgNbdModel,
    gamma_gamma: GammaGammaModel,
    frequency: ArrayLike,
    recency: ArrayLike,
    T: ArrayLike,
    monetary_value: ArrayLike,
    horizon: int,
    discount_rate: float,
    *,
    unit: str = "week",
    unit_per_month: float | None = None,
) -> FloatArray:
    """Discounted CLV over ``horizon`` months, the ``lifetimes`` definition.

    CLV = sum_{i=1..horizon} (E[Y(i*u)] - E[Y((i-1)*u)]) * E[spend] / (1 + discount_rate)^i, where
    E[Y] is BG/NBD's conditional expectation, u the number of time units per month
    (``unit_per_month``, default 4.345 weeks or 30 days for ``unit``), E[spend] Gamma-Gamma's
    expected spend and ``discount_rate`` a MONTHLY rate (e.g. 0.01). Money is in the currency of
    ``monetary_value``; this is revenue, apply a margin outside. Raises ``ValueError`` when the
    Gamma-Gamma model is degenerate (check ``ModelFit.fallback_reason`` first).
    """
    if gamma_gamma.degenerate:
        raise ValueError(f"Gamma-Gamma model is degenerate: {gamma_gamma.reason}")
    if unit_per_month is None:
        if unit not in UNITS_PER_MONTH:
            raise ValueError(f"unit must be one of {sorted(UNITS_PER_MONTH)}, got {unit!r}")
        unit_per_month = UNITS_PER_MONTH[unit]
    x, t_x, big_t, m = np.broadcast_arrays(
        as_float(frequency), as_float(recency), as_float(T), as_float(monetary_value)
    )
    spend = gamma_gamma.expected_spend(x, m)
    total = np.zeros(x.shape)
    previous = np.zeros(x.shape)
    for month in range(1, int(horizon) + 1):
        cumulative = bgnbd.expected_purchases(month * unit_per_month, x, t_x, big_t)
        total += (cumulative - previous) * spend / (1.0 + discount_rate) ** month
        previous = cumulative
    return total


@dataclass(frozen=True, slots=True)
class ModelFit:
    """Outcome of :func:`fit_models`: usable models, or the reason to fall back to simple LTV.

    ``fallback_reason is None`` means both models are usable. A converged BG/NBD model is kept
    even when Gamma-Gamma fails (P(alive) and expected purchases remain meaningful).
    """

    bgnbd: BgNbdModel | None
    gamma_gamma: GammaGammaModel | None
    fallback_reason: str | None
    n_customers: int
    n_repeat_buyers: int

    @property
    def usable(self) -> bool:
        return self.fallback_reason is None


def fit_models(summary: RfmSummary, min_customers: int, min_repeat_buyers: int) -> ModelFit:
    """Fit BG/NBD and Gamma-Gamma on a summary; never raises, so a sync never fails because of it."""
    n = len(summary)
    try:
        repeat = int(np.count_nonzero(summary.frequency > 0))
    except Exception as exc:  # a malformed summary is a reason to fall back, not to crash a sync
        return ModelFit(None, None, f"invalid summary: {type(exc).__name__}: {exc}", n, 0)
    if n < min_customers:
        return ModelFit(None, None, f"too few customers: {n} < {min_customers}", n, repeat)
    if repeat < min_repeat_buyers:
        return ModelFit(None, None, f"too few repeat buyers: {repeat} < {min_repeat_buyers}", n, repeat)
    bg: BgNbdModel | None = None
    try:
        fitted = fit_bgnbd(summary.frequency, summary.recency, summary.T)
        if not fitted.converged:
            return ModelFit(None, None, f"BG/NBD did not converge: {fitted.message}", n, repeat)
        bg = fitted
        gg = fit_gamma_gamma(summary.frequency, summary.monetary_value)
    except Exception as exc:  # numerical surprises (overflow, linear algebra) must not stop the sync
        return ModelFit(bg, None, f"numerical error while fitting: {type(exc).__name__}: {exc}", n, repeat)
    if gg.degenerate:
        return ModelFit(bg, gg, f"Gamma-Gamma degenerate: {gg.reason}", n, repeat)
    if not gg.converged:
        return ModelFit(bg, gg, f"Gamma-Gamma did not converge: {gg.reason}", n, repeat)
    return ModelFit(bg, gg, None, n, repeat)
