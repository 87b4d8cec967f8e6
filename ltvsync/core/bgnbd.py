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
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize, special

from ltvsync.core.rfm import FloatArray, as_float, factorize, group_rows, single_threaded_blas

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
# Above this many grouped rows, a fit on a systematic sample provides the starting point.
WARM_START_ROWS = 40_000
# Fallback optimizer budget: enough for 3-4 parameters, bounded so a hopeless fit stays fast.
NELDER_MEAD_MAXITER = 2000
# Below this distance of ``a`` from 1 the (a-1) in eq. 10 cancels badly; evaluate on both sides.
A_NEAR_ONE = 1e-7


@dataclass(frozen=True, slots=True)
class BgNbdData:
    """The summary prepared for the likelihood, grouped into unique rows with weights.

    Repeat buyers (x > 0) as unique (x, t_x, T) triples; customers without a repeat purchase, whose
    likelihood only depends on T, as unique T values; and total weight per unique x (all rows).
    """

    x: FloatArray
    t_x: FloatArray
    T: FloatArray
    weight: FloatArray
    T0: FloatArray
    weight0: FloatArray
    unique_x: FloatArray
    weight_per_x: FloatArray
    n_customers: int

    def rescaled(self, scale: float) -> BgNbdData:
        """The same customers with every time multiplied by ``scale``."""
        return replace(self, t_x=self.t_x * scale, T=self.T * scale, T0=self.T0 * scale)


