"""BG/NBD: published CDNOW results, parameter recovery on simulated populations, robustness.

Data: tests/data/cdnow_sample_summary.csv, the CDNOW 1/10 sample of Fader & Hardie (2001),
"Forecasting Repeat Sales at CDNOW", Interfaces 31(3); published BG/NBD results from Fader, Hardie &
Lee (2005), "Counting Your Customers the Easy Way", Marketing Science 24(2). See tests/data/README.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import special

from ltvsync.core.bgnbd import (
    BgNbdModel,
    _hyp2f1_series,
    _neg_ll_and_grad,
    fit_bgnbd,
    hyp2f1_safe,
    log_likelihood,
    prepare_bgnbd_data,
)

CDNOW = Path(__file__).resolve().parents[1] / "data" / "cdnow_sample_summary.csv"


@pytest.fixture(scope="module")
def cdnow() -> np.ndarray:
    return np.loadtxt(CDNOW, delimiter=",", skiprows=1)


@pytest.fixture(scope="module")
def cdnow_model(cdnow: np.ndarray) -> BgNbdModel:
    return fit_bgnbd(cdnow[:, 1], cdnow[:, 2], cdnow[:, 3])


def naive_log_likelihood(x, t_x, T, r, alpha, a, b) -> float:
    """Eq. 6 of Fader, Hardie & Lee (2005) written literally (fine for CDNOW's small x)."""
    a1 = special.gamma(r + x) * alpha**r / special.gamma(r)
    a2 = special.beta(a, b + x) / special.beta(a, b)
    a3 = (1.0 / (alpha + T)) ** (r + x)
    a4 = np.where(x > 0, a / np.maximum(b + x - 1, 1e-300) * (1.0 / (alpha + t_x)) ** (r + x), 0.0)
    return float(np.sum(np.log(a1 * a2 * (a3 + a4))))


def simulate(seed: int, n: int, r: float, alpha: float, a: float, b: float):
    """Vectorized BG/NBD population: Poisson purchasing while alive, drop-out after each repeat purchase.

    x = min(N(T), J) with N(T) ~ Poisson(lambda T) and J ~ Geometric(p) the repeat purchase after
    which the customer drops out; t_x is the x-th of N uniform order statistics on (0, T].
    """
    rng = np.random.default_rng(seed)
    big_t = rng.uniform(20.0, 60.0, n)
    lam = rng.gamma(r, 1.0 / alpha, n)
    p = rng.beta(a, b, n)
    n_events = rng.poisson(lam * big_t)
    x = np.minimum(n_events, rng.geometric(p))
    t_x = np.where(x > 0, big_t * rng.beta(np.maximum(x, 1), n_events - x + 1), 0.0)
    return x.astype(float), t_x, big_t


def test_cdnow_parameters_match_the_paper(cdnow_model: BgNbdModel) -> None:
    m = cdnow_model
    assert m.converged
    assert (round(m.r, 3), round(m.alpha, 3), round(m.a, 3), round(m.b, 3)) == (0.243, 4.414, 0.793, 2.426)
    assert m.log_likelihood == pytest.approx(-9582.4, abs=0.05)
    assert m.n_customers == 2357


def test_cdnow_conditional_expectation_matches_the_paper(cdnow_model: BgNbdModel) -> None:
    assert float(cdnow_model.expected_purchases(39, 2, 30.43, 38.86)[0]) == pytest.approx(1.226, abs=0.001)


def test_p_alive_matches_lifetimes_reference(cdnow_model: BgNbdModel) -> None:
    # Reference: lifetimes 0.11.3 BetaGeoFitter.conditional_probability_alive on the same fit.
    got = cdnow_model.p_alive([2, 1, 0, 1], [30.43, 1.71, 0.0, 4.86], [38.86, 38.86, 38.86, 38.86])
    np.testing.assert_allclose(got, [0.7266091368, 0.2122273881, 1.0, 0.3109152810], rtol=1e-6)


def test_log_likelihood_agrees_with_the_literal_formula(cdnow: np.ndarray) -> None:
    x, t_x, big_t = cdnow[:, 1], cdnow[:, 2], cdnow[:, 3]
    for params in [(0.243, 4.414, 0.793, 2.426), (1.0, 1.0, 1.0, 1.0), (0.5, 10.0, 2.0, 0.7)]:
        expected = naive_log_likelihood(x, t_x, big_t, *params)
        assert log_likelihood(x, t_x, big_t, *params) == pytest.approx(expected, rel=1e-10)


def test_conditional_expectation_agrees_with_the_untransformed_eq_10(cdnow_model: BgNbdModel) -> None:
    m = cdnow_model
    x = np.array([0.0, 1.0, 3.0, 7.0, 15.0])
    t_x = np.array([0.0, 5.0, 20.0, 35.0, 38.0])
    big_t = np.full(5, 39.0)
    for t in (1.0, 39.0, 200.0):
        z = t / (m.alpha + big_t + t)
        num = (m.a + m.b + x - 1) / (m.a - 1)
        num = num * (
            1
            - ((m.alpha + big_t) / (m.alpha + big_t + t)) ** (m.r + x)
            * special.hyp2f1(m.r + x, m.b + x, m.a + m.b + x - 1, z)
        )
        den = 1 + (x > 0) * m.a / (m.b + x - 1) * ((m.alpha + big_t) / (m.alpha + t_x)) ** (m.r + x)
        np.testing.assert_allclose(m.expected_purchases(t, x, t_x, big_t), num / den, rtol=1e-9)


def test_fit_is_independent_of_the_time_unit(cdnow: np.ndarray, cdnow_model: BgNbdModel) -> None:
    days = fit_bgnbd(cdnow[:, 1], cdnow[:, 2] * 7, cdnow[:, 3] * 7)
    assert days.r == pytest.approx(cdnow_model.r, rel=1e-5)
    assert days.alpha == pytest.approx(cdnow_model.alpha * 7, rel=1e-5)
    assert days.b == pytest.approx(cdnow_model.b, rel=1e-5)


def _standard_errors(x, t_x, big_t, params: np.ndarray) -> np.ndarray:
    """Asymptotic SEs from the observed information: the Hessian of the mean negative
    log-likelihood in log-parameters, by central differences of the analytic gradient, then the
    delta method (SE(theta) = theta * SE(ln theta))."""
    data = prepare_bgnbd_data(x, t_x, big_t)
    theta = np.log(params)
    h = 1e-4
    hess = np.empty((4, 4))
    for j in range(4):
        step = np.zeros(4)
        step[j] = h
        hess[:, j] = (_neg_ll_and_grad(theta + step, data)[1] - _neg_ll_and_grad(theta - step, data)[1]) / (
            2 * h
        )
    cov_log = np.linalg.inv((hess + hess.T) / 2 * data.n_customers)
    return params * np.sqrt(np.diag(cov_log))


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_recovers_known_parameters_within_sampling_error(seed: int) -> None:
    truth = np.array([0.6, 8.0, 0.9, 3.0])
    x, t_x, big_t = simulate(seed, 50_000, *truth)
    m = fit_bgnbd(x, t_x, big_t)
    assert m.converged
    fitted = np.array([m.r, m.alpha, m.a, m.b])
    se = _standard_errors(x, t_x, big_t, fitted)
    # The tolerance must be tight enough to mean something: each within 30% of the truth.
    assert np.all(4 * se < 0.3 * truth)
    assert np.all(np.abs(fitted - truth) < 4 * se), (fitted, se)


def test_heavy_buyers_do_not_overflow(cdnow: np.ndarray) -> None:
    x = np.concatenate([cdnow[:, 1], [500.0, 800.0, 500.0]])
    t_x = np.concatenate([cdnow[:, 2], [38.86, 38.86, 1.0]])
    big_t = np.concatenate([cdnow[:, 3], [38.86, 38.86, 38.86]])
    m = fit_bgnbd(x, t_x, big_t)
    assert m.converged and np.isfinite(m.log_likelihood)
    expected = m.expected_purchases(39, [500, 800, 500], [38.86, 38.86, 1.0], [38.86, 38.86, 38.86])
    assert np.all(np.isfinite(expected))
    # Buying ~13 a week until today: hundreds expected; stopped after week 1: essentially dead.
    assert expected[0] > 100 and expected[1] > expected[0]
    assert 0 <= expected[2] < 1e-6


def test_expectations_are_never_nan_on_extreme_inputs(cdnow_model: BgNbdModel) -> None:
    grid = np.array(
        np.meshgrid([0, 1, 5, 50, 500, 5000], [0.0, 1.0, 30.0], [30.0, 200.0], [0, 1, 39, 1e4, 1e7])
    )
    x, t_x, big_t, t = (g.ravel() for g in grid)
    t_x = np.where(x > 0, t_x, 0.0)
    expected = cdnow_model.expected_purchases(t, x, t_x, big_t)
    alive = cdnow_model.p_alive(x, t_x, big_t)
    assert np.all(np.isfinite(expected)) and np.all(expected >= 0)
    assert np.all((alive >= 0) & (alive <= 1))
    assert np.all(np.isfinite(cdnow_model.expected_purchases_new([0, 1, 39, 1e6])))


def test_expected_purchases_grow_with_the_horizon(cdnow_model: BgNbdModel) -> None:
    values = cdnow_model.expected_purchases([1, 10, 39, 100, 1000], 3, 30.0, 38.86)
    assert np.all(np.diff(values) > 0)
    new = cdnow_model.expected_purchases_new([1, 10, 39, 100])
    assert np.all(np.diff(new) > 0)


def test_a_close_to_one_is_handled() -> None:
    near = BgNbdModel(0.5, 5.0, 1.0, 2.0, 0.0, True, 0, 0.0, 0)
    off = BgNbdModel(0.5, 5.0, 1.0 + 1e-5, 2.0, 0.0, True, 0, 0.0, 0)
    got = near.expected_purchases(39, [0, 3], [0, 20], [39, 39])
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, off.expected_purchases(39, [0, 3], [0, 20], [39, 39]), rtol=1e-4)


