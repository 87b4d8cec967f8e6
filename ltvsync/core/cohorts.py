"""Cohorts: customers grouped by the month (or week) their clock started, with size, retention by
period since start, cumulative revenue per customer and average simple and predicted LTV; weekly
snapshots of those figures; annotations and a before/after comparison around one.

Set-based: one SQL statement collects the distinct (customer, UTC day) pairs with any activity (a
purchase or an event other than signup) and one the revenue per (customer, day); numpy buckets
them into months and weeks and does the rest.  Periods are calendar periods in UTC (weeks start
on Monday); period k of a cohort is the k-th calendar period after the one it started in, and
only periods that have begun by ``as_of`` are reported.  Purchases dated before a customer's start
count in period 0.

Relies on SQLite ``julianday`` and PostgreSQL date arithmetic for day numbers (``metrics.day_expr``)
and numpy ``datetime64`` for calendar months.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Connection, delete, insert, select

from ltvsync.config.settings import Settings
from ltvsync.core.errors import LtvsyncError
from ltvsync.core.metrics import day_expr
from ltvsync.core.models_tags import TAG_TABLES
from ltvsync.core.store import Store
from ltvsync.core.tag_features import bind_time, dense_unique, fetch_matrix

if TYPE_CHECKING:  # the pipeline imports the hooks through ltvsync.assemble, not the reverse
    from ltvsync.core.pipeline import SyncReport

Period = Literal["month", "week"]
PERIODS: tuple[Period, ...] = ("month", "week")
SECONDS_PER_DAY = 86_400.0
EPOCH = date(1970, 1, 1)
# 1970-01-01 was a Thursday: shifting by 3 days makes week numbers change on Mondays.
WEEK_SHIFT_DAYS = 3
Z_95 = 1.959964
DEFAULT_AROUND_PERIODS = 3
SUMMARY_COHORTS = 3

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]


class AnnotationError(LtvsyncError):
    """An annotation is unknown or already exists."""


def period_of_days(days: FloatArray, period: Period) -> IntArray:
    """Period numbers (months or Monday-weeks since 1970-01) of epoch days."""
    whole = np.floor(days).astype(np.int64)
    if period == "week":
        return np.floor_divide(whole + WEEK_SHIFT_DAYS, 7)
    return whole.astype("datetime64[D]").astype("datetime64[M]").astype(np.int64)


def period_start(index: int, period: Period) -> date:
    """The first day of period number ``index``."""
    if period == "week":
        return EPOCH + timedelta(days=index * 7 - WEEK_SHIFT_DAYS)
    return date(1970 + index // 12, index % 12 + 1, 1)


def period_label(index: int, period: Period) -> str:
    start = period_start(index, period)
    return start.strftime("%Y-%m") if period == "month" else start.isoformat()


@dataclass(frozen=True)
class CohortData:
    """Per-customer arrays plus activity and revenue pairs, all by customer position."""

    period: Period
    as_of: datetime
    customer_id: IntArray
    start_day: FloatArray
    cohort: IntArray
    current: int
    ltv_simple: FloatArray
    ltv_predicted: FloatArray
    active_pos: IntArray
    active_k: IntArray
    revenue_pos: IntArray
    revenue_k: IntArray
    revenue: FloatArray


@dataclass(frozen=True)
class CohortRow:
    period_start: date
    label: str
    customers: int
    retention: tuple[float, ...]
    revenue_per_customer: tuple[float, ...]
    ltv_simple_avg: float | None
    ltv_predicted_avg: float | None


@dataclass(frozen=True)
class CohortFacts:
    """Period-free facts: customers with their start, distinct active days and spend per day."""

    as_of: datetime
    customer_id: IntArray
    start_day: FloatArray
    ltv_simple: FloatArray
    ltv_predicted: FloatArray
    active_pos: IntArray
    active_day: IntArray
    spend_pos: IntArray
    spend_day: IntArray
    spend: FloatArray


def read_cohort_facts(conn: Connection, dialect: str, as_of: datetime) -> CohortFacts:
    """One pass over events and purchases, in whole UTC days, for any period kind."""
    as_of_day = as_of.astimezone(UTC).timestamp() / SECONDS_PER_DAY
    data = fetch_matrix(
        conn,
        "SELECT customer_id, days_since_start, ltv_simple, ltv_predicted FROM customer_metrics "
        "ORDER BY customer_id",
        {},
        4,
    )
    ids = data[:, 0].astype(np.int64)
    start = as_of_day - np.nan_to_num(data[:, 1], nan=0.0)
    ev_day, pu_day = day_expr(dialect, "e.occurred_at"), day_expr(dialect, "p.purchased_at")
    params = {"as_of": bind_time(as_of, dialect)}
    active = fetch_matrix(
        conn,
        f"SELECT e.customer_id, {ev_day} FROM event e "
        "WHERE e.customer_id IS NOT NULL AND e.kind <> 'signup' AND e.occurred_at < :as_of "
        f"UNION SELECT p.customer_id, {pu_day} FROM purchase p "
        "WHERE p.customer_id IS NOT NULL AND NOT p.deleted AND p.purchased_at < :as_of",
        params,
        2,
    )
    spend = fetch_matrix(
        conn,
        f"SELECT p.customer_id, {pu_day}, CAST(SUM(p.amount_base) AS FLOAT) FROM purchase p "
        "WHERE p.customer_id IS NOT NULL AND NOT p.deleted AND p.purchased_at < :as_of "
        f"GROUP BY p.customer_id, {pu_day}",
        params,
        3,
    )
    a_pos, a_day, _ = _align(ids, active, 2)
    s_pos, s_day, s_val = _align(ids, spend, 3)
    return CohortFacts(as_of, ids, start, data[:, 2], data[:, 3], a_pos, a_day, s_pos, s_day, s_val)


def _align(ids: IntArray, arr: FloatArray, width: int) -> tuple[IntArray, IntArray, FloatArray]:
    """(customer position, day, value) for rows of customers in ``ids``."""
    if not len(arr) or not len(ids):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0)
    got = arr[:, 0].astype(np.int64)
    pos = np.minimum(np.searchsorted(ids, got), len(ids) - 1)
    ok = ids[pos] == got
    value = np.nan_to_num(arr[ok, 2]) if width > 2 else np.zeros(int(ok.sum()))
    return pos[ok], arr[ok, 1].astype(np.int64), value


def cohort_data(facts: CohortFacts, period: Period) -> CohortData:
    """Facts bucketed into ``period``: each customer's cohort and (customer, k) pairs."""
    as_of_day = facts.as_of.astimezone(UTC).timestamp() / SECONDS_PER_DAY
    cohort = period_of_days(facts.start_day, period)
    current = int(period_of_days(np.array([as_of_day]), period)[0])
    k = period_of_days(facts.active_day.astype(np.float64), period) - cohort[facts.active_pos]
    keep = k >= 0
    # Several active days fall in one period: count each customer once per period.
    n_periods = int(k.max()) + 1 if len(k) else 1
    pairs = np.sort(facts.active_pos[keep] * n_periods + k[keep])
    pairs = pairs[np.r_[True, pairs[1:] != pairs[:-1]]] if len(pairs) else pairs
    spend_k = period_of_days(facts.spend_day.astype(np.float64), period) - cohort[facts.spend_pos]
    return CohortData(
        period,
        facts.as_of,
        facts.customer_id,
        facts.start_day,
        cohort,
        current,
        facts.ltv_simple,
        facts.ltv_predicted,
        pairs // n_periods,
        pairs % n_periods,
        facts.spend_pos,
        np.maximum(spend_k, 0),  # spend before the start belongs to the first period
        facts.spend,
    )


