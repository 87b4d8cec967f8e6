"""Parameter recovery: the LTV fitters recover the sandbox generator's BG/NBD and Gamma-Gamma parameters.

For a few seeded 100,000-customer worlds (no injected dirt), the purchase history is read back from
the world's own ``Closed Won`` Salesforce opportunities (``CloseDate`` as the purchase day, ``Amount``
converted to USD with the world's rates), summarized and fitted with ``fit_bgnbd`` /
``fit_gamma_gamma``; the fitted parameters must lie within ``Z_MAX`` standard errors of
``truth.params``.  Standard errors come from the observed information: the inverse Hessian of the
log-likelihood at the optimum (finite differences on log-parameters, then the delta method).  The
log-likelihoods used for the Hessian are written out independently here for Gamma-Gamma (Fader &
Hardie 2013, eq. 3) and taken from ``ltvsync.core.bgnbd.log_likelihood`` for BG/NBD.

Two summaries are fitted:

* one transaction per opportunity (the generator's unit): frequency = won opportunities - 1, recency
  and T in whole UTC days as the generator's ``CloseDate`` allows, T up to ``world.as_of`` (the
  generator draws repeats in (first purchase, as_of]).  This must match truth within ``Z_MAX`` SE.
* the pipeline's convention (``rfm_summary``: purchases on one UTC day are one transaction, as in
  the CDNOW data the papers use).  The generator draws purchases in continuous time, so about 1.7% of
  repeats share a day with another purchase and vanish in this summary; they are concentrated on the
  fastest buyers, which measurably biases alpha up (~5%, about 5 SE at 100k customers) and gamma up
  (~4%).  That is a property of day-level aggregation, not a fitter error, so this summary is held to
  a looser bound (``CONVENTION_REL_TOL``) and the deviation is printed.

Run with ``-s`` to see fitted vs true values and z-scores (also attached via ``record_property``).
No vendor API documentation is involved beyond the opportunity fields (API-REFERENCE §1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import special

from ltvsync.core.bgnbd import log_likelihood as bgnbd_log_likelihood
from ltvsync.core.ltv import fit_bgnbd, fit_gamma_gamma, rfm_summary
from ltvsync.sandbox.world import WorldParams, generate_world
from ltvsync.sandbox.world_salesforce import FX_TO_USD

FloatArray = NDArray[np.float64]

N_CUSTOMERS = 100_000
SEEDS = (101, 202, 303)
AS_OF = datetime(2026, 11, 1, tzinfo=UTC)
DAYS_PER_WEEK = 7.0
# 4 standard errors: with 7 parameters x 3 seeds = 21 comparisons, a correct fitter on a correct
# generator fails one by chance with probability ~21 * 6.3e-5 = 0.13% (and the worlds are seeded).
Z_MAX = 4.0
# Day-level aggregation's measured shift is ~5.5% (alpha); 12% still catches real errors (a
# days/weeks mix-up is 7x, a lost first-purchase exclusion moves gamma by ~20%).
CONVENTION_REL_TOL = 0.12
# Step of the finite-difference Hessian in log-parameter space.
HESSIAN_STEP = 1e-3


@dataclass(frozen=True)
class Purchases:
    """The won opportunities of one world, as arrays (the world itself is discarded: ~1 GB)."""

    seed: int
    customer: NDArray[np.int64]
    day: NDArray[np.int64]  # UTC days since the epoch (CloseDate)
    usd: FloatArray
    first_amount_usd: FloatArray
    truth_repeats: NDArray[np.int64]
    params: WorldParams


@pytest.fixture(scope="module", params=SEEDS, ids=lambda s: f"seed{s}")
def purchases(request: pytest.FixtureRequest) -> Purchases:
    world = generate_world(N_CUSTOMERS, seed=request.param, as_of=AS_OF, dirt_rate=0.0)
    number = {cid: i for i, cid in enumerate(world.truth.contact_id)}
    won = [o for o in world.salesforce["Opportunity"].values() if o["IsWon"]]
    return Purchases(
        seed=request.param,
        customer=np.array([number[o["ContactId"]] for o in won], dtype=np.int64),
        day=np.array([o["CloseDate"] for o in won], dtype="datetime64[D]").astype(np.int64),
        usd=np.array([o["Amount"] * FX_TO_USD[o["CurrencyIsoCode"]] for o in won]),
        first_amount_usd=np.asarray(world.truth.first_amount_usd, dtype=np.float64),
        truth_repeats=np.asarray(world.truth.repeat_purchases, dtype=np.int64),
        params=world.truth.params,
    )


@dataclass(frozen=True)
class Summary:
    x: FloatArray
    t_x: FloatArray
    T: FloatArray
    m: FloatArray


def per_opportunity_summary(p: Purchases) -> Summary:
    """One transaction per won opportunity; times in weeks from the first purchase's day."""
    n = p.first_amount_usd.size
    count = np.bincount(p.customer, minlength=n)
    first_day = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(first_day, p.customer, p.day)
    last_day = np.zeros(n, dtype=np.int64)
    np.maximum.at(last_day, p.customer, p.day)
    as_of_day = int(np.datetime64(AS_OF.date(), "D").astype(np.int64))
    x = (count - 1).astype(np.float64)
    total = np.bincount(p.customer, weights=p.usd, minlength=n)
    # The first purchase starts the relationship and is excluded from the repeat mean (Fader &
    # Hardie 2013); which opportunity it was is ambiguous on a shared day, so take truth's amount.
    m = np.divide(total - p.first_amount_usd, x, out=np.zeros(n), where=x > 0)
    return Summary(
        x, (last_day - first_day) / DAYS_PER_WEEK, (as_of_day - first_day) / DAYS_PER_WEEK, np.maximum(m, 0.0)
    )


