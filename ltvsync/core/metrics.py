"""Per-customer purchase facts aggregated in the store, set-based, on SQLite and Postgres.

One SQL statement collapses same-day purchases into one transaction (the unit the BG/NBD and
Gamma-Gamma models assume), then aggregates per customer: transactions, revenue in the base
currency, first and last transaction day and the first day's value (repeat-purchase spend
excludes it).  Days are whole UTC days since the Unix epoch, so both dialects return plain numbers
and the LTV maths stays in numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Connection, text

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

# Whole UTC days since 1970-01-01 of a stored timestamp, per dialect.
_DAY = {
    "sqlite": "CAST(julianday({col}) - 2440587.5 AS INTEGER)",
    "postgresql": "(CAST(({col} AT TIME ZONE 'UTC') AS date) - DATE '1970-01-01')",
}
# Fractional days since the epoch.
_EPOCH_DAYS = {
    "sqlite": "(julianday({col}) - 2440587.5)",
    "postgresql": "(EXTRACT(EPOCH FROM {col}) / 86400.0)",
}


def day_expr(dialect: str, column: str) -> str:
    return _DAY[dialect].format(col=column)


def epoch_days_expr(dialect: str, column: str) -> str:
    return _EPOCH_DAYS[dialect].format(col=column)


@dataclass(frozen=True)
class PurchaseFacts:
    """Arrays aligned by customer (only customers with at least one purchase)."""

    customer_id: IntArray
    transactions: FloatArray
    revenue: FloatArray
    first_day: FloatArray
    last_day: FloatArray
    first_value: FloatArray

    def __len__(self) -> int:
        return len(self.customer_id)


@dataclass(frozen=True)
class Population:
    """Every live customer with the moments that can start their clock (NaN where unknown)."""

    customer_id: IntArray
    signup_day: FloatArray
    onboarding_day: FloatArray
    engaged: NDArray[np.bool_]


def purchase_facts(conn: Connection, dialect: str, as_of: datetime) -> PurchaseFacts:
    """Same-day purchases collapsed, aggregated per live customer, up to ``as_of``."""
    day = day_expr(dialect, "p.purchased_at")
    sql = f"""
        WITH daily AS (
            SELECT p.customer_id AS customer_id, {day} AS d, CAST(SUM(p.amount_base) AS FLOAT) AS v
            FROM purchase p JOIN customer c ON c.id = p.customer_id
            WHERE NOT p.deleted AND c.merged_into IS NULL AND p.purchased_at < :as_of
            GROUP BY p.customer_id, {day}
        ), agg AS (
            SELECT customer_id, COUNT(*) AS n, SUM(v) AS revenue, MIN(d) AS first_d, MAX(d) AS last_d
            FROM daily GROUP BY customer_id
        )
        SELECT agg.customer_id, agg.n, agg.revenue, agg.first_d, agg.last_d, daily.v
        FROM agg JOIN daily ON daily.customer_id = agg.customer_id AND daily.d = agg.first_d
        ORDER BY agg.customer_id
    """
    rows = conn.execute(text(sql), {"as_of": _bind_time(as_of, dialect)}).all()
    if not rows:
        empty = np.zeros(0)
        return PurchaseFacts(np.zeros(0, dtype=np.int64), empty, empty, empty, empty, empty)
    # Plain tuples: handed SQLAlchemy Row objects, numpy probes each one for array interfaces
    # through Row.__getattr__, which raises per probe (2.8 s vs 0.1 s for 200,000 rows).
    data = np.array([tuple(row) for row in rows], dtype=np.float64)
    return PurchaseFacts(
        customer_id=data[:, 0].astype(np.int64),
        transactions=data[:, 1],
        revenue=data[:, 2],
        first_day=data[:, 3],
        last_day=data[:, 4],
        first_value=data[:, 5],
    )


def population(conn: Connection, dialect: str, engaged_kind: str) -> Population:
    """Live customers with signup (earliest known creation), onboarding and engagement facts."""
    created = epoch_days_expr(dialect, "MIN(i.created_at)")
    occurred = epoch_days_expr(dialect, "MIN(e.occurred_at)")
    since = epoch_days_expr(dialect, "c.customer_since")
    sql = f"""
        WITH ident AS (
            SELECT i.customer_id AS customer_id, {created} AS created_d
            FROM identity i WHERE i.customer_id IS NOT NULL AND NOT i.deleted GROUP BY i.customer_id
        ), signup AS (
            SELECT e.customer_id AS customer_id, {occurred} AS d
            FROM event e WHERE e.customer_id IS NOT NULL AND e.kind = 'signup' GROUP BY e.customer_id
        ), onboarding AS (
            SELECT e.customer_id AS customer_id, {occurred} AS d
            FROM event e WHERE e.customer_id IS NOT NULL AND e.kind = 'onboarding_completed'
            GROUP BY e.customer_id
        ), engaged AS (
            SELECT DISTINCT e.customer_id AS customer_id
            FROM event e WHERE e.customer_id IS NOT NULL AND e.kind = :engaged
        )
        SELECT c.id, COALESCE(signup.d, {since}, ident.created_d), onboarding.d,
               CASE WHEN engaged.customer_id IS NULL THEN 0 ELSE 1 END
        FROM customer c
        LEFT JOIN ident ON ident.customer_id = c.id
        LEFT JOIN signup ON signup.customer_id = c.id
        LEFT JOIN onboarding ON onboarding.customer_id = c.id
        LEFT JOIN engaged ON engaged.customer_id = c.id
        WHERE c.merged_into IS NULL
        ORDER BY c.id
    """
    rows = conn.execute(text(sql), {"engaged": engaged_kind}).all()
    if not rows:
        empty = np.zeros(0)
        return Population(np.zeros(0, dtype=np.int64), empty, empty, np.zeros(0, dtype=bool))
    data = np.array([[np.nan if v is None else float(v) for v in row] for row in rows], dtype=np.float64)
    return Population(
        customer_id=data[:, 0].astype(np.int64),
        signup_day=data[:, 1],
        onboarding_day=data[:, 2],
        engaged=data[:, 3] > 0,
    )


def _bind_time(value: datetime, dialect: str) -> object:
    # SQLite stores naive UTC text (see models.UtcDateTime); compare like with like.
    if dialect == "sqlite":
        return value.replace(tzinfo=None).isoformat(" ", timespec="microseconds")
    return value
