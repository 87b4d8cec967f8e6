"""The compute stage on both stores: purchase facts aggregated in SQL, LTV written per customer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select

from ltvsync.config.settings import LtvSettings
from ltvsync.core import models as m
from ltvsync.core.compute import compute_ltv, load_model
from ltvsync.core.store import Store

AS_OF = datetime(2026, 7, 1, tzinfo=UTC)


def add_customer(
    store: Store, cid: int, email: str, since: datetime, purchases: list[tuple[datetime, float]]
) -> None:
    with store.transaction() as conn:
        store.upsert_many(
            conn,
            "customer",
            [{"id": cid, "email": email, "customer_since": since, "created_at": since, "updated_at": since}],
            key=("id",),
        )
        rows = [
            {
                "source": "salesforce",
                "source_id": f"{cid}-{i}",
                "customer_id": cid,
                "amount": Decimal(str(amount)),
                "currency": "USD",
                "amount_base": Decimal(str(amount)),
                "purchased_at": at,
                "deleted": False,
            }
            for i, (at, amount) in enumerate(purchases)
        ]
        store.upsert_many(conn, "purchase", rows, key=("source", "source_id"))


def metrics(store: Store) -> dict[int, dict[str, object]]:
    t = m.TABLES["customer_metrics"]
    with store.engine.connect() as conn:
        return {r.customer_id: dict(r._mapping) for r in conn.execute(select(t))}


def test_same_day_purchases_collapse_and_facts_are_exact(store: Store) -> None:
    day = AS_OF - timedelta(days=100)
    add_customer(
        store,
        1,
        "a@x.com",
        day,
        [(day, 10.0), (day + timedelta(hours=3), 5.0), (day + timedelta(days=30), 20.0)],
    )
    add_customer(store, 2, "b@x.com", day, [(day + timedelta(days=10), 40.0)])
    add_customer(store, 3, "c@x.com", day, [])  # no purchase: not a customer under "purchaser"
    with store.transaction() as conn:
        report = compute_ltv(store, conn, LtvSettings(), AS_OF)
    got = metrics(store)
    assert set(got) == {1, 2}
    assert got[1]["orders"] == 2  # two transaction days
    assert got[1]["revenue"] == pytest.approx(35.0)
    assert got[1]["aov"] is not None and got[1]["tenure_days"] == pytest.approx(30.0)
    assert got[1]["recency_days"] == pytest.approx(70.0)
    assert got[2]["orders"] == 1 and got[2]["recency_days"] == pytest.approx(90.0)
    # Three customers are far below the model minimum: simple LTV with the reason recorded.
    assert report.fallback_reason is not None and "too few customers" in report.fallback_reason
    assert got[1]["ltv_predicted"] == got[1]["ltv_simple"]
    assert report.model_version == "simple"


def test_deleted_purchases_and_later_purchases_do_not_count(store: Store) -> None:
    day = AS_OF - timedelta(days=50)
    add_customer(store, 1, "a@x.com", day, [(day, 10.0), (AS_OF + timedelta(days=1), 99.0)])
    with store.transaction() as conn:
        store.upsert_many(
            conn,
            "purchase",
            [
                {
                    "source": "salesforce",
                    "source_id": "gone",
                    "customer_id": 1,
                    "amount": Decimal(50),
                    "currency": "USD",
                    "amount_base": Decimal(50),
                    "purchased_at": day + timedelta(days=5),
                    "deleted": True,
                }
            ],
            key=("source", "source_id"),
        )
        compute_ltv(store, conn, LtvSettings(), AS_OF)
    assert metrics(store)[1]["revenue"] == pytest.approx(10.0)


def test_engaged_user_definition_counts_non_buyers_with_the_engagement_event(store: Store) -> None:
    day = AS_OF - timedelta(days=20)
    add_customer(store, 1, "a@x.com", day, [])
    with store.transaction() as conn:
        store.upsert_many(
            conn,
            "event",
            [
                {
                    "source": "mixpanel",
                    "source_id": "e1",
                    "customer_id": 1,
                    "kind": "login",
                    "name": "Login",
                    "occurred_at": day,
                }
            ],
            key=("source", "source_id"),
        )
        compute_ltv(store, conn, LtvSettings(customer_definition="engaged_user"), AS_OF)
    got = metrics(store)
    assert got[1]["orders"] == 0
    # No history at all: every factor is the prior.
    assert got[1]["prior_weight"] == pytest.approx(1.0, abs=0.05)


def test_model_is_fitted_once_and_reused_until_refit(store: Store) -> None:
    import numpy as np

    rng = np.random.default_rng(4)
    for cid in range(1, 401):
        # A BG/NBD customer: purchase rate lam ~ Gamma(r, 1/alpha) per day, dropout p ~ Beta(a, b)
        # after each purchase; Gamma-Gamma spend around the customer's own mean.
        lam, drop = float(rng.gamma(0.6, 1 / 40.0)), float(rng.beta(1.0, 3.0))
        nu = float(rng.gamma(4.0, 1 / 15.0))
        start = AS_OF - timedelta(days=int(rng.integers(60, 700)))
        purchases, t = [(start, 30.0)], 0.0
        while rng.random() > drop:
            t += float(rng.exponential(1 / lam))
            if t >= (AS_OF - start).days:
                break
            purchases.append((start + timedelta(days=t), float(rng.gamma(6.0, 1 / nu))))
        add_customer(store, cid, f"c{cid}@x.com", start, purchases)
    settings = LtvSettings(min_customers_for_model=100, min_repeat_buyers_for_model=20)
    with store.transaction() as conn:
        first = compute_ltv(store, conn, settings, AS_OF)
    assert first.model == "bgnbd+gamma-gamma" and first.refitted, first.fallback_reason
    with store.transaction() as conn:
        again = compute_ltv(store, conn, settings, AS_OF)
        assert load_model(store, conn, "week") is not None
    assert not again.refitted and again.parameters == first.parameters
    with store.transaction() as conn:
        refit = compute_ltv(store, conn, settings, AS_OF, refit=True)
    assert refit.refitted
    values = metrics(store)
    assert all(0.0 <= float(v["p_alive"]) <= 1.0 for v in values.values())  # type: ignore[arg-type]
