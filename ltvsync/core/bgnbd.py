"""BG/NBD model of repeat purchasing: maximum-likelihood fit, conditional expectations and P(alive).

Pure maths: arrays in, frozen values out; no I/O, no clock (``fit_seconds`` is a duration only).

References (no vendor API involved):
- Fader, Hardie & Lee (2005), "Counting Your Customers the Easy Way: An Alternative to the
  Pareto/NBD Model", Marketing Science 24(2): likelihood (eq. 6), conditional expectation (eq. 10),
  P(alive) (Fader, Hardie & Lee 2008 note "Computing P(alive) using the BG/NBD model").
- The hypergeometric terms use Euler's transformation 2F1(A,B;C;z) = (1-z)^(C-A-B) 2F1(C-A,C-B;C;z)
  (Abramowitz & Stegun 15.3.3), which keeps the parameters bounded for heavy buyers.

Inputs are the RFM summary: ``frequency`` x (repeat purchases), ``recency`` t_x (time of the last
purchase since the first) and ``T`` (first purchase to the end of observation), all in one time
unit (weeks or days); ``alpha`` is expressed in that same unit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize, special

from ltvsync.core.rfm import FloatArray, as_float, group_rows

# Times are rescaled so that max(T) == TIME_SCALE_TARGET before optimizing: the optimizer then
# sees parameters of order one whatever the unit (days vs weeks); alpha is scaled back after.
TIME_SCALE_TARGET = 10.0
# Tolerances of L-BFGS-B on the per-customer mean negative log-likelihood; tight enough that the
# parameters agree with other careful implementations to better than 1e-4 relative.
LBFGS_FTOL = 1e-15
LBFGS_GTOL = 1e-9
LBFGS_MAXITER = 2000
# Log-parameters are kept within +-LOG_PARAM_BOUND (e^20 ~ 5e8) on rescaled data: a fit that runs
# into this edge has no interior maximum and is reported as not converged.
LOG_PARAM_BOUND = 20.0
# The power series fallback for 2F1 sums at most this many terms (it converges for |z| < 1).
HYP2F1_SERIES_MAX_TERMS = 100_000
# Below this distance of ``a`` from 1 the (a-1) in eq. 10 cancels badly; evaluate on both sides.
A_NEAR_ONE = 1e-7


@dataclass(frozen=True, slots=True)
class BgNbdData:
    """The summary grouped into unique (x, t_x, T) triples with weights, plus per-x totals."""

    x: FloatArray
    t_x: FloatArray
    T: FloatArray
    weight: FloatArray
    unique_x: FloatArray
    weight_per_x: FloatArray
    n_customers: int


def prepare_bgnbd_data(frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> BgNbdData:
    """Validate and group the summary; rows that cannot come from a purchase history are dropped.

    A row is invalid when a value is not finite, x < 0, t_x < 0, t_x > T, or x == 0 with t_x > 0.
    """
    x, t_x, big_t = np.broadcast_arrays(as_float(frequency), as_float(recency), as_float(T))
    ok = np.isfinite(x) & np.isfinite(t_x) & np.isfinite(big_t)
    ok &= (x >= 0) & (t_x >= 0) & (t_x <= big_t) & ~((x == 0) & (t_x > 0))
    (gx, gtx, gT), weight = group_rows(x[ok], t_x[ok], big_t[ok])
    unique_x, inverse = np.unique(gx, return_inverse=True)
    weight_per_x = np.bincount(inverse, weights=weight, minlength=unique_x.size).astype(np.float64)
    return BgNbdData(gx, gtx, gT, weight, unique_x, weight_per_x, int(np.count_nonzero(ok)))


def _neg_ll_and_grad(log_params: FloatArray, d: BgNbdData) -> tuple[float, FloatArray]:
    """Mean negative log-likelihood over customers and its gradient w.r.t. the log-parameters.

    Terms that depend on x only (A1, A2 of the paper) are summed over the unique x values with
    their total weights, so the expensive special functions run a few hundred times, not per row.
    """
    r, alpha, a, b = np.exp(log_params)
    ux, wx = d.unique_x, d.weight_per_x
    # ln A1 + ln A2 per unique x.
    a1a2 = (
        special.gammaln(r + ux)
        - special.gammaln(r)
        + r * np.log(alpha)
        + special.gammaln(a + b)
        + special.gammaln(b + ux)
        - special.gammaln(b)
        - special.gammaln(a + b + ux)
    )
    dig_abx = special.digamma(a + b + ux)
    g_r = np.dot(wx, special.digamma(r + ux) - special.digamma(r) + np.log(alpha))
    g_alpha = np.dot(wx, np.full_like(ux, r / alpha))
    g_a = np.dot(wx, special.digamma(a + b) - dig_abx)
    g_b = np.dot(wx, special.digamma(a + b) + special.digamma(b + ux) - special.digamma(b) - dig_abx)

    # ln(A3 + A4) per row, with logaddexp so that heavy buyers (large x) cannot overflow.
    x, w = d.x, d.weight
    rx = r + x
    log_at = np.log(alpha + d.T)
    log_atx = np.log(alpha + d.t_x)
    ln_a3 = -rx * log_at
    buyer = x > 0
    bx1 = np.where(buyer, b + x - 1.0, 1.0)
    ln_a4 = np.where(buyer, np.log(a) - np.log(bx1) - rx * log_atx, -np.inf)
    ln_a34 = np.logaddexp(ln_a3, ln_a4)
    w3 = w * np.exp(ln_a3 - ln_a34)
    w4 = w * np.exp(ln_a4 - ln_a34)
    ll = float(np.dot(wx, a1a2) + np.dot(w, ln_a34))
    g_r += -np.dot(w3, log_at) - np.dot(w4, log_atx)
    g_alpha += -np.dot(w3, rx / (alpha + d.T)) - np.dot(w4, rx / (alpha + d.t_x))
    g_a += np.sum(w4) / a
    g_b += -np.dot(w4, 1.0 / bx1)

    n = float(np.sum(w))
    grad = np.array([g_r * r, g_alpha * alpha, g_a * a, g_b * b], dtype=np.float64)
    return -ll / n, -grad / n


def log_likelihood(
    frequency: ArrayLike, recency: ArrayLike, T: ArrayLike, r: float, alpha: float, a: float, b: float
) -> float:
    """The unscaled BG/NBD log-likelihood (the papers' figure) of a summary at given parameters."""
    d = prepare_bgnbd_data(frequency, recency, T)
    if d.n_customers == 0:
        return 0.0
    value, _ = _neg_ll_and_grad(np.log(np.array([r, alpha, a, b], dtype=np.float64)), d)
    return -value * d.n_customers


@dataclass(frozen=True, slots=True)
class BgNbdModel:
    """A fitted BG/NBD model; ``alpha`` is in the time unit of the summary it was fitted on."""

    r: float
    alpha: float
    a: float
    b: float
    log_likelihood: float
    converged: bool
    iterations: int
    fit_seconds: float
    n_customers: int
    message: str = ""

    def _log_dead_odds(self, x: FloatArray, t_x: FloatArray, big_t: FloatArray) -> FloatArray:
        """ln of the second denominator term of eq. 10: a/(b+x-1) ((alpha+T)/(alpha+t_x))^(r+x)."""
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        buyer = x > 0
        bx1 = np.where(buyer, b + x - 1.0, 1.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            odds = np.log(a) - np.log(bx1) + (r + x) * (np.log(alpha + big_t) - np.log(alpha + t_x))
        return np.where(buyer, odds, -np.inf)

    def p_alive(self, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> FloatArray:
        """P(alive | x, t_x, T); 1 for customers with no repeat purchase (the model's convention)."""
        x, t_x, big_t = np.broadcast_arrays(as_float(frequency), as_float(recency), as_float(T))
        return np.exp(-np.logaddexp(0.0, self._log_dead_odds(x, t_x, big_t)))

    def expected_purchases(
        self, t: ArrayLike, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike
    ) -> FloatArray:
        """E[Y(t) | x, t_x, T]: expected purchases in the next ``t`` time units (eq. 10).

        Written as (a+b+x-1)/(a-1) * [1 - (1-z)^(a-1) 2F1(a+b-1-r, a-1; a+b+x-1; z)] * P(alive),
        z = t/(alpha+T+t), i.e. eq. 10 after Euler's transformation; negative ``t`` counts as 0.
        """
        tt, x, t_x, big_t = np.broadcast_arrays(
            np.maximum(as_float(t), 0.0), as_float(frequency), as_float(recency), as_float(T)
        )
        z = tt / (self.alpha + big_t + tt)
        if abs(self.a - 1.0) < A_NEAR_ONE:
            lo = _growth(self.r, self.a - A_NEAR_ONE, self.b, x, z)
            hi = _growth(self.r, self.a + A_NEAR_ONE, self.b, x, z)
            growth = (lo + hi) / 2.0
        else:
            growth = _growth(self.r, self.a, self.b, x, z)
        return growth * self.p_alive(x, t_x, big_t)

    def expected_purchases_new(self, t: ArrayLike) -> FloatArray:
        """E[X(t)]: expected repeat purchases of a new customer in ``t`` time units (eq. 9)."""
        tt = np.maximum(as_float(t), 0.0)
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        z = tt / (alpha + tt)
        term = np.exp((a - 1.0) * np.log1p(-z)) * hyp2f1_safe(a + b - 1.0 - r, a - 1.0, a + b - 1.0, z)
        return (a + b - 1.0) / (a - 1.0) * (1.0 - term)


def at_bound(log_params: FloatArray) -> bool:
    """True when a log-parameter sits at (or numerically next to) the edge of the search box."""
    return bool(np.any(np.abs(log_params) > LOG_PARAM_BOUND - 1e-6))


def hyp2f1_safe(a: float, b: float, c: ArrayLike, z: ArrayLike) -> FloatArray:
    """Gauss 2F1(a, b; c; z) for 0 <= z < 1, never NaN: scipy first, the power series where it fails.

    After Euler's transformation our arguments keep a, b of order one and c >= a + b - 1, where
    the series converges for |z| < 1; scipy's ``hyp2f1`` occasionally returns inf/NaN near z = 1.
    """
    cc, zz = np.broadcast_arrays(as_float(c), as_float(z))
    with np.errstate(all="ignore"):
        out = np.asarray(special.hyp2f1(a, b, cc, zz), dtype=np.float64)
    bad = ~np.isfinite(out)
    if np.any(bad):
        out = out.copy()
        out[bad] = _hyp2f1_series(a, b, cc[bad], zz[bad])
    return out


def _hyp2f1_series(a: float, b: float, c: FloatArray, z: FloatArray) -> FloatArray:
    """Sum the hypergeometric series term by term until every term is negligible."""
    term = np.ones_like(z)
    total = np.ones_like(z)
    for k in range(HYP2F1_SERIES_MAX_TERMS):
        term = term * (a + k) * (b + k) / ((c + k) * (k + 1.0)) * z
        total = total + term
        if np.all(np.abs(term) <= 1e-17 * np.abs(total)):
            break
    return total


def _growth(r: float, a: float, b: float, x: FloatArray, z: FloatArray) -> FloatArray:
    """(a+b+x-1)/(a-1) [1 - (1-z)^(a-1) 2F1(a+b-1-r, a-1; a+b+x-1; z)], the alive-customer factor."""
    term = np.exp((a - 1.0) * np.log1p(-z)) * hyp2f1_safe(a + b - 1.0 - r, a - 1.0, a + b + x - 1.0, z)
    return (a + b + x - 1.0) / (a - 1.0) * (1.0 - term)


def fit_bgnbd(
    frequency: ArrayLike,
    recency: ArrayLike,
    T: ArrayLike,
    *,
    initial: tuple[float, float, float, float] | None = None,
) -> BgNbdModel:
    """Fit (r, alpha, a, b) by maximum likelihood; never raises on data, reports ``converged``.

    The optimizer works on log-parameters (so they stay positive) with the analytic gradient,
    L-BFGS-B first and Nelder-Mead as a fallback. ``initial`` is (r, alpha, a, b) in the data's
    time unit. ``converged`` is False when the optimizer failed, a parameter ran to the edge of
    its range (the likelihood has no interior maximum, e.g. no repeat buyers) or the result is
    not finite.
    """
    started = time.perf_counter()
    d = prepare_bgnbd_data(frequency, recency, T)
    if d.n_customers == 0:
        nan = float("nan")
        return BgNbdModel(nan, nan, nan, nan, nan, False, 0, 0.0, 0, "no valid customers")
    max_t = float(np.max(d.T))
    scale = TIME_SCALE_TARGET / max_t if max_t > 0 else 1.0
    scaled = BgNbdData(d.x, d.t_x * scale, d.T * scale, d.weight, d.unique_x, d.weight_per_x, d.n_customers)
    if initial is None:
        start = np.zeros(4)
    else:
        r0, alpha0, a0, b0 = initial
        start = np.log(np.array([r0, alpha0 * scale, a0, b0], dtype=np.float64))
    bounds = [(-LOG_PARAM_BOUND, LOG_PARAM_BOUND)] * 4
    with np.errstate(all="ignore"):
        res = optimize.minimize(
            _neg_ll_and_grad,
            start,
            args=(scaled,),
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"ftol": LBFGS_FTOL, "gtol": LBFGS_GTOL, "maxiter": LBFGS_MAXITER},
        )
        solution = np.asarray(res.x, dtype=np.float64)
        success, iterations, message = bool(res.success), int(res.nit), str(res.message)
        if not success or not np.isfinite(res.fun):
            res = optimize.minimize(
                lambda p: _neg_ll_and_grad(p, scaled)[0],
                solution if np.all(np.isfinite(solution)) else start,
                method="Nelder-Mead",
                options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 20000},
            )
            solution = np.clip(np.asarray(res.x, dtype=np.float64), -LOG_PARAM_BOUND, LOG_PARAM_BOUND)
            success, iterations, message = bool(res.success), iterations + int(res.nit), str(res.message)
        value = float(_neg_ll_and_grad(solution, scaled)[0])
    r, alpha_scaled, a, b = (float(v) for v in np.exp(solution))
    alpha = alpha_scaled / scale
    # The papers' log-likelihood is in the original time unit: rescaling t by s multiplies each
    # customer's density by s^-x (x purchase times), so add back x*ln(s) per customer.
    ll = -value * d.n_customers + float(np.dot(d.weight, d.x)) * float(np.log(scale))
    finite = bool(np.all(np.isfinite(solution)) and np.isfinite(ll))
    converged = success and finite and not at_bound(solution)
    if finite and at_bound(solution):
        message = "a parameter reached the edge of its range: the likelihood has no interior maximum"
    return BgNbdModel(
        r, alpha, a, b, ll, converged, iterations, time.perf_counter() - started, d.n_customers, message
    )
