"""Per-customer features for tag rules, read set-based: one SQL pass per feature family
(metrics, events, purchases, tickets) into numpy arrays aligned with ``customer_metrics``.

Windows are relative to ``as_of``: ``x@30`` counts the 30 days before ``as_of``, and
``logins_prev_window@30`` the 30 days before that.  Only the windows the rules read are computed,
as conditional sums in the same GROUP BY, so each fact table is scanned once.  Derived metrics
(``logins_trend``, ``days_since_activity``, ``ltv_percentile``) are computed from these arrays by
``ltvsync.core.tags``, which keeps that part pure.

Relies on SQLite ``julianday`` and PostgreSQL ``EXTRACT(EPOCH ...)`` for epoch days, and on the
Zendesk satisfaction score "bad" (Zendesk Support API, Satisfaction Ratings) for unsatisfied tickets.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Connection

from ltvsync.core.metrics import epoch_days_expr
from ltvsync.core.tag_rules import METRICS, Rule

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

# Columns of customer_metrics that are metrics of the same name.
METRIC_COLUMNS = (
    "orders",
    "revenue",
    "aov",
    "frequency",
    "tenure_days",
    "recency_days",
    "days_since_start",
    "ltv_simple",
    "ltv_predicted",
    "p_alive",
    "expected_purchases",
)
# Read even when no rule names them: days_since_activity, ltv_percentile and churn watching use them.
ALWAYS_READ = ("days_since_start", "ltv_simple", "ltv_predicted")
UNSATISFIED_SCORE = "bad"
# Event kinds that do not count as engagement (a signup is the start, not activity).
NOT_ENGAGEMENT = ("signup",)
SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True)
class Features:
    """Arrays aligned by ``customer_id`` (sorted).  ``values`` is keyed by feature key
    (``orders``, ``logins_window@30``); ``last_activity_day`` is in epoch days, NaN for none."""

    customer_id: IntArray
    values: Mapping[str, FloatArray]
    last_activity_day: FloatArray
    model_version: tuple[str | None, ...]
    stored_tags: tuple[str | None, ...]

    def __len__(self) -> int:
        return len(self.customer_id)


def needed_windows(rules: Iterable[Rule]) -> set[tuple[str, int]]:
    """(metric, window) pairs the rules read; ``logins_trend`` needs both login windows."""
    found: set[tuple[str, int]] = set()
    for rule in rules:
        for cond in rule.conditions():
            key = cond.key
            if "@" not in key:
                continue
            window = int(key.split("@")[1])
            if cond.metric == "logins_trend":
                found |= {("logins_window", window), ("logins_prev_window", window)}
            else:
                found.add((cond.metric, window))
    return found


def bind_time(value: datetime, dialect: str) -> object:
    """A timestamp parameter comparable with stored values (SQLite holds naive UTC text)."""
    value = value.astimezone(UTC)
    if dialect == "sqlite":
        return value.replace(tzinfo=None).isoformat(" ", timespec="microseconds")
    return value


def read_features(conn: Connection, dialect: str, rules: Iterable[Rule], as_of: datetime) -> Features:
    """Every feature the rules need, for every customer in ``customer_metrics``."""
    rules = list(rules)
    windows = needed_windows(rules)
    # Only the columns some rule reads (plus what derived metrics and churn watching need):
    # reading all of them costs seconds per million customers.
    wanted = {c.metric for rule in rules for c in rule.conditions()} | set(ALWAYS_READ)
    base = _metrics(conn, [c for c in METRIC_COLUMNS if c in wanted])
    ids = base.pop("customer_id").astype(np.int64)
    versions = base.pop("model_version")
    stored = base.pop("tags")
    values: dict[str, FloatArray] = {k: v.astype(np.float64) for k, v in base.items()}
    n = len(ids)
    params: dict[str, object] = {"as_of": bind_time(as_of, dialect)}
    for days in sorted({w for _, w in windows} | {2 * w for m, w in windows if m == "logins_prev_window"}):
        params[f"s{days}"] = bind_time(as_of - timedelta(days=days), dialect)

    ev_cols, ev_keys = _event_columns(windows, dialect)
    ev = _grouped(conn, _EVENTS.format(cols=ev_cols), params, ids, len(ev_keys))
    pu_cols, pu_keys = _purchase_columns(windows, dialect)
    pu = _grouped(conn, _PURCHASES.format(cols=pu_cols), params, ids, len(pu_keys))
    ti_cols, ti_keys = _ticket_columns(windows)
    ti = _grouped(conn, _TICKETS.format(cols=ti_cols), params, ids, len(ti_keys)) if ti_keys else None
    for i, key in enumerate(ev_keys):
        values[key] = ev[:, i]
    for i, key in enumerate(pu_keys):
        values[key] = pu[:, i]
    for i, key in enumerate(ti_keys):
        assert ti is not None
        values[key] = ti[:, i]
    last_event = values.pop("_last_event")
    last_purchase = values.pop("_last_purchase")
    # Engagement in a window: behavioural events plus purchases.
    for metric, w in windows:
        if metric == "engaged_events":
            values[f"engaged_events@{w}"] = values.pop(f"_events@{w}") + values.pop(f"_purchases@{w}")
    last = np.fmax(last_event, last_purchase)
    last[(last_event == 0) & (last_purchase == 0)] = np.nan  # never set: no activity at all
    return Features(ids, values, last if n else np.zeros(0), tuple(versions), tuple(stored))


_EVENTS = """
    SELECT e.customer_id, {cols}
    FROM event e
    WHERE e.customer_id IS NOT NULL AND e.occurred_at < :as_of
    GROUP BY e.customer_id ORDER BY e.customer_id
