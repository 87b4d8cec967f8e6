"""SqlStatusQueries against real tables on SQLite and Postgres, with a small hand-made world."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from ltvsync.core.models import TABLES
from ltvsync.core.status_queries import SqlStatusQueries
from ltvsync.core.status_values import cursor_time, histogram, parse_tags

PG_URL = os.environ.get("LTVSYNC_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def _pg_engine() -> Iterator[Engine]:
    # A private schema: other test sessions share this database.
    schema = f"h_status_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_URL)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except OperationalError as exc:
        admin.dispose()
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"PostgreSQL not reachable: {exc.__class__.__name__}")
    engine = create_engine(PG_URL, connect_args={"options": f"-csearch_path={schema}"})
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        eng = create_engine(f"sqlite:///{tmp_path}/status.db")
        yield eng
        eng.dispose()
    else:
        yield from _pg_engine()


def _schema(engine: Engine) -> None:
    from sqlmodel import SQLModel

    SQLModel.metadata.create_all(engine, tables=list(TABLES.values()))


def _seed(engine: Engine) -> None:
    t = TABLES
    oct1, nov1 = datetime(2026, 10, 3, tzinfo=UTC), datetime(2026, 11, 5, tzinfo=UTC)
    customers = [
        # id, email, cohort start
        (1, "ada@example.com", oct1),
        (2, "bob@example.com", oct1),
        (3, "cy@example.com", oct1),
        (4, "di@example.com", oct1),
        (5, "ed@example.com", nov1),
        (6, "fay@example.com", nov1),
    ]
    purchases = [
        # customer, month -> buys in cohort month 0 and 1 for some
        (1, datetime(2026, 10, 4, tzinfo=UTC), "100"),
        (1, datetime(2026, 10, 20, tzinfo=UTC), "50"),
        (2, datetime(2026, 10, 9, tzinfo=UTC), "30"),
        (3, datetime(2026, 10, 10, tzinfo=UTC), "20"),
        (1, datetime(2026, 11, 2, tzinfo=UTC), "40"),
        (3, datetime(2026, 11, 30, 23, 59, tzinfo=UTC), "60"),
        (5, datetime(2026, 11, 6, tzinfo=UTC), "10"),
    ]
    with engine.begin() as conn:
        conn.execute(
            insert(t["customer"]),
            [
                {
                    "id": i,
                    "email": e,
                    "name": e.split("@")[0],
                    "customer_since": s,
                    "created_at": s,
                    "updated_at": s,
                }
                for i, e, s in customers
            ],
        )
        conn.execute(
            insert(t["purchase"]),
            [
                {
                    "source": "sf",
                    "source_id": f"p{n}",
                    "customer_id": c,
                    "amount": Decimal(a),
                    "currency": "USD",
                    "purchased_at": at,
                }
                for n, (c, at, a) in enumerate(purchases)
            ],
        )
        conn.execute(
            insert(t["customer_metrics"]),
            [
                {
                    "customer_id": 1,
                    "as_of": NOW,
                    "ltv_simple": 400.0,
                    "ltv_predicted": 500.0,
                    "tags": "vip,loyal",
                },
                {
                    "customer_id": 2,
                    "as_of": NOW,
                    "ltv_simple": 100.0,
                    "ltv_predicted": None,
                    "tags": '["one_time_buyer"]',
                },
                {"customer_id": 3, "as_of": NOW, "ltv_simple": 300.0, "ltv_predicted": None, "tags": "loyal"},
                {"customer_id": 5, "as_of": NOW, "ltv_simple": 50.0, "ltv_predicted": None, "tags": None},
            ],
        )
        conn.execute(
            insert(t["sync_state"]),
            [
                {
                    "connector": "salesforce",
                    "stream": "contacts",
                    "cursor": "2026-12-04T10:00:00Z",
                    "updated_at": NOW - timedelta(minutes=5),
                },
                {
                    "connector": "zendesk",
                    "stream": "tickets",
                    "cursor": "opaque-token",
                    "updated_at": NOW - timedelta(minutes=30),
                },
            ],
        )
        conn.execute(
            insert(t["sync_run"]),
            [
                {
                    "id": 1,
                    "trigger": "schedule",
                    "status": "failed",
                    "started_at": NOW - timedelta(hours=2),
                    "finished_at": NOW - timedelta(hours=2) + timedelta(seconds=12),
                    "counts": None,
                    "error": "boom",
                },
                {
                    "id": 2,
                    "trigger": "manual",
                    "status": "ok",
                    "started_at": NOW - timedelta(hours=1),
                    "finished_at": NOW - timedelta(hours=1) + timedelta(seconds=30),
                    "counts": {"loaded": {"a": 1}},
                    "error": None,
                },
                {
                    "id": 3,
                    "trigger": "schedule",
                    "status": "running",
                    "started_at": NOW,
                    "finished_at": None,
                    "counts": None,
                    "error": None,
                },
            ],
        )


def test_queries_over_the_store_tables(engine: Engine) -> None:
    _schema(engine)
    _seed(engine)
    q = SqlStatusQueries(engine, clock=lambda: NOW)

    runs = q.runs(limit=2)
    assert [r.id for r in runs] == [3, 2]
    assert runs[0].finished_at is None and runs[0].duration_seconds is None
    assert runs[1].duration_seconds == pytest.approx(30.0)
    assert runs[1].counts == {"loaded": {"a": 1}}
    assert q.run(1) is not None and q.run(1).error == "boom"  # type: ignore[union-attr]
    assert q.run(99) is None
    assert q.run_counts() == {"failed": 1, "ok": 1, "running": 1}

    lags = {(lag.connector, lag.stream): lag for lag in q.stream_lag()}
    assert lags["salesforce", "contacts"].lag_seconds == pytest.approx(7200.0)
    assert lags["salesforce", "contacts"].lag_basis == "cursor"
    assert lags["zendesk", "tickets"].lag_seconds == pytest.approx(1800.0)
    assert lags["zendesk", "tickets"].lag_basis == "updated_at"
    assert lags["salesforce", "contacts"].age_seconds == pytest.approx(300.0)

    ada = q.customer("  ADA@example.com ")
    assert ada is not None and ada.id == 1 and ada.tags == ("vip", "loyal")
    assert ada.metrics is not None and ada.metrics["ltv_predicted"] == 500.0
    assert ada.customer_since is not None and ada.customer_since.tzinfo is not None
    assert q.customer("nobody@example.com") is None
    di = q.customer("di@example.com")
    assert di is not None and di.metrics is None and di.tags == ()

    hist = q.ltv_distribution(bins=5)
    assert hist.total == 4 and sum(b.count for b in hist.bins) + hist.overflow == 4

    tags = {s.tag: [(p.day.isoformat(), p.count) for p in s.points] for s in q.tag_counts()}
    assert tags == {
        "loyal": [("2026-12-04", 2)],
        "one_time_buyer": [("2026-12-04", 1)],
        "vip": [("2026-12-04", 1)],
    }

    cohorts = {row.cohort: row for row in q.cohorts().rows}
    assert set(cohorts) == {"2026-10", "2026-11"}
    october = cohorts["2026-10"]
    assert october.size == 4
    # Oct: customers 1,2,3 bought (3/4); Nov: customers 1 and 3 (2/4); Dec: nobody yet.
    assert october.retention == pytest.approx((0.75, 0.5, 0.0))
    assert october.avg_ltv == pytest.approx((500.0 + 100.0 + 300.0) / 3)
    assert october.revenue_per_customer == pytest.approx((100 + 50 + 30 + 20 + 40 + 60) / 4)
    assert cohorts["2026-11"].retention == pytest.approx((0.5, 0.0))


def test_unreadable_start_dates_are_left_out_of_cohorts(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'bad.db'}")
    _schema(engine)
    _seed(engine)
    with engine.begin() as conn:
        # Written around the UtcDateTime type, as a hand edit or a foreign tool might.
        conn.execute(text("UPDATE customer SET customer_since = 'not a date' WHERE id = 6"))
    rows = {r.cohort: r.size for r in SqlStatusQueries(engine, clock=lambda: NOW).cohorts().rows}
    assert rows == {"2026-10": 4, "2026-11": 1}
    engine.dispose()


def test_missing_tables_give_empty_answers(engine: Engine) -> None:
    q = SqlStatusQueries(engine, clock=lambda: NOW)
    assert q.runs() == [] and q.run(1) is None and q.run_counts() == {}
    assert q.stream_lag() == [] and q.customer("a@b.c") is None
    assert q.ltv_distribution().total == 0 and q.tag_counts() == [] and q.cohorts().rows == ()


def test_snapshot_tables_are_preferred_when_they_hold_rows(engine: Engine) -> None:
    _schema(engine)
    _seed(engine)
    # DDL as in migration 0002 (tag and cohort stage), written out so this test pins the shape.
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE tag_count_snapshot (day DATE, tag VARCHAR(64), customers INTEGER)"))
        conn.execute(
            text(
                "CREATE TABLE cohort_snapshot (snapshot_date DATE, period VARCHAR(8), period_start DATE, "
                "customers INTEGER, ltv_simple_avg FLOAT, ltv_predicted_avg FLOAT, retention TEXT, "
                "revenue_per_customer TEXT, as_of TIMESTAMP)"
            )
        )
    q = SqlStatusQueries(engine, clock=lambda: NOW)
    # Empty snapshot tables: computed from the facts instead.
    assert {s.tag for s in q.tag_counts()} == {"loyal", "one_time_buyer", "vip"}
    assert [r.cohort for r in q.cohorts().rows] == ["2026-10", "2026-11"]
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO tag_count_snapshot VALUES ('2026-11-08', 'vip', 5), ('2026-11-01', 'vip', 3), "
                "('2026-11-01', 'loyal', 9)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO cohort_snapshot VALUES "
                "('2026-11-23', 'month', '2026-09-01', 50, 10.0, NULL, '[1.0]', '[5.0]', "
                "'2026-11-23 00:00:00'), "
                "('2026-11-30', 'month', '2026-10-01', 40, 120.0, 150.0, '[1.0, 0.25]', '[30.0, 42.5]', "
                "'2026-11-30 00:00:00'), "
                "('2026-11-30', 'month', '2026-11-01', 20, 80.0, NULL, '[1.0]', 'not json', "
                "'2026-11-30 00:00:00'), "
                "('2026-11-30', 'week', '2026-11-23', 5, 1.0, NULL, '[1.0]', '[1.0]', '2026-11-30 00:00:00')"
            )
        )
    series = {s.tag: [(p.day.isoformat(), p.count) for p in s.points] for s in q.tag_counts()}
    assert series == {"loyal": [("2026-11-01", 9)], "vip": [("2026-11-01", 3), ("2026-11-08", 5)]}
    rows = q.cohorts().rows
    assert [(r.cohort, r.size, r.retention, r.avg_ltv, r.revenue_per_customer) for r in rows] == [
        ("2026-10", 40, (1.0, 0.25), 150.0, 42.5),
        ("2026-11", 20, (1.0,), 80.0, None),
    ]
    assert [r.cohort for r in q.cohorts(max_cohorts=1).rows] == ["2026-11"]


def test_histogram_edges_and_overflow() -> None:
    values = [float(v) for v in range(1, 101)] + [10_000.0]
    hist = histogram(values, bins=10)
    assert hist.total == 101
    assert hist.bins[0].low == 0.0
    assert hist.overflow == 1 and hist.overflow_max == 10_000.0
    assert sum(b.count for b in hist.bins) == 100
    assert histogram([], 10).bins == ()
    assert histogram([float("nan"), 5.0], 2).total == 1
    assert sum(b.count for b in histogram([7.0, 7.0], 3).bins) == 2


def test_parse_tags_and_cursor_time() -> None:
    assert parse_tags('["a", "b"]') == ("a", "b")
    assert parse_tags("a, b;c") == ("a", "b", "c")
    assert parse_tags("[broken") == ("[broken",)
    assert parse_tags(None) == ()
    assert cursor_time("2026-12-04T10:00:00Z") == datetime(2026, 12, 4, 10, tzinfo=UTC)
    assert cursor_time("1764842400") == datetime.fromtimestamp(1764842400, UTC)
    assert cursor_time('{"SystemModstamp": "2026-12-04T10:00:00.000+0000", "Id": "003"}') is not None
    assert cursor_time("2026-12-03T23:59:59+00:00|0038d0000000086AAA") == datetime(
        2026, 12, 3, 23, 59, 59, tzinfo=UTC
    )
    assert cursor_time("opaque") is None and cursor_time("") is None and cursor_time("{bad") is None