def pipeline_summary(p: Purchases) -> Summary:
    s = rfm_summary(p.customer, p.day.astype("datetime64[D]"), p.usd, AS_OF, unit="week")
    return Summary(s.frequency, s.recency, s.T, s.monetary_value)


def gamma_gamma_log_likelihood(x: FloatArray, m: FloatArray, p: float, q: float, gamma: float) -> float:
    """Fader & Hardie (2013) eq. 3 summed over repeat buyers (x > 0, m > 0), written out afresh."""
    ok = (x > 0) & (m > 0)
    x, m = x[ok], m[ok]
    px = p * x
    return float(
        np.sum(
            special.gammaln(px + q)
            - special.gammaln(px)
            - special.gammaln(q)
            + q * np.log(gamma)
            + (px - 1.0) * np.log(m)
            + px * np.log(x)
            - (px + q) * np.log(gamma + m * x)
        )
    )


def standard_errors(loglik: Callable[[FloatArray], float], estimate: FloatArray) -> FloatArray:
    """SEs from the inverse observed information, by central differences on log-parameters."""
    theta = np.log(estimate)
    k = theta.size
    h = HESSIAN_STEP
    hess = np.zeros((k, k))
    for i in range(k):
        for j in range(i, k):
            ei, ej = np.eye(k)[i] * h, np.eye(k)[j] * h
            value = (
                loglik(np.exp(theta + ei + ej))
                - loglik(np.exp(theta + ei - ej))
                - loglik(np.exp(theta - ei + ej))
                + loglik(np.exp(theta - ei - ej))
            ) / (4.0 * h * h)
            hess[i, j] = hess[j, i] = value
    cov_log = np.linalg.inv(-hess)
    assert np.all(np.diag(cov_log) > 0), f"information matrix not positive definite: {hess}"
    # Delta method: d(param) = param * d(log param).
    return np.sqrt(np.diag(cov_log)) * estimate


def report(
    record_property: Callable[[str, object], None],
    label: str,
    names: tuple[str, ...],
    fitted: FloatArray,
    true: FloatArray,
    se: FloatArray,
) -> FloatArray:
    z = (fitted - true) / se
    lines = [f"{label}:"] + [
        f"  {n:>5}: fitted {f:9.4f}  true {t:9.4f}  SE {s:7.4f}  z {zz:+6.2f}  rel {(f - t) / t:+.2%}"
        for n, f, t, s, zz in zip(names, fitted, true, se, z, strict=True)
    ]
    print("\n" + "\n".join(lines))
    record_property(
        label, {n: (float(f), float(t), float(s)) for n, f, t, s in zip(names, fitted, true, se, strict=True)}
    )
    return z


