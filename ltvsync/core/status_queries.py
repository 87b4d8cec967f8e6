"""Read-only queries behind the status page, the HTTP API and ``/metrics``.

Plain SELECTs over the store's tables (``ltvsync.core.models``) through SQLAlchemy Core, so the
same code runs on SQLite and Postgres; month bucketing is the one dialect-specific expression.
The tag and cohort stage's snapshot tables (``tag_count_snapshot``, ``cohort_snapshot``, migration
0002) are preferred when they hold rows; they are reflected at query time, so their absence (an
older schema, a stage that has not run yet) is not an error: the answers are then computed from
``customer``, ``purchase`` and ``customer_metrics``.

The values it returns live in ``ltvsync.core.status_values``.  Relies on the SQLAlchemy 2.x Core
tutorial (select, func, group_by) and the SQLite ``strftime`` / PostgreSQL ``to_char`` functions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import ColumnElement, MetaData, Table, and_, func, inspect, select
from sqlalchemy.engine import Engine, RowMapping

from ltvsync.core.compute import MODEL_STATE
from ltvsync.core.models import TABLES
from ltvsync.core.status_values import (
    DEFAULT_HISTOGRAM_BINS,
    CohortMatrix,
    CohortRow,
    CustomerView,
    LtvHistogram,
    RunView,
    StreamLag,
    TagPoint,
    TagSeries,
    cursor_time,
    histogram,
    parse_tags,
)

MAX_COHORTS = 24
TAG_COUNT_TABLE = "tag_count_snapshot"
COHORT_TABLE = "cohort_snapshot"
_MONTH_KEY = re.compile(r"\d{4}-\d{2}")


class SqlStatusQueries:
    """``StatusQueries`` over a store's engine.  Read-only; never creates or alters tables."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime] | None = None) -> None:
        self._engine = engine
        self._clock = clock or (lambda: datetime.now(UTC))

    # -- runs -----------------------------------------------------------------------------------
    def runs(self, limit: int = 20) -> list[RunView]:
        run = TABLES["sync_run"]
        if not self._has(run.name):
            return []
        query = select(run).order_by(run.c.id.desc()).limit(max(1, limit))
        with self._engine.connect() as conn:
            return [_run_view(row._mapping) for row in conn.execute(query)]

    def run(self, run_id: int) -> RunView | None:
        run = TABLES["sync_run"]
        if not self._has(run.name):
            return None
        with self._engine.connect() as conn:
            row = conn.execute(select(run).where(run.c.id == run_id)).first()
        return _run_view(row._mapping) if row is not None else None

    def run_counts(self) -> dict[str, int]:
        run = TABLES["sync_run"]
        if not self._has(run.name):
            return {}
        query = select(run.c.status, func.count()).group_by(run.c.status)
        with self._engine.connect() as conn:
            return {str(status): int(count) for status, count in conn.execute(query)}

    # -- cursors --------------------------------------------------------------------------------
    def stream_lag(self) -> list[StreamLag]:
        state = TABLES["sync_state"]
        if not self._has(state.name):
            return []
        now = self._clock()
        query = (
            select(state.c.connector, state.c.stream, state.c.cursor, state.c.updated_at)
            # The compute stage keeps its fitted model in the same table; it is not a stream.
            .where(state.c.connector != MODEL_STATE[0])
            .order_by(state.c.connector, state.c.stream)
        )
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        result = []
        for connector, stream, cursor, updated_at in rows:
            at, basis = cursor_time(cursor), "cursor"
            if at is None:
                at, basis = updated_at, "updated_at"
            lag = max(0.0, (now - at).total_seconds()) if at is not None else None
            age = max(0.0, (now - updated_at).total_seconds()) if updated_at is not None else None
            result.append(StreamLag(connector, stream, cursor, updated_at, lag, basis, age))
        return result

    # -- customers ------------------------------------------------------------------------------
    def customer(self, email: str) -> CustomerView | None:
        customer, metrics = TABLES["customer"], TABLES["customer_metrics"]
        if not self._has(customer.name):
            return None
        query = (
            select(customer)
            .where(func.lower(customer.c.email) == email.strip().lower())
            .where(customer.c.merged_into.is_(None))
        )
        with self._engine.connect() as conn:
            row = conn.execute(query).first()
            if row is None:
                return None
            found = row._mapping
            metric_row = None
            if self._has(metrics.name):
                metric_row = conn.execute(select(metrics).where(metrics.c.customer_id == found["id"])).first()
        values = dict(metric_row._mapping) if metric_row is not None else None
        tags = parse_tags(values.pop("tags", None)) if values is not None else ()
        return CustomerView(
            id=int(found["id"]),
            email=found["email"],
            name=found["name"],
            customer_since=found["customer_since"],
            first_purchase_at=found["first_purchase_at"],
            metrics=values,
            tags=tags,
        )

    # -- charts ---------------------------------------------------------------------------------
    def ltv_distribution(self, bins: int = DEFAULT_HISTOGRAM_BINS) -> LtvHistogram:
        metrics = TABLES["customer_metrics"]
        if not self._has(metrics.name):
            return LtvHistogram(0, (), 0, None)
        ltv = func.coalesce(metrics.c.ltv_predicted, metrics.c.ltv_simple)
        with self._engine.connect() as conn:
            values = [float(v) for (v,) in conn.execute(select(ltv).where(ltv.is_not(None)))]
        return histogram(values, bins)

    def tag_counts(self) -> list[TagSeries]:
        if self._has(TAG_COUNT_TABLE):
            series = self._tag_snapshots()
            if series:
                return series
        metrics = TABLES["customer_metrics"]
        if not self._has(metrics.name):
            return []
        counts: dict[tuple[str, date], int] = {}
        with self._engine.connect() as conn:
            for tags, as_of in conn.execute(select(metrics.c.tags, metrics.c.as_of)):
                for tag in parse_tags(tags):
                    key = (tag, as_of.date())
                    counts[key] = counts.get(key, 0) + 1
        return _series(counts.items())

    def cohorts(self, max_cohorts: int = MAX_COHORTS) -> CohortMatrix:
        if self._has(COHORT_TABLE):
            matrix = self._cohort_snapshots(max_cohorts)
            if matrix.rows:
                return matrix
        return self._cohorts_from_facts(max_cohorts)

    def _cohorts_from_facts(self, max_cohorts: int) -> CohortMatrix:
        customer, purchase, metrics = TABLES["customer"], TABLES["purchase"], TABLES["customer_metrics"]
        if not self._has(customer.name):
            return CohortMatrix("month", ())
        start = func.coalesce(customer.c.customer_since, customer.c.first_purchase_at)
        cohort = self._month(start).label("cohort")
        live = and_(customer.c.merged_into.is_(None), start.is_not(None))
        sizes: dict[str, int] = {}
        active: dict[str, dict[str, int]] = {}
        revenue: dict[str, float] = {}
        ltv: dict[str, float | None] = {}
        with self._engine.connect() as conn:
            for key, size in conn.execute(select(cohort, func.count()).where(live).group_by(cohort)):
                # A start SQLite could not read as a date buckets as NULL: left out, never a crash.
                if key is not None and _MONTH_KEY.fullmatch(str(key)):
                    sizes[str(key)] = int(size)
            if self._has(purchase.name):
                month = self._month(purchase.c.purchased_at).label("month")
                joined = customer.join(purchase, purchase.c.customer_id == customer.c.id)
                not_deleted = purchase.c.deleted.is_not(True)
                query = (
                    select(cohort, month, func.count(purchase.c.customer_id.distinct()))
                    .select_from(joined)
                    .where(live, not_deleted)
                    .group_by(cohort, month)
                )
                for key, bucket, buyers in conn.execute(query):
                    active.setdefault(str(key), {})[str(bucket)] = int(buyers)
                amount = func.coalesce(purchase.c.amount_base, purchase.c.amount)
                spend = select(cohort, func.sum(amount)).select_from(joined).where(live, not_deleted)
                for key, total in conn.execute(spend.group_by(cohort)):
                    revenue[str(key)] = float(total or 0)
            if self._has(metrics.name):
                value = func.coalesce(metrics.c.ltv_predicted, metrics.c.ltv_simple)
                joined_m = customer.join(metrics, metrics.c.customer_id == customer.c.id)
                query_m = select(cohort, func.avg(value)).select_from(joined_m).where(live).group_by(cohort)
                for key, avg in conn.execute(query_m):
                    ltv[str(key)] = float(avg) if avg is not None else None
        now_month = _month_index(self._clock().strftime("%Y-%m"))
        rows = []
        for key in sorted(sizes)[-max_cohorts:]:
            span = max(0, now_month - _month_index(key)) + 1
            buyers = active.get(key, {})
            retention = tuple(
                buyers.get(_month_name(_month_index(key) + k), 0) / sizes[key] for k in range(span)
            )
            per_customer = revenue[key] / sizes[key] if key in revenue else None
            rows.append(CohortRow(key, sizes[key], retention, ltv.get(key), per_customer))
        return CohortMatrix("month", tuple(rows))

    # -- helpers --------------------------------------------------------------------------------
    def _has(self, table: str) -> bool:
        # Asked each time: migrations may add tables while the daemon runs.
        return bool(inspect(self._engine).has_table(table))

    def _month(self, column: ColumnElement[Any]) -> ColumnElement[Any]:
        if self._engine.dialect.name == "postgresql":
            return func.to_char(func.timezone("UTC", column), "YYYY-MM")
        return func.strftime("%Y-%m", column)

    def _tag_snapshots(self) -> list[TagSeries]:
        table = Table(TAG_COUNT_TABLE, MetaData(), autoload_with=self._engine)
        query = select(table.c.tag, table.c.day, table.c.customers)
        with self._engine.connect() as conn:
            items = [((str(tag), _as_date(day)), int(n)) for tag, day, n in conn.execute(query)]
        return _series(items)

    def _cohort_snapshots(self, max_cohorts: int) -> CohortMatrix:
        table = Table(COHORT_TABLE, MetaData(), autoload_with=self._engine)
        c = table.c
        with self._engine.connect() as conn:
            latest = conn.execute(select(func.max(c.snapshot_date)).where(c.period == "month")).scalar()
            if latest is None:
                return CohortMatrix("month", ())
            query = (
                select(table)
                .where(c.period == "month", c.snapshot_date == latest)
                .order_by(c.period_start.desc())
                .limit(max_cohorts)
            )
            rows = [row._mapping for row in conn.execute(query)]
        result = []
        for row in reversed(rows):
            retention = tuple(float(v) for v in _json_list(row["retention"]))
            revenue = _json_list(row["revenue_per_customer"])
            avg = row["ltv_predicted_avg"] if row["ltv_predicted_avg"] is not None else row["ltv_simple_avg"]
            result.append(
                CohortRow(
                    cohort=_as_date(row["period_start"]).strftime("%Y-%m"),
                    size=int(row["customers"]),
                    retention=retention,
                    avg_ltv=float(avg) if avg is not None else None,
                    # The snapshot's list is cumulative; its last value is revenue to date.
                    revenue_per_customer=float(revenue[-1]) if revenue else None,
                )
            )
        return CohortMatrix("month", tuple(result))