def read_cohort_data(conn: Connection, dialect: str, period: Period, as_of: datetime) -> CohortData:
    """Everything a cohort table needs, for every customer in ``customer_metrics``."""
    return cohort_data(read_cohort_facts(conn, dialect, as_of), period)


def cohort_table(data: CohortData) -> list[CohortRow]:
    """One row per cohort, oldest first."""
    if not len(data.customer_id):
        return []
    cohorts, ci = dense_unique(data.cohort)
    n = len(cohorts)
    width = int(data.current - cohorts.min()) + 1
    size = np.bincount(ci, minlength=n).astype(np.float64)
    # bincount over flattened (cohort, k) cells: far faster than np.add.at on millions of pairs.
    a_in = data.active_k < width
    cells = ci[data.active_pos[a_in]] * width + data.active_k[a_in]
    active = np.bincount(cells, minlength=n * width).reshape(n, width).astype(np.float64)
    r_in = data.revenue_k < width
    cells = ci[data.revenue_pos[r_in]] * width + data.revenue_k[r_in]
    spend = np.bincount(cells, weights=data.revenue[r_in], minlength=n * width).reshape(n, width)
    cumulative = np.cumsum(spend, axis=1)
    simple = _group_mean(ci, data.ltv_simple, n)
    predicted = _group_mean(ci, data.ltv_predicted, n)
    rows = []
    for j, c in enumerate(cohorts.tolist()):
        periods = data.current - c + 1
        rows.append(
            CohortRow(
                period_start(c, data.period),
                period_label(c, data.period),
                int(size[j]),
                tuple(round(float(v), 6) for v in active[j, :periods] / size[j]),
                tuple(round(float(v), 4) for v in cumulative[j, :periods] / size[j]),
                _maybe(simple[j]),
                _maybe(predicted[j]),
            )
        )
    return rows