def prepare_bgnbd_data(frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> BgNbdData:
    """Validate and group the summary; rows that cannot come from a purchase history are dropped.

    A row is invalid when a value is not finite, x < 0, t_x < 0, t_x > T, or x == 0 with t_x > 0.
    """
    x, t_x, big_t = np.broadcast_arrays(as_float(frequency), as_float(recency), as_float(T))
    ok = np.isfinite(x) & np.isfinite(t_x) & np.isfinite(big_t)
    ok &= (x >= 0) & (t_x >= 0) & (t_x <= big_t) & ~((x == 0) & (t_x > 0))
    buyer = ok & (x > 0)
    (gx, gtx, gT), weight = group_rows(x[buyer], t_x[buyer], big_t[buyer])
    (gT0,), weight0 = group_rows(big_t[ok & (x == 0)])
    return _from_groups(gx, gtx, gT, weight, gT0, weight0)


def _from_groups(
    x: FloatArray, t_x: FloatArray, big_t: FloatArray, weight: FloatArray, T0: FloatArray, weight0: FloatArray
) -> BgNbdData:
    all_x = np.concatenate((np.zeros(1), x)) if weight0.size else x
    all_w = np.concatenate(([np.sum(weight0)], weight)) if weight0.size else weight
    unique_x, code = factorize(all_x)
    weight_per_x = np.bincount(code, weights=all_w, minlength=unique_x.size).astype(np.float64)
    n = round(float(np.sum(weight)) + float(np.sum(weight0)))
    return BgNbdData(x, t_x, big_t, weight, T0, weight0, unique_x, weight_per_x, n)


def _subsample(d: BgNbdData, max_rows: int) -> BgNbdData:
    """Every k-th grouped row, a systematic sample over the sorted (x, t_x, T) grid: cheap to fit,
    close enough to the full optimum to start from it."""
    step = max(1, -(-(d.x.size + d.T0.size) // max_rows))
    return _from_groups(
        d.x[::step], d.t_x[::step], d.T[::step], d.weight[::step], d.T0[::step], d.weight0[::step]
    )


def _dot(u: FloatArray, v: FloatArray) -> float:
    """Inner product without BLAS.

    Why: OpenBLAS threads its ddot for long vectors, and on a busy 2-core machine its spinning
    workers made a whole fit 10x slower than one thread; einsum's loop is single-threaded SIMD.
    """
    return float(np.einsum("i,i->", u, v))


class _Scratch:
    """Work arrays reused across likelihood evaluations.

    Why: allocating a dozen fresh row-sized temporaries per evaluation made the allocator map and
    unmap memory each time, which measured up to 6x slower than the arithmetic itself.
    """

    def __init__(self, n: int) -> None:
        (
            self.rx,
            self.log_at,
            self.log_atx,
            self.ln_a3,
            self.ln_a4,
            self.ln_a34,
            self.w3,
            self.w4,
            self.tmp,
        ) = (np.empty(n) for _ in range(9))


def _neg_ll_and_grad(
    log_params: FloatArray, d: BgNbdData, s: _Scratch | None = None
) -> tuple[float, FloatArray]:
    """Mean negative log-likelihood over customers and its gradient w.r.t. the log-parameters.

    ln L = ln A1 + ln A2 + ln(A3 + A4) (eq. 6). A1, A2 depend on x only and are summed over the
    unique x values with their total weights, so the special functions run a few hundred times,
    not per row. ln(A3 + A4) is a logaddexp so heavy buyers (large x) cannot overflow.
    """
    s = s if s is not None else _Scratch(d.x.size)
    r, alpha, a, b = (float(v) for v in np.exp(log_params))
    ux, wx = d.unique_x, d.weight_per_x
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
    ll = _dot(wx, a1a2)
    g_r = _dot(wx, special.digamma(r + ux) - special.digamma(r) + np.log(alpha))
    g_alpha = float(np.sum(wx)) * r / alpha
    g_a = _dot(wx, special.digamma(a + b) - dig_abx)
    g_b = _dot(wx, special.digamma(a + b) + special.digamma(b + ux) - special.digamma(b) - dig_abx)

    # Customers without repeat purchases: ln(A3) = -r ln(alpha + T).
    log_at0 = np.log(alpha + d.T0)
    ll -= r * _dot(d.weight0, log_at0)
    g_r -= _dot(d.weight0, log_at0)
    g_alpha -= r * float(np.sum(d.weight0 / (alpha + d.T0)))

    # Repeat buyers: ln(A3 + A4), A3 = (alpha+T)^-(r+x), A4 = a/(b+x-1) (alpha+t_x)^-(r+x).
    w = d.weight
    np.add(d.x, r, out=s.rx)
    np.log(np.add(d.T, alpha, out=s.log_at), out=s.log_at)
    np.log(np.add(d.t_x, alpha, out=s.log_atx), out=s.log_atx)
    np.negative(np.multiply(s.rx, s.log_at, out=s.ln_a3), out=s.ln_a3)
    np.log(np.add(d.x, b - 1.0, out=s.ln_a4), out=s.ln_a4)
    np.subtract(np.log(a), s.ln_a4, out=s.ln_a4)
    np.subtract(s.ln_a4, np.multiply(s.rx, s.log_atx, out=s.tmp), out=s.ln_a4)
    np.logaddexp(s.ln_a3, s.ln_a4, out=s.ln_a34)
    # Posterior weights of the two terms; they sum to w, which saves one exp per row.
    np.multiply(np.exp(np.subtract(s.ln_a3, s.ln_a34, out=s.w3), out=s.w3), w, out=s.w3)
    np.subtract(w, s.w3, out=s.w4)
    ll += _dot(w, s.ln_a34)
    g_r -= _dot(s.w3, s.log_at) + _dot(s.w4, s.log_atx)
    g_alpha -= _dot(s.w3, np.divide(s.rx, np.add(d.T, alpha, out=s.tmp), out=s.tmp))
    g_alpha -= _dot(s.w4, np.divide(s.rx, np.add(d.t_x, alpha, out=s.tmp), out=s.tmp))
    w4_total = float(np.sum(s.w4))
    g_a += w4_total / a
    g_b -= _dot(s.w4, np.reciprocal(np.add(d.x, b - 1.0, out=s.tmp), out=s.tmp))

    n = float(d.n_customers)
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
        # Clamp: at t = 0 (or from rounding) the difference in eq. 10 can come out as -0.0 or -1e-17.
        return np.maximum(growth, 0.0) * self.p_alive(x, t_x, big_t)

    def expected_purchases_new(self, t: ArrayLike) -> FloatArray:
        """E[X(t)]: expected repeat purchases of a new customer in ``t`` time units (eq. 9)."""
        tt = np.maximum(as_float(t), 0.0)
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        z = tt / (alpha + tt)
        term = np.exp((a - 1.0) * np.log1p(-z)) * hyp2f1_safe(a + b - 1.0 - r, a - 1.0, a + b - 1.0, z)
        return (a + b - 1.0) / (a - 1.0) * (1.0 - term)


def at_bound(log_params: FloatArray) -> bool:
    """True when a log-parameter sits at (or numerically next to) the edge of the search box."""
    # One unit of slack: Nelder-Mead stops near, not on, the edge; e^19 is no plausible value either.
    return bool(np.any(np.abs(log_params) > LOG_PARAM_BOUND - 1.0))


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
    with single_threaded_blas():
        return _fit_bgnbd(frequency, recency, T, initial)


def _fit_bgnbd(
    frequency: ArrayLike, recency: ArrayLike, T: ArrayLike, initial: tuple[float, float, float, float] | None
) -> BgNbdModel:
    started = time.perf_counter()
    d = prepare_bgnbd_data(frequency, recency, T)
    if d.n_customers == 0:
        nan = float("nan")
        return BgNbdModel(nan, nan, nan, nan, nan, False, 0, 0.0, 0, "no valid customers")
    max_t = float(max(np.max(d.T, initial=0.0), np.max(d.T0, initial=0.0)))
    scale = TIME_SCALE_TARGET / max_t if max_t > 0 else 1.0
    scaled = d.rescaled(scale)
    scratch = _Scratch(d.x.size)
    if initial is None:
        start = np.zeros(4)
        if d.x.size + d.T0.size > WARM_START_ROWS:
            # Fitting a sample first brings the start near the optimum, which saves most of the
            # (expensive) full-data iterations; the full fit below decides the answer.
            sample = _subsample(scaled, WARM_START_ROWS // 2)
            with np.errstate(all="ignore"):
                warm = optimize.minimize(
                    _neg_ll_and_grad,
                    start,
                    args=(sample, _Scratch(sample.x.size)),
                    jac=True,
                    method="L-BFGS-B",
                    bounds=[(-LOG_PARAM_BOUND, LOG_PARAM_BOUND)] * 4,
                    options={"ftol": 1e-10, "gtol": 1e-6, "maxiter": LBFGS_MAXITER},
                )
            if warm.success and np.all(np.isfinite(warm.x)) and not at_bound(np.asarray(warm.x)):
                start = np.asarray(warm.x, dtype=np.float64)
    else:
        r0, alpha0, a0, b0 = initial
        start = np.log(np.array([r0, alpha0 * scale, a0, b0], dtype=np.float64))
    bounds = [(-LOG_PARAM_BOUND, LOG_PARAM_BOUND)] * 4
    with np.errstate(all="ignore"):
        res = optimize.minimize(
            _neg_ll_and_grad,
            start,
            args=(scaled, scratch),
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"ftol": LBFGS_FTOL, "gtol": LBFGS_GTOL, "maxiter": LBFGS_MAXITER},
        )
        solution = np.asarray(res.x, dtype=np.float64)
        success, iterations, message = bool(res.success), int(res.nit), str(res.message)
        # Nelder-Mead only helps when L-BFGS-B stalled inside the box (line-search trouble);
        # a run to the edge means there is no maximum to find.
        if (not success or not np.isfinite(res.fun)) and not at_bound(solution):
            res = optimize.minimize(
                lambda p: _neg_ll_and_grad(p, scaled, scratch)[0],
                solution if np.all(np.isfinite(solution)) else start,
                method="Nelder-Mead",
                options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": NELDER_MEAD_MAXITER},
            )
            solution = np.clip(np.asarray(res.x, dtype=np.float64), -LOG_PARAM_BOUND, LOG_PARAM_BOUND)
            success, iterations, message = bool(res.success), iterations + int(res.nit), str(res.message)
        value = float(_neg_ll_and_grad(solution, scaled, scratch)[0])
    r, alpha_scaled, a, b = (float(v) for v in np.exp(solution))
    alpha = alpha_scaled / scale
    # The papers' log-likelihood is in the original time unit: rescaling t by s multiplies each
    # customer's density by s^-x (x purchase times), so add back x*ln(s) per customer.
    ll = -value * d.n_customers + _dot(d.weight, d.x) * float(np.log(scale))
    finite = bool(np.all(np.isfinite(solution)) and np.isfinite(ll))
    converged = success and finite and not at_bound(solution)
    if finite and at_bound(solution):
        message = "a parameter reached the edge of its range: the likelihood has no interior maximum"
    if d.x.size == 0:
        # Without a repeat purchase a and b are not identified and r/alpha drift to 0/infinity.
        converged, message = False, "no repeat buyers: the likelihood has no maximum"
    return BgNbdModel(
        r, alpha, a, b, ll, converged, iterations, time.perf_counter() - started, d.n_customers, message
    )