def test_hypergeometric_series_fallback_agrees_with_scipy() -> None:
    c = np.array([1.5, 3.0, 50.0, 500.0])
    z = np.array([0.1, 0.5, 0.9, 0.99])
    np.testing.assert_allclose(_hyp2f1_series(1.2, -0.3, c, z), special.hyp2f1(1.2, -0.3, c, z), rtol=1e-10)
    assert np.all(np.isfinite(hyp2f1_safe(1.2, -0.3, c, z)))


@pytest.mark.parametrize(
    ("x", "t_x", "big_t"),
    [
        pytest.param(np.zeros(1000), np.zeros(1000), np.full(1000, 30.0), id="one-time-buyers-only"),
        pytest.param(np.full(500, 2.0), np.full(500, 5.0), np.full(500, 10.0), id="identical-histories"),
        pytest.param(np.array([0.0, 1.0, 3.0]), np.array([0.0, 2.0, 9.0]), np.full(3, 10.0), id="three"),
        pytest.param(np.arange(400.0, 600.0), np.full(200, 52.0), np.full(200, 52.0), id="heavy-buyers-only"),
        pytest.param(np.array([]), np.array([]), np.array([]), id="empty"),
        pytest.param(
            np.array([np.nan, -1.0, 2.0]), np.array([0.0, 0.0, 20.0]), np.full(3, 10.0), id="invalid"
        ),
    ],
)
def test_degenerate_populations_never_raise(x: np.ndarray, t_x: np.ndarray, big_t: np.ndarray) -> None:
    m = fit_bgnbd(x, t_x, big_t)
    if m.converged:
        params = np.array([m.r, m.alpha, m.a, m.b, m.log_likelihood])
        assert np.all(np.isfinite(params))
        assert np.all(np.isfinite(m.expected_purchases(10, x, t_x, big_t)))
    else:
        assert m.message


