"""Cohort tables against an independent pure-Python computation from raw purchases and events,
weekly snapshots, and the before/after comparison around an annotation."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
import pytest

from ltvsync.config.settings import Settings
from ltvsync.core.cohorts import (
    AnnotationError,
    CohortData,
    add_annotation,
    cohort_table,
    cohorts_hook,
    compare_around,
    get_annotation,
    period_of_days,
    period_start,
    read_cohort_data,
    snapshot_date,
    stored_snapshot,
)
from ltvsync.core.pipeline import SyncReport
from ltvsync.core.store import Store

AS_OF = datetime(2026, 6, 17, 9, 30, tzinfo=UTC)


def _world(store: Store, seed: int = 11, n: int = 120) -> dict[int, dict[str, Any]]:
    """Random customers, purchases and events; returns the raw facts for the independent check."""
    rng = random.Random(seed)
    customers: list[dict[str, Any]] = []
    metrics: list[dict[str, Any]] = []
    purchases: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    facts: dict[int, dict[str, Any]] = {}
    for cid in range(1, n + 1):
        start = AS_OF - timedelta(days=rng.uniform(0, 400))
        customers.append(
            {"id": cid, "email": f"c{cid}@x.org", "name": None, "created_at": AS_OF, "updated_at": AS_OF}
        )
        ltv_p = None if cid % 7 == 0 else round(rng.uniform(10, 500), 2)
        metrics.append(
            {
                "customer_id": cid,
                "as_of": AS_OF,
                "orders": 0,
                "revenue": 0.0,
                "days_since_start": (AS_OF - start).total_seconds() / 86_400,
                "ltv_simple": round(rng.uniform(10, 300), 2),
                "ltv_predicted": ltv_p,
            }
        )
        acts: list[tuple[datetime, str, Decimal | None]] = []
        for j in range(rng.randint(0, 6)):
            at = start + timedelta(days=rng.uniform(-5, 300))  # some before the start, some after as_of
            amount = Decimal(rng.randint(100, 9000)) / 100
            deleted = rng.random() < 0.05
            purchases.append(
                {
                    "source": "sf",
                    "source_id": f"{cid}-{j}",
                    "customer_source_id": None,
                    "customer_email": None,
                    "customer_id": cid,
                    "amount": amount,
                    "currency": "USD",
                    "amount_base": amount,
                    "purchased_at": at,
                    "updated_at": at,
                    "deleted": deleted,
                }
            )
            if not deleted:
                acts.append((at, "purchase", amount))
        for j in range(rng.randint(0, 8)):
            at = start + timedelta(days=rng.uniform(0, 300))
            kind = rng.choice(["login", "page_view", "signup", "email_open"])
            events.append(
                {
                    "source": "mp",
                    "source_id": f"{cid}-{j}",
                    "customer_source_id": str(cid),
                    "customer_id": cid,
                    "kind": kind,
                    "name": kind,
                    "occurred_at": at,
                    "properties": None,
                    "referred": None,
                }
            )
            acts.append((at, kind, None))
        facts[cid] = {
            "start": start,
            "acts": acts,
            "ltv_simple": metrics[-1]["ltv_simple"],
            "ltv_predicted": ltv_p,
        }
    with store.transaction() as conn:
        store.upsert_many(conn, "customer", customers, ("id",))
        store.upsert_many(conn, "customer_metrics", metrics, ("customer_id",))
        store.upsert_many(conn, "purchase", purchases, ("source", "source_id"))
        store.upsert_many(conn, "event", events, ("source", "source_id"))
    return facts


def _month(d: datetime) -> int:
    return d.year * 12 + d.month - 1


def _expected_months(facts: dict[int, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The month cohort table computed row by row, without numpy or SQL."""
    now = _month(AS_OF)
    members: dict[int, list[int]] = defaultdict(list)
    for cid, f in facts.items():
        members[_month(f["start"])].append(cid)
    out = {}
    for c, cids in sorted(members.items()):
        periods = now - c + 1
        active: list[set[int]] = [set() for _ in range(periods)]
        spend = [0.0] * periods
        for cid in cids:
            for at, kind, amount in facts[cid]["acts"]:
                if at >= AS_OF:
                    continue
                k = _month(at) - c
                if amount is not None:
                    spend[max(k, 0)] += float(amount)
                if kind != "signup" and 0 <= k < periods:
                    active[k].add(cid)
        cum, total = [], 0.0
        for s in spend:
            total += s
            cum.append(round(total / len(cids), 4))
        preds = [facts[cid]["ltv_predicted"] for cid in cids if facts[cid]["ltv_predicted"] is not None]
        label = f"{c // 12:04d}-{c % 12 + 1:02d}"
        out[label] = {
            "customers": len(cids),
            "retention": [round(len(a) / len(cids), 6) for a in active],
            "revenue": cum,
            "ltv_simple": round(sum(facts[cid]["ltv_simple"] for cid in cids) / len(cids), 4),
            "ltv_predicted": round(sum(preds) / len(preds), 4) if preds else None,
        }
    return out


