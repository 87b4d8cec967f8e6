"""The compute stage: purchase facts from the store → simple and probabilistic LTV per customer.

Aggregation is SQL (``ltvsync.core.metrics``); the maths is pure numpy (``ltvsync.core.ltv``);
this module only joins the two and writes ``customer_metrics`` in bulk.  Model trouble (too little
data, a failed or degenerate fit) falls back to the simple LTV with the reason in the report: the
sync never fails because of the models.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import Connection, delete, select

from ltvsync.config.settings import LtvSettings
from ltvsync.core import models as m
from ltvsync.core.ltv import (
    UNITS_PER_MONTH,
    BgNbdModel,
    GammaGammaModel,
    ModelFit,
    PriorParams,
    clv,
    fit_models,
    simple_ltv,
)
from ltvsync.core.metrics import FloatArray, population, purchase_facts
from ltvsync.core.rfm import RfmSummary
from ltvsync.core.store import Store

DAYS_PER_UNIT = {"week": 7.0, "day": 1.0}
SECONDS_PER_DAY = 86_400.0


@dataclass
class ComputeReport:
    customers: int = 0
    purchasers: int = 0
    model: str = "simple"
    fallback_reason: str | None = None
    parameters: dict[str, float] = field(default_factory=dict)
    log_likelihood: dict[str, float] = field(default_factory=dict)
    converged: bool | None = None
    fit_seconds: float = 0.0
    seconds: float = 0.0
    prior_share_mean: float | None = None
    ltv_simple_mean: float | None = None
    ltv_predicted_mean: float | None = None
    model_version: str = "simple"
    refitted: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def monthly_rate(annual: float) -> float:
    """The monthly discount rate equivalent to an annual one."""
    return float((1.0 + annual) ** (1.0 / 12.0) - 1.0)


def _start_day(
    settings: LtvSettings, signup: FloatArray, onboarding: FloatArray, first: FloatArray
) -> FloatArray:
    if settings.start_event == "first_purchase":
        return np.where(np.isfinite(first), first, signup)
    if settings.start_event == "onboarding_completed":
        return np.where(np.isfinite(onboarding), onboarding, signup)
    return np.where(np.isfinite(signup), signup, first)


def _counts(settings: LtvSettings, orders: FloatArray, engaged: np.ndarray[Any, np.dtype[np.bool_]]) -> Any:
    """Who counts as a customer (see LtvSettings.customer_definition)."""
    if settings.customer_definition == "purchaser":
        return orders > 0
    if settings.customer_definition == "engaged_user":
        return (orders > 0) | engaged
    # trial users and subscribers: everyone we know of (a signup is the trial's start).
    return np.ones(orders.shape, dtype=bool)


# Where the fitted model lives between refits (the store's state table, one JSON value).
MODEL_STATE = ("ltv-model", "fit")
# Refit anyway when the number of buyers moved this much since the stored fit.
REFIT_GROWTH = 0.2


def load_model(store: Store, conn: Connection, unit: str) -> ModelFit | None:
    """The stored usable fit for ``unit``, or None (never fitted, fallback, or other unit)."""
    raw = store.get_cursor(conn, *MODEL_STATE)
    if not raw:
        return None
    try:
        data = json.loads(raw)
        if data.get("unit") != unit or data.get("fallback_reason") is not None:
            return None
        bg = BgNbdModel(**data["bgnbd"])
        gg = GammaGammaModel(**data["gamma_gamma"])
        return ModelFit(bg, gg, None, int(data["n_customers"]), int(data["n_repeat_buyers"]))
    except (ValueError, KeyError, TypeError):
        return None  # an unreadable state is a reason to refit, never to fail


def save_model(store: Store, conn: Connection, fit: ModelFit, unit: str, as_of: datetime) -> None:
    data = {
        "unit": unit,
        "fitted_for": as_of.isoformat(),
        "fallback_reason": fit.fallback_reason,
        "n_customers": fit.n_customers,
        "n_repeat_buyers": fit.n_repeat_buyers,
        "bgnbd": asdict(fit.bgnbd) if fit.bgnbd is not None else None,
        "gamma_gamma": asdict(fit.gamma_gamma) if fit.gamma_gamma is not None else None,
    }
    store.set_cursor(conn, *MODEL_STATE, json.dumps(data))


def compute_ltv(
    store: Store, conn: Connection, settings: LtvSettings, as_of: datetime, *, refit: bool = False
) -> ComputeReport:
    """Recompute ``customer_metrics`` for every counted customer as of ``as_of``.

    The BG/NBD and Gamma-Gamma parameters are refitted only when asked (the weekly full refresh),
    when no usable fit is stored, or when the buyer population grew by more than ``REFIT_GROWTH``;
    other cycles re-score customers with the stored parameters.  So a purchase by one customer
    changes that customer's figures, not everyone's, and pushes stay proportional to real change.
    """
    started = time.monotonic()
    report = ComputeReport()
    as_of_day = as_of.astimezone(UTC).timestamp() / SECONDS_PER_DAY
    facts = purchase_facts(conn, store.dialect, as_of)
    pop = population(conn, store.dialect, settings.engaged_event_kind)
    n = len(pop.customer_id)
    # Align purchase facts to the population (both sorted by customer id).
    pos = np.searchsorted(pop.customer_id, facts.customer_id)
    orders = np.zeros(n)
    revenue = np.zeros(n)
    first = np.full(n, np.nan)
    last = np.full(n, np.nan)
    first_value = np.zeros(n)
    valid = (pos < n) & (pop.customer_id[np.minimum(pos, n - 1)] == facts.customer_id) if n else pos < 0
    p = pos[valid]
    orders[p] = facts.transactions[valid]
    revenue[p] = facts.revenue[valid]
    first[p] = facts.first_day[valid]
    last[p] = facts.last_day[valid]
    first_value[p] = facts.first_value[valid]

    counted = _counts(settings, orders, pop.engaged)
    start = _start_day(settings, pop.signup_day, pop.onboarding_day, first)
    start = np.where(np.isfinite(start), np.minimum(start, as_of_day), as_of_day)
    days_since_start = np.maximum(as_of_day - start, 0.0)
    tenure_days = np.where(orders > 0, last - first, 0.0)
    recency_days = np.where(orders > 0, np.floor(as_of_day) - last, np.nan)

    priors = PriorParams(
        settings.priors.aov,
        settings.priors.purchases_per_year,
        settings.priors.lifespan_years,
        settings.priors.weight,
    )
    simple = simple_ltv(orders, revenue, days_since_start, priors, settings.gross_margin)
    margin = settings.gross_margin or 1.0
    predicted = simple.ltv.copy()
    p_alive = np.full(n, np.nan)
    expected = np.full(n, np.nan)

    buyers = counted & (orders > 0)
    report.customers = int(counted.sum())
    report.purchasers = int(buyers.sum())
    if settings.model != "simple" and report.purchasers:
        fit_started = time.monotonic()
        summary = _summary(
            pop.customer_id[buyers],
            orders[buyers],
            revenue[buyers],
            first[buyers],
            last[buyers],
            first_value[buyers],
            as_of_day,
            settings.time_unit,
        )
        fit = None if refit else load_model(store, conn, settings.time_unit)
        if fit is not None and abs(len(summary) - fit.n_customers) > REFIT_GROWTH * max(fit.n_customers, 1):
            fit = None
        report.refitted = fit is None
        if fit is None:
            fit = fit_models(summary, settings.min_customers_for_model, settings.min_repeat_buyers_for_model)
            save_model(store, conn, fit, settings.time_unit, as_of)
        report.fit_seconds = time.monotonic() - fit_started
        _describe_fit(report, fit)
        if fit.usable and fit.bgnbd is not None and fit.gamma_gamma is not None:
            horizon_units = settings.horizon_months * UNITS_PER_MONTH[settings.time_unit]
            value = clv(
                fit.bgnbd,
                fit.gamma_gamma,
                summary.frequency,
                summary.recency,
                summary.T,
                summary.monetary_value,
                settings.horizon_months,
                monthly_rate(settings.annual_discount_rate),
                unit=settings.time_unit,
            )
            predicted[buyers] = value * margin
            p_alive[buyers] = fit.bgnbd.p_alive(summary.frequency, summary.recency, summary.T)
            expected[buyers] = fit.bgnbd.expected_purchases(
                horizon_units, summary.frequency, summary.recency, summary.T
            )
            report.model = "bgnbd+gamma-gamma"
    elif settings.model == "simple":
        report.fallback_reason = "model = simple in configuration"

    report.model_version = _model_version(report)
    rows = _rows(
        pop.customer_id,
        counted,
        as_of,
        orders,
        revenue,
        simple.aov,
        simple.purchases_per_year,
        tenure_days,
        recency_days,
        days_since_start,
        simple.ltv,
        predicted,
        p_alive,
        expected,
        simple.prior_weight,
        report.model_version,
    )
    t = m.TABLES["customer_metrics"]
    existing = {r for (r,) in conn.execute(select(t.c.customer_id))}
    keep = {int(c) for c in pop.customer_id[counted]}
    gone = sorted(existing - keep)
    for i in range(0, len(gone), 900):
        conn.execute(delete(t).where(t.c.customer_id.in_(gone[i : i + 900])))
    store.upsert_many(conn, "customer_metrics", rows, key=("customer_id",))
    if report.customers:
        report.prior_share_mean = float(np.mean(simple.prior_weight[counted]))
        report.ltv_simple_mean = float(np.mean(simple.ltv[counted]))
        report.ltv_predicted_mean = float(np.mean(predicted[counted]))
    report.seconds = time.monotonic() - started
    return report


def _summary(
    ids: Any,
    orders: FloatArray,
    revenue: FloatArray,
    first: FloatArray,
    last: FloatArray,
    first_value: FloatArray,
    as_of_day: float,
    unit: str,
) -> RfmSummary:
    per = DAYS_PER_UNIT[unit]
    repeat = orders - 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        monetary = np.where(repeat > 0, (revenue - first_value) / np.where(repeat > 0, repeat, 1.0), 0.0)
    return RfmSummary(
        customer_ids=np.asarray(ids),
        frequency=repeat,
        recency=(last - first) / per,
        T=np.maximum(np.floor(as_of_day) - first, 0.0) / per,
        monetary_value=np.maximum(monetary, 0.0),
        unit=unit,
    )


def _describe_fit(report: ComputeReport, fit: ModelFit) -> None:
    report.fallback_reason = fit.fallback_reason
    if fit.bgnbd is not None:
        bg = fit.bgnbd
        report.parameters.update({"r": bg.r, "alpha": bg.alpha, "a": bg.a, "b": bg.b})
        report.log_likelihood["bgnbd"] = bg.log_likelihood
        report.converged = bg.converged
    if fit.gamma_gamma is not None:
        gg = fit.gamma_gamma
        report.parameters.update({"p": gg.p, "q": gg.q, "gamma": gg.gamma})
        report.log_likelihood["gamma_gamma"] = gg.log_likelihood
        report.converged = bool(report.converged and gg.converged)


def _model_version(report: ComputeReport) -> str:
    if report.model == "simple":
        return "simple"
    digest = hashlib.sha1(repr(sorted((k, round(v, 6)) for k, v in report.parameters.items())).encode())
    return f"bgnbd-gg:{digest.hexdigest()[:10]}"


def _column(values: FloatArray, idx: Any) -> list[float | None]:
    """The selected entries as Python floats, None where not finite (NaN/inf: no value)."""
    return [v if math.isfinite(v) else None for v in values[idx].tolist()]


_METRIC_COLUMNS = (
    "aov",
    "frequency",
    "tenure_days",
    "recency_days",
    "days_since_start",
    "ltv_simple",
    "ltv_predicted",
    "p_alive",
    "expected_purchases",
    "prior_weight",
)


def _rows(
    ids: Any,
    counted: Any,
    as_of: datetime,
    orders: FloatArray,
    revenue: FloatArray,
    aov: FloatArray,
    freq: FloatArray,
    tenure: FloatArray,
    recency: FloatArray,
    since: FloatArray,
    ltv_simple: FloatArray,
    predicted: FloatArray,
    p_alive: FloatArray,
    expected: FloatArray,
    prior: FloatArray,
    version: str,
) -> list[dict[str, Any]]:
    # Column-wise conversion (one tolist per array) instead of a float() call per cell: 3x faster
    # at 1M customers, same values (NaN and inf become None, revenue rounded to 4 places).
    idx = np.flatnonzero(counted)
    metrics = [
        _column(a, idx)
        for a in (aov, freq, tenure, recency, since, ltv_simple, predicted, p_alive, expected, prior)
    ]
    rows: list[dict[str, Any]] = []
    for cid, n_orders, rev, *values in zip(
        np.asarray(ids)[idx].tolist(),
        orders[idx].astype(np.int64).tolist(),
        [round(v, 4) for v in revenue[idx].tolist()],
        *metrics,
        strict=True,
    ):
        row: dict[str, Any] = {"customer_id": int(cid), "as_of": as_of, "orders": n_orders, "revenue": rev}
        row.update(zip(_METRIC_COLUMNS, values, strict=True))
        row["model_version"] = version
        rows.append(row)
    return rows