def test_warm_start_reaches_the_same_optimum_as_a_cold_start() -> None:
    x, t_x, big_t = simulate(31, 60_000, 0.6, 8.0, 0.9, 3.0)  # > WARM_START_ROWS unique rows
    warm = fit_bgnbd(x, t_x, big_t)
    cold = fit_bgnbd(x, t_x, big_t, initial=(1.0, float(np.max(big_t)) / 10, 1.0, 1.0))
    assert warm.converged and cold.converged
    np.testing.assert_allclose(
        [warm.r, warm.alpha, warm.a, warm.b], [cold.r, cold.alpha, cold.a, cold.b], rtol=1e-5
    )
    assert warm.log_likelihood == pytest.approx(cold.log_likelihood, abs=1e-6)


def test_unconditional_expectation_agrees_with_eq_9(cdnow_model: BgNbdModel) -> None:
    m = cdnow_model
    t = np.array([1.0, 39.0, 78.0])
    z = t / (m.alpha + t)
    literal = (m.a + m.b - 1) / (m.a - 1)
    literal = literal * (1 - (m.alpha / (m.alpha + t)) ** m.r * special.hyp2f1(m.r, m.b, m.a + m.b - 1, z))
    np.testing.assert_allclose(m.expected_purchases_new(t), literal, rtol=1e-9)