def test_month_cohorts_match_an_independent_computation(store: Store) -> None:
    facts = _world(store)
    with store.engine.connect() as conn:
        rows = cohort_table(read_cohort_data(conn, store.dialect, "month", AS_OF))
    expected = _expected_months(facts)
    assert [r.label for r in rows] == list(expected)
    for r in rows:
        e = expected[r.label]
        assert r.customers == e["customers"], r.label
        assert list(r.retention) == pytest.approx(e["retention"], abs=1e-6), r.label
        assert list(r.revenue_per_customer) == pytest.approx(e["revenue"], abs=1e-3), r.label
        assert r.ltv_simple_avg == pytest.approx(e["ltv_simple"], abs=1e-3)
        assert (r.ltv_predicted_avg is None) == (e["ltv_predicted"] is None)
        if e["ltv_predicted"] is not None:
            assert r.ltv_predicted_avg == pytest.approx(e["ltv_predicted"], abs=1e-3)
        assert r.period_start == date(int(r.label[:4]), int(r.label[5:]), 1)
    assert sum(r.customers for r in rows) == len(facts)


def test_week_cohorts_start_on_monday_and_match(store: Store) -> None:
    facts = _world(store, seed=5, n=60)
    with store.engine.connect() as conn:
        rows = cohort_table(read_cohort_data(conn, store.dialect, "week", AS_OF))

    def monday(d: datetime) -> date:
        return d.date() - timedelta(days=d.weekday())

    sizes: dict[date, int] = defaultdict(int)
    for f in facts.values():
        sizes[monday(f["start"])] += 1
    assert {r.period_start: r.customers for r in rows} == dict(sizes)
    assert all(r.period_start.weekday() == 0 for r in rows)
    newest = rows[-1]
    assert len(newest.retention) == (monday(AS_OF) - newest.period_start).days // 7 + 1
    # Independent retention for the oldest cohort, week 1 (the week after it started).
    oldest = rows[0]
    cids = [c for c, f in facts.items() if monday(f["start"]) == oldest.period_start]
    week1 = oldest.period_start + timedelta(days=7)
    active = {
        c
        for c in cids
        for at, kind, _ in facts[c]["acts"]
        if kind != "signup" and at < AS_OF and monday(at) == week1
    }
    assert oldest.retention[1] == pytest.approx(len(active) / len(cids))


def test_period_numbers() -> None:
    days = np.array([0.0, 3.9, 4.0, 31.0, (datetime(2026, 3, 2, tzinfo=UTC).timestamp() / 86400)])
    assert period_of_days(days, "week").tolist()[:3] == [0, 0, 1]  # 1970-01-05 was a Monday
    assert period_of_days(days, "month").tolist() == [0, 0, 0, 1, 56 * 12 + 2]
    assert period_start(1, "week") == date(1970, 1, 5)
    assert period_start(56 * 12 + 2, "month") == date(2026, 3, 1)