def _run_view(row: RowMapping) -> RunView:
    started, finished = row["started_at"], row["finished_at"]
    duration = (finished - started).total_seconds() if started and finished else None
    return RunView(
        id=int(row["id"]),
        trigger=str(row["trigger"]),
        status=str(row["status"]),
        started_at=started,
        finished_at=finished,
        duration_seconds=duration,
        counts=row["counts"],
        report=row["report"],
        error=row["error"],
    )


def _series(items: Iterable[tuple[tuple[str, date], int]]) -> list[TagSeries]:
    by_tag: dict[str, list[TagPoint]] = {}
    for (tag, day), count in items:
        by_tag.setdefault(tag, []).append(TagPoint(day, count))
    return [
        TagSeries(tag, tuple(sorted(points, key=lambda p: p.day))) for tag, points in sorted(by_tag.items())
    ]


def _json_list(raw: object) -> list[float]:
    """A JSON list of numbers stored as text (reflection returns the raw text); bad input is empty."""
    loaded: object = raw
    if isinstance(raw, str):
        try:
            loaded = json.loads(raw)
        except ValueError:
            return []
    if not isinstance(loaded, list):
        return []
    return [float(v) for v in loaded if isinstance(v, int | float) and not isinstance(v, bool)]


def _as_date(value: object) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def _month_index(key: str) -> int:
    year, month = key.split("-")[:2]
    return int(year) * 12 + int(month) - 1


def _month_name(index: int) -> str:
    return f"{index // 12:04d}-{index % 12 + 1:02d}"