def test_opportunities_render_every_drawn_purchase(purchases: Purchases) -> None:
    """Before fitting: the world's won opportunities are exactly truth's first purchase + x repeats."""
    count = np.bincount(purchases.customer, minlength=purchases.truth_repeats.size)
    np.testing.assert_array_equal(count - 1, purchases.truth_repeats)
    assert np.all(purchases.usd > 0)


def test_bgnbd_recovers_generator_parameters(
    purchases: Purchases, record_property: Callable[[str, object], None]
) -> None:
    s = per_opportunity_summary(purchases)
    fit = fit_bgnbd(s.x, s.t_x, s.T)
    assert fit.converged, fit.message
    estimate = np.array([fit.r, fit.alpha, fit.a, fit.b])
    se = standard_errors(lambda v: bgnbd_log_likelihood(s.x, s.t_x, s.T, *v), estimate)
    prm = purchases.params
    true = np.array([prm.r, prm.alpha, prm.a, prm.b])
    z = report(record_property, f"BG/NBD seed {purchases.seed}", ("r", "alpha", "a", "b"), estimate, true, se)
    assert np.all(np.abs(z) <= Z_MAX), f"BG/NBD off by more than {Z_MAX} SE: z = {np.round(z, 2)}"


def test_gamma_gamma_recovers_generator_parameters(
    purchases: Purchases, record_property: Callable[[str, object], None]
) -> None:
    s = per_opportunity_summary(purchases)
    fit = fit_gamma_gamma(s.x, s.m)
    assert fit.converged and not fit.degenerate, fit.reason
    estimate = np.array([fit.p, fit.q, fit.gamma])
    # The fitter's optimum must also be the optimum of the independently written likelihood.
    best = gamma_gamma_log_likelihood(s.x, s.m, *estimate)
    for factor in (0.99, 1.01):
        for i in range(3):
            moved = estimate.copy()
            moved[i] *= factor
            assert gamma_gamma_log_likelihood(s.x, s.m, *moved) < best
    se = standard_errors(lambda v: gamma_gamma_log_likelihood(s.x, s.m, *v), estimate)
    prm = purchases.params
    true = np.array([prm.p, prm.q, prm.gamma])
    z = report(record_property, f"Gamma-Gamma seed {purchases.seed}", ("p", "q", "gamma"), estimate, true, se)
    assert np.all(np.abs(z) <= Z_MAX), f"Gamma-Gamma off by more than {Z_MAX} SE: z = {np.round(z, 2)}"


def test_day_level_convention_stays_close_to_truth(
    purchases: Purchases, record_property: Callable[[str, object], None]
) -> None:
    """The pipeline's same-day collapse loses a few repeats; the fit moves a little, not a lot."""
    s = pipeline_summary(purchases)
    opp = per_opportunity_summary(purchases)
    lost = 1.0 - float(np.sum(s.x)) / float(np.sum(opp.x))
    assert 0.0 <= lost < 0.05, f"same-day collapse removed {lost:.1%} of repeat purchases"
    bg = fit_bgnbd(s.x, s.t_x, s.T)
    gg = fit_gamma_gamma(s.x, s.m)
    assert bg.converged and gg.converged
    prm = purchases.params
    fitted = np.array([bg.r, bg.alpha, bg.a, bg.b, gg.p, gg.q, gg.gamma])
    true = np.array([prm.r, prm.alpha, prm.a, prm.b, prm.p, prm.q, prm.gamma])
    names = ("r", "alpha", "a", "b", "p", "q", "gamma")
    rel = (fitted - true) / true
    lines = [
        f"  {n:>5}: fitted {f:9.4f}  true {t:9.4f}  rel {e:+.2%}"
        for n, f, t, e in zip(names, fitted, true, rel, strict=True)
    ]
    print(
        f"\nday-level summary, seed {purchases.seed} ({lost:.2%} of repeats collapsed):\n" + "\n".join(lines)
    )
    record_property(f"day-level seed {purchases.seed}", dict(zip(names, map(float, fitted), strict=True)))
    assert np.all(np.abs(rel) <= CONVENTION_REL_TOL), f"relative errors {np.round(rel, 3)}"