def _group_mean(groups: IntArray, values: FloatArray, n: int) -> FloatArray:
    ok = np.isfinite(values)
    total = np.bincount(groups[ok], weights=values[ok], minlength=n)
    count = np.bincount(groups[ok], minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _maybe(value: float) -> float | None:
    return round(float(value), 4) if math.isfinite(value) else None


# --- comparison around an annotation -----------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    metric: str
    before_n: int
    after_n: int
    before: float | None
    after: float | None
    difference: float | None
    std_error: float | None

    @property
    def interval(self) -> tuple[float, float] | None:
        if self.difference is None or self.std_error is None:
            return None
        return (self.difference - Z_95 * self.std_error, self.difference + Z_95 * self.std_error)


def compare_around(data: CohortData, at: datetime, periods: int = DEFAULT_AROUND_PERIODS) -> list[Difference]:
    """Customers who started within ``periods`` periods before ``at`` vs on/after it.

    Retention and revenue are measured at the same age for both sides: active in period 1, and
    revenue through period 1, among customers whose period 1 has ended.  The standard error is
    Welch's (unequal variances); the 95% interval is the normal one.
    """
    at_day = at.astimezone(UTC).timestamp() / SECONDS_PER_DAY
    at_period = int(period_of_days(np.array([at_day]), data.period)[0])
    before = (data.start_day < at_day) & (data.cohort >= at_period - periods)
    after = (data.start_day >= at_day) & (data.cohort <= at_period + periods)
    n = len(data.customer_id)
    active1 = np.zeros(n, dtype=bool)
    active1[data.active_pos[data.active_k == 1]] = True
    early = data.revenue_k <= 1
    through1 = np.bincount(data.revenue_pos[early], data.revenue[early], minlength=n).astype(np.float64)
    matured = data.cohort + 1 < data.current
    return [
        _difference("retention in period 1", active1.astype(float), before & matured, after & matured),
        _difference("revenue per customer through period 1", through1, before & matured, after & matured),
        _difference("predicted LTV", data.ltv_predicted, before, after),
        _difference("simple LTV", data.ltv_simple, before, after),
    ]


def _difference(
    name: str, values: FloatArray, before: NDArray[np.bool_], after: NDArray[np.bool_]
) -> Difference:
    b = values[before & np.isfinite(values)]
    a = values[after & np.isfinite(values)]
    mean_b = float(b.mean()) if len(b) else None
    mean_a = float(a.mean()) if len(a) else None
    diff = se = None
    if mean_a is not None and mean_b is not None:
        diff = mean_a - mean_b
        if len(a) > 1 and len(b) > 1:
            se = math.sqrt(float(a.var(ddof=1)) / len(a) + float(b.var(ddof=1)) / len(b))
    return Difference(name, len(b), len(a), mean_b, mean_a, diff, se)


# --- annotations -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnnotationRow:
    name: str
    at: datetime
    note: str | None


def add_annotation(conn: Connection, name: str, at: datetime, note: str | None, now: datetime) -> None:
    t = TAG_TABLES["annotation"]
    if conn.execute(select(t.c.id).where(t.c.name == name)).first() is not None:
        raise AnnotationError(f"annotation {name!r} already exists")
    conn.execute(insert(t).values(name=name, at=at, note=note, created_at=now))


def get_annotation(conn: Connection, name: str) -> AnnotationRow:
    t = TAG_TABLES["annotation"]
    row = conn.execute(select(t.c.name, t.c.at, t.c.note).where(t.c.name == name)).first()
    if row is None:
        known = [r for (r,) in conn.execute(select(t.c.name).order_by(t.c.at))]
        hint = f" (known: {', '.join(known)})" if known else " (none recorded; use `ltvsync annotate`)"
        raise AnnotationError(f"no annotation named {name!r}{hint}")
    return AnnotationRow(row.name, row.at, row.note)


# --- the compute hook --------------------------------------------------------------------------


def snapshot_date(as_of: datetime) -> date:
    """The Monday of ``as_of``'s week: one snapshot per week, the last run of the week wins."""
    day = as_of.astimezone(UTC).date()
    return day - timedelta(days=day.weekday())


def cohorts_hook(
    store: Store, conn: Connection, settings: Settings, as_of: datetime, report: SyncReport
) -> None:
    """Compute month and week cohorts, keep this week's snapshot, and fill ``report.cohorts``."""
    week = snapshot_date(as_of)
    summary: dict[str, Any] = {"snapshot_date": week.isoformat()}
    facts = read_cohort_facts(conn, store.dialect, as_of)
    for period in PERIODS:
        rows = cohort_table(cohort_data(facts, period))
        snap = TAG_TABLES["cohort_snapshot"]
        # Replace the week's rows: a cohort that emptied since the last run must not linger.
        conn.execute(delete(snap).where(snap.c.snapshot_date == week, snap.c.period == period))
        store.upsert_many(conn, snap, _snapshot_rows(rows, period, week, as_of), _KEY)
        if period == "month":
            summary |= _summary(conn, rows, week)
    report.cohorts = summary


_KEY = ("snapshot_date", "period", "period_start")


def _snapshot_rows(
    rows: list[CohortRow], period: Period, week: date, as_of: datetime
) -> list[dict[str, Any]]:
    return [
        {
            "snapshot_date": week,
            "period": period,
            "period_start": r.period_start,
            "customers": r.customers,
            "ltv_simple_avg": r.ltv_simple_avg,
            "ltv_predicted_avg": r.ltv_predicted_avg,
            "retention": list(r.retention),
            "revenue_per_customer": list(r.revenue_per_customer),
            "as_of": as_of,
        }
        for r in rows
    ]


def _summary(conn: Connection, rows: list[CohortRow], week: date) -> dict[str, Any]:
    customers = sum(r.customers for r in rows)
    return {
        "period": "month",
        "cohorts": len(rows),
        "customers": customers,
        "ltv_predicted_avg": _weighted(rows),
        "ltv_predicted_avg_last_week": _weighted(_snapshot(conn, week - timedelta(days=7))),
        "latest": [
            {"cohort": r.label, "customers": r.customers, "ltv_predicted_avg": r.ltv_predicted_avg}
            for r in rows[-SUMMARY_COHORTS:]
        ],
    }


def _weighted(rows: Sequence[CohortRow]) -> float | None:
    known = [(r.customers, r.ltv_predicted_avg) for r in rows if r.ltv_predicted_avg is not None]
    total = sum(n for n, _ in known)
    return round(sum(n * v for n, v in known) / total, 4) if total else None


def stored_snapshot(conn: Connection, week: date, period: Period = "month") -> list[CohortRow]:
    """The cohort rows kept for the week starting ``week`` (empty if none)."""
    return _snapshot(conn, week, period)


def _snapshot(conn: Connection, week: date, period: Period = "month") -> list[CohortRow]:
    t = TAG_TABLES["cohort_snapshot"]
    query = select(t).where(t.c.snapshot_date == week, t.c.period == period).order_by(t.c.period_start)
    return [
        CohortRow(
            r.period_start,
            r.period_start.strftime("%Y-%m") if period == "month" else r.period_start.isoformat(),
            int(r.customers),
            tuple(r.retention or ()),
            tuple(r.revenue_per_customer or ()),
            r.ltv_simple_avg,
            r.ltv_predicted_avg,
        )
        for r in conn.execute(query)
    ]
