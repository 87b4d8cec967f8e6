"""Gamma-Gamma: published CDNOW results, parameter recovery, degenerate fits, CLV and fit_models.

Data: tests/data/cdnow_sample_summary.csv, the CDNOW 1/10 sample of Fader & Hardie (2001),
"Forecasting Repeat Sales at CDNOW", Interfaces 31(3); published Gamma-Gamma results from Fader &
Hardie (2013), "The Gamma-Gamma Model of Monetary Value". See tests/data/README.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import special

from ltvsync.core.gamma_gamma import _neg_ll_and_grad, _prepare, fit_gamma_gamma
from ltvsync.core.ltv import clv, fit_bgnbd, fit_models
from ltvsync.core.rfm import RfmSummary

CDNOW = Path(__file__).resolve().parents[1] / "data" / "cdnow_sample_summary.csv"


@pytest.fixture(scope="module")
def cdnow() -> np.ndarray:
    return np.loadtxt(CDNOW, delimiter=",", skiprows=1)


def naive_log_likelihood(x, m, p, q, g) -> float:
    """Eq. 3 of Fader & Hardie (2013) term by term in logs: density of the mean spend m given x."""
    log_dens = (
        special.gammaln(p * x + q)
        - special.gammaln(p * x)
        - special.gammaln(q)
        + q * np.log(g)
        + (p * x - 1) * np.log(m * x)
        + np.log(x)
        - (p * x + q) * np.log(g + m * x)
    )
    return float(np.sum(log_dens))


def simulate(seed: int, n: int, p: float, q: float, g: float):
    """x repeat transactions each ~ Gamma(p, rate nu), nu ~ Gamma(q, rate g); m is their mean."""
    rng = np.random.default_rng(seed)
    x = 1.0 + rng.poisson(2.0, n)
    nu = rng.gamma(q, 1.0 / g, n)
    m = rng.gamma(p * x, 1.0 / nu) / x
    return x, m


def test_cdnow_parameters_match_the_note(cdnow: np.ndarray) -> None:
    model = fit_gamma_gamma(cdnow[:, 1], cdnow[:, 4])
    assert model.converged and not model.degenerate
    assert model.n_customers == 946
    assert (round(model.p, 2), round(model.q, 2)) == (6.25, 3.74)
    # The note prints gamma = 15.44; the maximum is at 15.4477 (lifetimes 0.11.3 finds 15.447748 on
    # this file too), which rounds to 15.45: the note truncated. So compare to within 0.01.
    assert abs(model.gamma - 15.44) < 0.01
    x, m = cdnow[:, 1], cdnow[:, 4]
    buyers = x > 0
    published = naive_log_likelihood(x[buyers], m[buyers], 6.25, 3.74, 15.44)
    ours = naive_log_likelihood(x[buyers], m[buyers], model.p, model.q, model.gamma)
    assert model.log_likelihood == pytest.approx(ours, rel=1e-10)
    assert ours >= published


def test_expected_spend_matches_lifetimes_reference(cdnow: np.ndarray) -> None:
    model = fit_gamma_gamma(cdnow[:, 1], cdnow[:, 4])
    # Reference: lifetimes 0.11.3 GammaGammaFitter.conditional_expected_average_profit, same data.
    got = model.expected_spend([2, 1, 0, 1], [22.35, 11.77, 0.0, 9.99])
    np.testing.assert_allclose(got, [24.658616189, 18.911479870, 35.171002153, 17.674697382], rtol=1e-6)
    # Shrinkage: the estimate lies between the customer's own mean and the population mean.
    population = model.p * model.gamma / (model.q - 1)
    assert 11.77 < got[1] < population


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_recovers_known_parameters_within_sampling_error(seed: int) -> None:
    truth = np.array([4.0, 3.5, 20.0])
    x, m = simulate(seed, 30_000, *truth)
    model = fit_gamma_gamma(x, m)
    assert model.converged and not model.degenerate
    fitted = np.array([model.p, model.q, model.gamma])
    # Asymptotic SEs: observed information by central differences of the analytic gradient.
    data = _prepare(x, m, 1.0)
    theta = np.log(fitted)
    hess = np.empty((3, 3))
    for j in range(3):
        step = np.zeros(3)
        step[j] = 1e-4
        hess[:, j] = (
            _neg_ll_and_grad(theta + step, data)[1] - _neg_ll_and_grad(theta - step, data)[1]
        ) / 2e-4
    se = fitted * np.sqrt(np.diag(np.linalg.inv((hess + hess.T) / 2 * data.n_customers)))
    assert np.all(4 * se < 0.2 * truth)
    assert np.all(np.abs(fitted - truth) < 4 * se), (fitted, se)


def test_heavy_tailed_spend_is_reported_degenerate() -> None:
    # With q < 1 the mean spend per transaction is infinite: expected spend is undefined.
    x, m = simulate(5, 20_000, 2.0, 0.6, 5.0)
    model = fit_gamma_gamma(x, m)
    assert model.degenerate and "q" in model.reason
    assert np.all(np.isnan(model.expected_spend([1, 2], [10.0, 20.0])))


@pytest.mark.parametrize(
    ("x", "m"),
    [
        pytest.param(np.zeros(100), np.zeros(100), id="no-repeat-buyers"),
        pytest.param(np.full(300, 3.0), np.full(300, 25.0), id="identical"),
        pytest.param(np.array([1.0, 2.0, 5.0]), np.array([10.0, 12.0, 30.0]), id="three"),
        pytest.param(np.array([1.0, np.nan, 2.0, 3.0]), np.array([0.0, 5.0, -3.0, np.inf]), id="invalid"),
    ],
)
def test_degenerate_inputs_never_raise(x: np.ndarray, m: np.ndarray) -> None:
    model = fit_gamma_gamma(x, m)
    if model.converged and not model.degenerate:
        assert np.all(np.isfinite([model.p, model.q, model.gamma, model.log_likelihood]))
        assert np.all(np.isfinite(model.expected_spend(x, np.nan_to_num(m))))
    else:
        assert model.reason


def _summary(x, t_x, big_t, m) -> RfmSummary:
    return RfmSummary(
        np.arange(len(x)), np.asarray(x), np.asarray(t_x), np.asarray(big_t), np.asarray(m), "week"
    )


def test_clv_matches_lifetimes_reference(cdnow: np.ndarray) -> None:
    x, t_x, big_t, m = cdnow[:, 1], cdnow[:, 2], cdnow[:, 3], cdnow[:, 4]
    bg = fit_bgnbd(x, t_x, big_t)
    gg = fit_gamma_gamma(x, m)
    rows = [0, 1, 2, 17]
    got = clv(bg, gg, x[rows], t_x[rows], big_t[rows], m[rows], horizon=12, discount_rate=0.01)
    # Reference: lifetimes 0.11.3 GammaGammaFitter.customer_lifetime_value(time=12,
    # discount_rate=0.01, freq="W") with the same fits.
    np.testing.assert_allclose(got, [36.278495764, 4.637466329, 8.344093122, 6.349622110], rtol=1e-6)


def test_clv_undiscounted_is_expected_purchases_times_spend(cdnow: np.ndarray) -> None:
    x, t_x, big_t, m = cdnow[:, 1], cdnow[:, 2], cdnow[:, 3], cdnow[:, 4]
    bg, gg = fit_bgnbd(x, t_x, big_t), fit_gamma_gamma(x, m)
    flat = clv(bg, gg, x, t_x, big_t, m, horizon=6, discount_rate=0.0, unit="day", unit_per_month=30.0 / 7)
    expected = bg.expected_purchases(6 * 30.0 / 7, x, t_x, big_t) * gg.expected_spend(x, m)
    np.testing.assert_allclose(flat, expected, rtol=1e-9)
    discounted = clv(bg, gg, x, t_x, big_t, m, horizon=6, discount_rate=0.05)
    assert np.all(discounted < flat) and np.all(discounted > 0)


def test_fit_models_succeeds_on_cdnow(cdnow: np.ndarray) -> None:
    fit = fit_models(_summary(cdnow[:, 1], cdnow[:, 2], cdnow[:, 3], cdnow[:, 4]), 100, 50)
    assert fit.usable and fit.fallback_reason is None
    assert fit.bgnbd is not None and fit.gamma_gamma is not None
    assert (fit.n_customers, fit.n_repeat_buyers) == (2357, 946)


@pytest.mark.parametrize(
    ("summary", "minimums", "reason"),
    [
        (
            _summary([0.0, 1.0, 3.0], [0.0, 2.0, 9.0], [10.0] * 3, [0.0, 5.0, 7.0]),
            (10, 1),
            "too few customers",
        ),
        (_summary([0.0] * 50, [0.0] * 50, [30.0] * 50, [0.0] * 50), (10, 5), "too few repeat buyers"),
        (_summary([0.0] * 50, [0.0] * 50, [30.0] * 50, [0.0] * 50), (10, 0), "BG/NBD did not converge"),
        (_summary([2.0] * 40, [5.0] * 40, [10.0] * 40, [9.0] * 40), (10, 5), "did not converge"),
        (_summary([0.0, 1.0, 3.0], [0.0, 2.0, 9.0], [10.0] * 3, [0.0, 5.0, 7.0]), (0, 0), ""),
    ],
)
def test_fit_models_falls_back_instead_of_raising(
    summary: RfmSummary, minimums: tuple[int, int], reason: str
) -> None:
    fit = fit_models(summary, *minimums)
    if fit.usable:
        # Only acceptable if the models really are finite and usable.
        assert fit.bgnbd is not None and fit.gamma_gamma is not None
        assert np.all(
            np.isfinite(fit.bgnbd.expected_purchases(10, summary.frequency, summary.recency, summary.T))
        )
    else:
        assert fit.fallback_reason is not None and reason in fit.fallback_reason


def test_fit_models_reports_degenerate_gamma_gamma() -> None:
    # BG/NBD-distributed purchases (see test_bgnbd.simulate) with heavy-tailed (q < 1) spend.
    rng = np.random.default_rng(3)
    n = 20_000
    big_t = rng.uniform(20.0, 60.0, n)
    n_events = rng.poisson(rng.gamma(0.6, 1.0 / 8.0, n) * big_t)
    x = np.minimum(n_events, rng.geometric(rng.beta(0.9, 3.0, n))).astype(float)
    t_x = np.where(x > 0, big_t * rng.beta(np.maximum(x, 1), n_events - x + 1), 0.0)
    nu = rng.gamma(0.6, 1.0 / 5.0, n)
    m = np.where(x > 0, rng.gamma(2.0 * np.maximum(x, 1), 1.0 / nu) / np.maximum(x, 1), 0.0)
    fit = fit_models(_summary(x, t_x, big_t, m), 100, 100)
    assert not fit.usable and fit.fallback_reason is not None and "Gamma-Gamma" in fit.fallback_reason
    assert fit.bgnbd is not None and fit.bgnbd.converged  # P(alive) stays available


def test_fit_models_survives_a_malformed_summary() -> None:
    broken = RfmSummary(np.arange(3), np.array(["a", "b", "c"]), np.zeros(3), np.ones(3), np.zeros(3), "week")
    fit = fit_models(broken, 0, 0)
    assert not fit.usable and fit.fallback_reason
