"""Gamma-Gamma model of spend per transaction: maximum-likelihood fit and expected spend.

Pure maths: arrays in, frozen values out; no I/O, no clock (``fit_seconds`` is a duration only).

Reference (no vendor API involved): Fader & Hardie (2013), "The Gamma-Gamma Model of Monetary
Value" (http://www.brucehardie.com/notes/025/): the density of a customer's mean repeat-transaction
value m given x transactions (eq. 3) and the conditional expectation E[M | p, q, gamma, m, x]
(eq. 5), which reduces to the population mean p*gamma/(q-1) when x = 0. Both need q > 1.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize, special

from ltvsync.core.bgnbd import (
    LBFGS_FTOL,
    LBFGS_GTOL,
    LBFGS_MAXITER,
    LOG_PARAM_BOUND,
    NELDER_MEAD_MAXITER,
    _dot,
    at_bound,
)
from ltvsync.core.rfm import FloatArray, as_float, factorize, single_threaded_blas


@dataclass(frozen=True, slots=True)
class _SpendData:
    """Repeat buyers reduced to what the likelihood needs.

    Per row the likelihood only involves the total repeat spend x*m (in ln(gamma + x m)), so rows
    are grouped by unique x*m with their count and summed x: one sort of one column, not of pairs.
    Terms in x alone are grouped by unique x; ln(m) terms do not depend on the parameters.
    """

    xm: FloatArray
    weight: FloatArray
    wx: FloatArray
    sum_w_log_m: float
    sum_wx_log_m: float
    unique_x: FloatArray
    weight_per_x: FloatArray
    n_customers: int
    scale: float


def _prepare(frequency: ArrayLike, monetary_value: ArrayLike, scale: float | None = None) -> _SpendData:
    """Keep customers the model describes (x > 0 and a finite, positive mean spend) and group them.

    ``scale`` multiplies the spend; None scales it to a mean of one, which keeps the optimizer's
    parameters of order one whatever the currency (gamma is scaled back after the fit).
    """
    x, m = np.broadcast_arrays(as_float(frequency), as_float(monetary_value))
    ok = np.isfinite(x) & np.isfinite(m) & (x > 0) & (m > 0)
    x, m = x[ok], m[ok]
    if scale is None:
        scale = 1.0 / float(np.mean(m)) if m.size else 1.0
    m = m * scale
    log_m = np.log(m)
    unique_xm, inverse_xm = np.unique(x * m, return_inverse=True)
    inverse_xm = inverse_xm.reshape(-1)
    unique_x, inverse_x = factorize(x)
    return _SpendData(
        unique_xm,
        np.bincount(inverse_xm, minlength=unique_xm.size).astype(np.float64),
        np.bincount(inverse_xm, weights=x, minlength=unique_xm.size).astype(np.float64),
        float(np.sum(log_m)),
        _dot(x, log_m),
        unique_x,
        np.bincount(inverse_x, minlength=unique_x.size).astype(np.float64),
        int(x.size),
        scale,
    )


def _neg_ll_and_grad(log_params: FloatArray, d: _SpendData) -> tuple[float, FloatArray]:
    """Mean negative log-likelihood (eq. 3) and its gradient w.r.t. (ln p, ln q, ln gamma).

    ln f = lnG(px+q) - lnG(px) - lnG(q) + q ln(gamma) + px ln(x) + (px-1) ln(m) - (px+q) ln(gamma+xm).
    The lnG terms depend on x only and are summed over unique x with their weights; the ln(m)
    sums do not depend on the parameters and are computed once.
    """
    p, q, g = (float(v) for v in np.exp(log_params))
    ux, wx = d.unique_x, d.weight_per_x
    px = p * ux
    ll_x = (
        special.gammaln(px + q) - special.gammaln(px) - special.gammaln(q) + q * np.log(g) + px * np.log(ux)
    )
    dig_pxq = special.digamma(px + q)
    ll = _dot(wx, ll_x) + p * d.sum_wx_log_m - d.sum_w_log_m
    g_p = _dot(wx, ux * (dig_pxq - special.digamma(px) + np.log(ux))) + d.sum_wx_log_m
    g_q = _dot(wx, dig_pxq - special.digamma(q) + np.log(g))
    g_g = float(np.sum(wx)) * q / g

    gxm = d.xm + g
    inv_gxm = np.reciprocal(gxm)
    log_gxm = np.log(gxm, out=gxm)
    wx_log = _dot(d.wx, log_gxm)
    w_log = _dot(d.weight, log_gxm)
    ll -= p * wx_log + q * w_log
    g_p -= wx_log
    g_q -= w_log
    g_g -= p * _dot(d.wx, inv_gxm) + q * _dot(d.weight, inv_gxm)
    n = float(d.n_customers)
    grad = np.array([g_p * p, g_q * q, g_g * g], dtype=np.float64)
    return -ll / n, -grad / n


@dataclass(frozen=True, slots=True)
class GammaGammaModel:
    """A fitted Gamma-Gamma model; ``gamma`` is in the currency unit of the data.

    ``degenerate`` is True when q <= 1 (the mean spend is infinite, so expected spend is undefined)
    or the fit produced no usable parameters; ``reason`` says why.
    """

    p: float
    q: float
    gamma: float
    log_likelihood: float
    converged: bool
    fit_seconds: float
    n_customers: int
    iterations: int = 0
    degenerate: bool = False
    reason: str = ""

    def expected_spend(self, frequency: ArrayLike, monetary_value: ArrayLike) -> FloatArray:
        """E[M | x, m] = (gamma + x m) p / (p x + q - 1) (eq. 5); the population mean for x == 0.

        Customers with non-finite or negative inputs get the population mean too. Returns NaN
        everywhere only for a degenerate model, which callers must check first (``degenerate``).
        """
        x, m = np.broadcast_arrays(as_float(frequency), as_float(monetary_value))
        if self.degenerate:
            return np.full(x.shape, np.nan)
        valid = np.isfinite(x) & np.isfinite(m) & (x > 0) & (m >= 0)
        xs = np.where(valid, x, 0.0)
        ms = np.where(valid, m, 0.0)
        return (self.gamma + xs * ms) * self.p / (self.p * xs + self.q - 1.0)


def fit_gamma_gamma(frequency: ArrayLike, monetary_value: ArrayLike) -> GammaGammaModel:
    """Fit (p, q, gamma) by maximum likelihood on repeat buyers (x > 0, m > 0); others are ignored.

    Money is rescaled to a mean of one for the optimizer (gamma is scaled back), which works on
    log-parameters with the analytic gradient (L-BFGS-B, Nelder-Mead as fallback). Never raises on
    data: problems show as ``converged=False`` and/or ``degenerate=True`` with a ``reason``.
    """
    with single_threaded_blas():
        return _fit_gamma_gamma(frequency, monetary_value)


def _fit_gamma_gamma(frequency: ArrayLike, monetary_value: ArrayLike) -> GammaGammaModel:
    started = time.perf_counter()
    d = _prepare(frequency, monetary_value)
    if d.n_customers == 0:
        nan = float("nan")
        return GammaGammaModel(nan, nan, nan, nan, False, 0.0, 0, 0, True, "no repeat buyers with spend > 0")
    scale = d.scale
    start = np.zeros(3)
    with np.errstate(all="ignore"):
        res = optimize.minimize(
            _neg_ll_and_grad,
            start,
            args=(d,),
            jac=True,
            method="L-BFGS-B",
            bounds=[(-LOG_PARAM_BOUND, LOG_PARAM_BOUND)] * 3,
            options={"ftol": LBFGS_FTOL, "gtol": LBFGS_GTOL, "maxiter": LBFGS_MAXITER},
        )
        solution = np.asarray(res.x, dtype=np.float64)
        success, iterations = bool(res.success), int(res.nit)
        if (not success or not np.isfinite(res.fun)) and not at_bound(solution):
            res = optimize.minimize(
                lambda v: _neg_ll_and_grad(v, d)[0],
                solution if np.all(np.isfinite(solution)) else start,
                method="Nelder-Mead",
                options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": NELDER_MEAD_MAXITER},
            )
            solution = np.clip(np.asarray(res.x, dtype=np.float64), -LOG_PARAM_BOUND, LOG_PARAM_BOUND)
            success, iterations = bool(res.success), iterations + int(res.nit)
        value = float(_neg_ll_and_grad(solution, d)[0])
    p, q, g_scaled = (float(v) for v in np.exp(solution))
    # Scaling m by s multiplies each density by 1/s (m is a continuous variable): add n ln(s) back.
    ll = -value * d.n_customers + d.n_customers * float(np.log(scale))
    finite = bool(np.all(np.isfinite(solution)) and np.isfinite(ll))
    converged = success and finite and not at_bound(solution)
    reason = ""
    if not finite:
        reason = "the fit produced non-finite parameters"
    elif q <= 1.0:
        reason = f"q = {q:.4g} <= 1: mean spend per transaction is infinite, expected spend undefined"
    elif not converged:
        reason = "the optimizer did not converge to an interior maximum"
    return GammaGammaModel(
        p,
        q,
        g_scaled / scale,
        ll,
        converged,
        time.perf_counter() - started,
        d.n_customers,
        iterations,
        bool(not finite or q <= 1.0),
        reason,
    )
