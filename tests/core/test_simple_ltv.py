"""Simple LTV with credibility-weighted priors: no history gives the prior, data moves it to observed."""

from __future__ import annotations

import numpy as np
import pytest

from ltvsync.core.ltv import PriorParams, credibility, simple_ltv

PRIORS = PriorParams(aov=50.0, purchases_per_year=2.0, lifespan_years=3.0, weight=3.0)


def test_credibility_formula() -> None:
    got = credibility([100.0, 100.0, 100.0], [0, 3, 9], prior=40.0, k=3.0)
    np.testing.assert_allclose(got, [40.0, (3 * 100 + 3 * 40) / 6, (9 * 100 + 3 * 40) / 12])


def test_credibility_with_zero_weight_is_the_observation() -> None:
    np.testing.assert_allclose(credibility([7.0, 9.0], [1, 5], prior=40.0, k=0.0), [7.0, 9.0])


def test_no_history_gives_exactly_the_prior() -> None:
    odd = PriorParams(aov=0.1, purchases_per_year=0.7, lifespan_years=1.3, weight=3.0)
    got = simple_ltv([0, 0], [0.0, 0.0], [0.0, 0.0], odd)
    assert got.aov.tolist() == [0.1, 0.1]
    assert got.purchases_per_year.tolist() == [0.7, 0.7]
    assert got.lifespan_years.tolist() == [1.3, 1.3]
    assert got.ltv.tolist() == [0.1 * 0.7 * 1.3] * 2
    assert got.prior_weight.tolist() == [1.0, 1.0]


def test_estimate_moves_from_prior_to_observed_as_data_grows() -> None:
    # A customer who keeps buying 6 times a year at 80 per order, observed for longer and longer.
    years = np.array([0.25, 0.5, 1, 2, 4, 8, 16, 64, 1000])
    orders = 6 * years
    got = simple_ltv(orders, 80.0 * orders, years * 365.25, PRIORS)
    aov_gap = np.abs(got.aov - 80.0)
    rate_gap = np.abs(got.purchases_per_year - 6.0)
    assert np.all(np.diff(aov_gap) < 0) and np.all(np.diff(rate_gap) < 0)
    assert np.all(np.diff(got.prior_weight) < 0)
    assert got.aov[-1] == pytest.approx(80.0, rel=1e-3)
    assert got.purchases_per_year[-1] == pytest.approx(6.0, rel=1e-2)
    assert got.prior_weight[-1] < 0.01 and got.prior_weight[0] > 0.5
    # Every factor stays between the prior and the observation.
    assert np.all((got.aov >= 50.0) & (got.aov <= 80.0))
    assert np.all((got.purchases_per_year >= 2.0) & (got.purchases_per_year <= 6.0))


def test_ltv_is_the_product_of_its_factors_times_margin() -> None:
    got = simple_ltv([3, 10], [150.0, 2000.0], [200.0, 900.0], PRIORS, gross_margin=[0.4, 0.6])
    np.testing.assert_allclose(got.ltv, got.aov * got.purchases_per_year * got.lifespan_years * [0.4, 0.6])
    without = simple_ltv([3, 10], [150.0, 2000.0], [200.0, 900.0], PRIORS)
    np.testing.assert_allclose(got.ltv, without.ltv * [0.4, 0.6])


def test_one_order_on_day_one_does_not_explode_the_rate() -> None:
    got = simple_ltv([1], [30.0], [0.0], PRIORS)
    assert got.purchases_per_year[0] == 2.0  # no time observed: the rate is the prior's
    assert got.aov[0] == pytest.approx((30.0 + 3 * 50.0) / 4)


def test_bad_inputs_fall_back_to_the_prior_without_nan() -> None:
    got = simple_ltv([np.nan, -2, 4, 3], [100.0, 50.0, np.inf, -10.0], [30.0, np.nan, -5.0, 100.0], PRIORS)
    for arr in (got.aov, got.purchases_per_year, got.lifespan_years, got.ltv, got.prior_weight):
        assert np.all(np.isfinite(arr))
    assert got.aov[:4].tolist() == [50.0] * 4  # no valid order value anywhere
    assert np.all((got.prior_weight >= 0) & (got.prior_weight <= 1))


def test_scalars_broadcast() -> None:
    got = simple_ltv(4, 200.0, 365.25, PRIORS)
    assert got.ltv.shape == (1,)
    assert got.aov[0] == pytest.approx((4 * 50.0 + 3 * 50.0) / 7)