def _data(starts: list[float], active1: list[bool], ltv: list[float]) -> CohortData:
    """Customers starting on the given epoch days, in months far enough back to have matured."""
    n = len(starts)
    start = np.array(starts)
    cohort = period_of_days(start, "month")
    pos = np.array([i for i in range(n) if active1[i]], dtype=np.int64)
    return CohortData(
        "month",
        AS_OF,
        np.arange(1, n + 1, dtype=np.int64),
        start,
        cohort,
        int(period_of_days(np.array([AS_OF.timestamp() / 86400]), "month")[0]),
        np.array(ltv),
        np.array(ltv),
        pos,
        np.ones(len(pos), dtype=np.int64),
        np.arange(n, dtype=np.int64),
        np.zeros(n, dtype=np.int64),
        np.array(ltv) / 10,
    )


def test_compare_around_annotation_difference_and_interval() -> None:
    at = datetime(2026, 3, 1, tzinfo=UTC)
    day = at.timestamp() / 86400
    before_starts = [day - 20 - i % 5 for i in range(40)]
    after_starts = [day + 3 + i % 5 for i in range(40)]
    far = [day - 400.0]  # outside the 3-month window: ignored
    act = [i % 2 == 0 for i in range(40)] + [i % 4 == 0 for i in range(40)] + [True]
    ltv = [100.0 + i % 3 for i in range(40)] + [80.0 + i % 3 for i in range(40)] + [9999.0]
    diffs = {d.metric: d for d in compare_around(_data(before_starts + after_starts + far, act, ltv), at)}
    ret = diffs["retention in period 1"]
    assert (ret.before_n, ret.after_n) == (40, 40)
    assert ret.before == pytest.approx(0.5) and ret.after == pytest.approx(0.25)
    assert ret.difference == pytest.approx(-0.25)
    b = np.array(act[:40], dtype=float)
    a = np.array(act[40:80], dtype=float)
    se = math.sqrt(b.var(ddof=1) / 40 + a.var(ddof=1) / 40)
    assert ret.std_error == pytest.approx(se)
    assert ret.interval == pytest.approx((-0.25 - 1.959964 * se, -0.25 + 1.959964 * se))
    ltv_diff = diffs["predicted LTV"]
    assert ltv_diff.difference == pytest.approx(-20.0)
    assert diffs["revenue per customer through period 1"].difference == pytest.approx(-2.0)


def test_hook_keeps_one_snapshot_per_week_and_compares_with_last_week(store: Store) -> None:
    _world(store, n=40)

    first = SyncReport(0, "test")
    with store.transaction() as conn:
        cohorts_hook(store, conn, Settings(), AS_OF - timedelta(days=7), first)
    assert first.cohorts["ltv_predicted_avg_last_week"] is None
    report = SyncReport(1, "test")
    for hours in (0, 5):  # two runs in one week: the later one wins
        with store.transaction() as conn:
            cohorts_hook(store, conn, Settings(), AS_OF + timedelta(hours=hours), report)
    week = snapshot_date(AS_OF)
    assert week == date(2026, 6, 15)
    with store.engine.connect() as conn:
        rows = stored_snapshot(conn, week)
        weekly = stored_snapshot(conn, week, "week")
        live = cohort_table(read_cohort_data(conn, store.dialect, "month", AS_OF + timedelta(hours=5)))
    assert rows == live
    assert sum(r.customers for r in weekly) == 40
    summary = report.cohorts
    assert summary["customers"] == 40 and summary["cohorts"] == len(rows)
    assert summary["ltv_predicted_avg_last_week"] == first.cohorts["ltv_predicted_avg"]
    assert len(summary["latest"]) == 3


def test_annotations(store: Store) -> None:
    at = datetime(2026, 3, 1, tzinfo=UTC)
    with store.transaction() as conn:
        add_annotation(conn, "price increase", at, "+10%", AS_OF)
    with store.transaction() as conn, pytest.raises(AnnotationError, match="already exists"):
        add_annotation(conn, "price increase", at, None, AS_OF)
    with store.engine.connect() as conn:
        got = get_annotation(conn, "price increase")
        assert (got.at, got.note) == (at, "+10%")
        with pytest.raises(AnnotationError, match="known: price increase"):
            get_annotation(conn, "price cut")