"""
_PURCHASES = """
    SELECT p.customer_id, {cols}
    FROM purchase p
    WHERE p.customer_id IS NOT NULL AND NOT p.deleted AND p.purchased_at < :as_of
    GROUP BY p.customer_id ORDER BY p.customer_id
"""
_TICKETS = """
    SELECT t.customer_id, {cols}
    FROM ticket t
    WHERE t.customer_id IS NOT NULL AND NOT t.deleted AND t.created_at < :as_of
    GROUP BY t.customer_id ORDER BY t.customer_id
"""


def _count(condition: str) -> str:
    return f"SUM(CASE WHEN {condition} THEN 1 ELSE 0 END)"


def _event_columns(windows: set[tuple[str, int]], dialect: str) -> tuple[str, list[str]]:
    engaged = "e.kind NOT IN ('signup')"
    # Convert only each customer's latest timestamp, not every event's (NULL: no activity -> 0).
    last = epoch_days_expr(dialect, f"MAX(CASE WHEN {engaged} THEN e.occurred_at END)")
    cols = [last, _count("e.kind = 'referral'")]
    keys = ["_last_event", "referrals_sent"]
    kinds = {"logins_window": "login", "email_opens": "email_open", "referrals_sent": "referral"}
    for metric, w in sorted(windows):
        if metric in kinds:
            cols.append(_count(f"e.kind = '{kinds[metric]}' AND e.occurred_at >= :s{w}"))
            keys.append(f"{metric}@{w}")
        elif metric == "logins_prev_window":
            cols.append(_count(f"e.kind = 'login' AND e.occurred_at >= :s{2 * w} AND e.occurred_at < :s{w}"))
            keys.append(f"{metric}@{w}")
        elif metric == "engaged_events":
            cols.append(_count(f"{engaged} AND e.occurred_at >= :s{w}"))
            keys.append(f"_events@{w}")
    return ", ".join(cols), keys


def _purchase_columns(windows: set[tuple[str, int]], dialect: str) -> tuple[str, list[str]]:
    cols, keys = [epoch_days_expr(dialect, "MAX(p.purchased_at)")], ["_last_purchase"]
    for metric, w in sorted(windows):
        if metric == "orders":
            cols.append(_count(f"p.purchased_at >= :s{w}"))
            keys.append(f"orders@{w}")
        elif metric == "revenue":
            cols.append(
                f"CAST(SUM(CASE WHEN p.purchased_at >= :s{w} THEN p.amount_base ELSE 0 END) AS FLOAT)"
            )
            keys.append(f"revenue@{w}")
        elif metric == "engaged_events":
            cols.append(_count(f"p.purchased_at >= :s{w}"))
            keys.append(f"_purchases@{w}")
    return ", ".join(cols), keys


def _ticket_columns(windows: set[tuple[str, int]]) -> tuple[str, list[str]]:
    cols: list[str] = []
    keys: list[str] = []
    for metric, w in sorted(windows):
        if metric == "tickets":
            cols.append(_count(f"t.created_at >= :s{w}"))
            keys.append(f"tickets@{w}")
        elif metric == "unsatisfied_tickets":
            cols.append(_count(f"t.created_at >= :s{w} AND t.satisfaction = '{UNSATISFIED_SCORE}'"))
            keys.append(f"unsatisfied_tickets@{w}")
    return ", ".join(cols), keys


def as_matrix(rows: Sequence[Any], width: int) -> FloatArray:
    """Result rows as a float matrix (None -> NaN).

    Rows are turned into plain tuples first: numpy probes each SQLAlchemy ``Row`` for the array
    protocols, which is about 15 times slower on a million rows.
    """
    return np.array([tuple(r) for r in rows], dtype=np.float64).reshape(len(rows), width)


_NAMED = re.compile(r"(?<![:\w]):(\w+)")


def fetch_rows(conn: Connection, sql: str, params: Mapping[str, object]) -> list[tuple[Any, ...]]:
    """Run a SELECT through the DB-API cursor of ``conn`` (same transaction): plain tuples.

    Skipping SQLAlchemy's result rows halves the time to read a million aggregates; ``:name``
    parameters are rewritten to the driver's style (sqlite3 takes them as they are).
    """
    if conn.dialect.paramstyle in ("pyformat", "format"):
        sql = _NAMED.sub(r"%(\1)s", sql.replace("%", "%%"))
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(sql, dict(params))
        return list(cursor.fetchall())
    finally:
        cursor.close()


def fetch_matrix(conn: Connection, sql: str, params: Mapping[str, object], width: int) -> FloatArray:
    """A numeric SELECT as a float matrix (None -> NaN)."""
    rows = fetch_rows(conn, sql, params)
    return np.array(rows, dtype=np.float64).reshape(len(rows), width)


def dense_unique(values: IntArray) -> tuple[IntArray, IntArray]:
    """``np.unique(values, return_inverse=True)`` for integers spanning a small range (periods,
    tag bit patterns): a bincount instead of a hash or sort of millions of values."""
    if not len(values):
        return values, np.zeros(0, dtype=np.int64)
    low = int(values.min())
    offset = values - low
    present = np.bincount(offset) > 0
    lookup = np.cumsum(present) - 1
    return (np.flatnonzero(present) + low).astype(np.int64), lookup[offset].astype(np.int64)


def _grouped(
    conn: Connection, sql: str, params: Mapping[str, object], ids: IntArray, width: int
) -> FloatArray:
    """Run a per-customer aggregate and align it to ``ids``; customers without rows get zeros."""
    out = np.zeros((len(ids), width))
    data = fetch_matrix(conn, sql, params, width + 1)
    if not len(data) or not len(ids):
        return out
    got = data[:, 0].astype(np.int64)
    pos = np.searchsorted(ids, got)
    pos_c = np.minimum(pos, len(ids) - 1)
    ok = ids[pos_c] == got
    out[pos_c[ok]] = np.nan_to_num(data[ok, 1:], nan=0.0)
    return out


def _metrics(conn: Connection, columns: Sequence[str]) -> dict[str, Any]:
    cols = "".join(f"{c}, " for c in columns)
    sql = f"SELECT customer_id, {cols}model_version, tags FROM customer_metrics ORDER BY customer_id"
    rows = fetch_rows(conn, sql, {})
    width = len(columns) + 1
    numeric = np.array([r[:width] for r in rows], dtype=np.float64).reshape(len(rows), width)
    out: dict[str, Any] = {"customer_id": numeric[:, 0]}
    for i, name in enumerate(columns, start=1):
        out[name] = numeric[:, i]
    out["model_version"] = [r[width] for r in rows]
    out["tags"] = [r[width + 1] for r in rows]
    return out


assert set(METRIC_COLUMNS) <= set(METRICS)
