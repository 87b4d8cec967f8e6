"""Default tag rules at their boundaries (pure masks), and the tag stage in the store: windows
read from raw events, purchases and tickets, membership history written only for changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select
from sqlmodel import SQLModel

from ltvsync.config.settings import Settings, TagCondition, TagRule, TagSettings
from ltvsync.core.models import TABLES
from ltvsync.core.models_tags import TAG_TABLE_NAMES, TAG_TABLES
from ltvsync.core.pipeline import SyncReport
from ltvsync.core.store import Store
from ltvsync.core.tag_features import METRIC_COLUMNS, Features
from ltvsync.core.tag_rules import default_rules, rules_from_settings
from ltvsync.core.tags import percentile_rank, tag_masks, tag_strings, tags_hook

AS_OF = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
AS_OF_DAY = AS_OF.timestamp() / 86_400.0


def features(n: int, **columns: Any) -> Features:
    """n customers; metrics default to neutral values that match no default rule."""
    neutral = {
        "orders": 3.0,
        "revenue": 150.0,
        "aov": 50.0,
        "frequency": 2.0,
        "tenure_days": 100.0,
        "recency_days": 10.0,
        "days_since_start": 200.0,
        "ltv_simple": 100.0,
        "ltv_predicted": 100.0,
        "p_alive": 0.9,
        "expected_purchases": 1.0,
        "referrals_sent": 0.0,
        "logins_window@30": 2.0,
        "logins_prev_window@30": 2.0,
        "engaged_events@7": 1.0,
    }
    values = {k: np.full(n, v, dtype=float) for k, v in neutral.items()}
    last = np.full(n, AS_OF_DAY - 1.0)
    for key, given in columns.items():
        arr = np.asarray(given, dtype=float)
        if key == "last_activity_day":
            last = arr
        else:
            values[key.replace("__", "@")] = arr
    return Features(np.arange(1, n + 1, dtype=np.int64), values, last, ("v1",) * n, (None,) * n)


def masks_for(tag: str, f: Features, tags: TagSettings | None = None) -> list[bool]:
    rules = default_rules(tags or TagSettings())
    return [bool(v) for v in tag_masks(f, rules, AS_OF)[tag]]


def test_high_value_top_decile_or_frequent_referrer() -> None:
    ltv = np.arange(0.0, 101.0)  # p90 of 0..100 is exactly 90
    f = features(101, ltv_predicted=ltv)
    got = masks_for("high-value", f)
    assert got[90] and got[100] and not got[89]
    assert sum(got) == 11
    # Frequent buyer who referred someone: both needed, boundaries inclusive.
    f2 = features(4, ltv_predicted=[1, 2, 3, 100], frequency=[4, 3.99, 4, 1], referrals_sent=[1, 5, 0, 0])
    assert masks_for("high-value", f2) == [True, False, False, True]


def test_one_time_buyer_needs_exactly_one_order_past_the_window() -> None:
    f = features(4, orders=[1, 1, 2, 1], days_since_start=[60.5, 60, 90, 400])
    assert masks_for("one-time-buyer", f) == [True, False, False, True]
    assert masks_for("one-time-buyer", f, TagSettings(one_time_buyer_after_days=500)) == [False] * 4


def test_referrer() -> None:
    assert masks_for("referrer", features(3, referrals_sent=[0, 1, 3])) == [False, True, True]


def test_at_risk_valuable_and_fading() -> None:
    # ltv_simple median of [10, 20, 30, 40, 50, 60] is 35: only the top three are "valuable".
    f = features(
        6,
        ltv_simple=[10, 20, 30, 40, 50, 60],
        p_alive=[0.1, 0.1, 0.1, 0.49, 0.5, 0.9],
        logins_window__30=[0, 0, 0, 5, 5, 5],
        logins_prev_window__30=[9, 9, 9, 5, 10, 9],
    )
    # 40: p_alive < 0.5; 50: p_alive 0.5 but logins 5/10 = 0.5 (<= 0.5); 60: 5/9 > 0.5, alive.
    assert masks_for("at-risk", f) == [False, False, False, True, True, False]
    # No logins before: no trend, so only P(alive) can make a customer at risk.  A "halving" from
    # fewer than 4 earlier logins (1 -> 0) is noise, not a fading habit; 4 -> 0 is.
    g = features(
        5,
        ltv_simple=[1, 1, 1, 50, 50],  # median 1: only the last two are valuable
        p_alive=[0.9] * 5,
        logins_window__30=[0] * 5,
        logins_prev_window__30=[0, 0, 0, 3, 4],
    )
    assert masks_for("at-risk", g) == [False, False, False, False, True]


def test_early_churn_risk_and_new() -> None:
    f = features(4, days_since_start=[29.9, 30, 5, 5], engaged_events__7=[0, 0, 1, 0])
    assert masks_for("early-churn-risk", f) == [True, False, False, True]
    assert masks_for("new", f) == [True, False, True, True]


def test_churned_by_p_alive_or_silence() -> None:
    last = np.array([AS_OF_DAY - 181, AS_OF_DAY - 180, AS_OF_DAY - 1, AS_OF_DAY - 1, np.nan])
    f = features(
        5,
        p_alive=[0.9, 0.9, 0.14, 0.15, np.nan],
        last_activity_day=last,
        days_since_start=[400, 400, 400, 400, 200],
    )
    # Never active: silence counts from the start (200 > 180).
    assert masks_for("churned", f) == [True, False, True, False, True]


def test_engaged_at_four_logins() -> None:
    assert masks_for("engaged", features(3, logins_window__30=[3, 4, 12])) == [False, True, True]


def test_missing_values_never_match_even_not_equal() -> None:
    rule = TagRule(name="x", all=[TagCondition(metric="p_alive", op="!=", value=0.5)])
    rules = rules_from_settings(TagSettings(use_defaults=False, rules=[rule]))
    f = features(3, p_alive=[np.nan, 0.5, 0.7])
    assert tag_masks(f, rules, AS_OF)["x"].tolist() == [False, False, True]


def test_percentile_rank() -> None:
    assert percentile_rank(np.array([3.0, 1.0, np.nan, 2.0, 2.0])).tolist()[:2] == [100.0, 25.0]
    assert np.isnan(percentile_rank(np.array([np.nan]))[0])


@pytest.mark.parametrize("n_tags", [3, 25])
def test_tag_strings_sorted_and_none_when_empty(n_tags: int) -> None:
    rng = np.random.default_rng(n_tags)
    names = [f"t{i:02d}" for i in range(n_tags)]
    masks = {name: rng.random(50) < 0.3 for name in reversed(names)}
    got = tag_strings(np.arange(50, dtype=np.int64), masks)
    for i in range(50):
        held = [name for name in names if masks[name][i]]
        assert got[i] == (";".join(held) if held else None)


def test_configured_rule_overrides_default_of_same_name() -> None:
    mine = TagRule(
        name="engaged", all=[TagCondition(metric="logins_window", op=">=", value=10, window_days=14)]
    )
    rules = rules_from_settings(TagSettings(rules=[mine]))
    assert [r.name for r in rules].count("engaged") == 1
    engaged = next(r for r in rules if r.name == "engaged")
    assert engaged.describe() == "logins_window@14 >= 10"
    assert len(rules) == len(default_rules(TagSettings()))


# --- in the store ------------------------------------------------------------------------------


class World:
    """Hand-built customers written straight into the store tables."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.customers: list[dict[str, Any]] = []
        self.metrics: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.purchases: list[dict[str, Any]] = []
        self.tickets: list[dict[str, Any]] = []

    def customer(self, cid: int, **metrics: Any) -> int:
        self.customers.append(
            {
                "id": cid,
                "email": f"c{cid}@example.com",
                "name": f"C{cid}",
                "created_at": AS_OF,
                "updated_at": AS_OF,
            }
        )
        row: dict[str, Any] = {c: None for c in METRIC_COLUMNS}
        row |= {"orders": 0, "revenue": 0.0, "days_since_start": 200.0}
        row |= {"customer_id": cid, "as_of": AS_OF, "model_version": "bgnbd-gg:test", "p_alive": 0.9}
        row |= {"ltv_simple": 10.0, "ltv_predicted": None}
        row.update(metrics)
        self.metrics.append(row)
        return cid

    def event(self, cid: int, kind: str, at: datetime) -> None:
        n = len(self.events)
        self.events.append(
            {
                "source": "mixpanel",
                "source_id": f"e{n}",
                "customer_source_id": str(cid),
                "customer_id": cid,
                "kind": kind,
                "name": kind,
                "occurred_at": at,
                "properties": None,
                "referred": None,
            }
        )

    def purchase(self, cid: int, at: datetime, amount: str = "10") -> None:
        n = len(self.purchases)
        self.purchases.append(
            {
                "source": "salesforce",
                "source_id": f"p{n}",
                "customer_source_id": str(cid),
                "customer_email": None,
                "customer_id": cid,
                "amount": Decimal(amount),
                "currency": "USD",
                "amount_base": Decimal(amount),
                "purchased_at": at,
                "updated_at": at,
            }
        )

    def ticket(self, cid: int, at: datetime, satisfaction: str | None) -> None:
        n = len(self.tickets)
        self.tickets.append(
            {
                "source": "zendesk",
                "source_id": f"t{n}",
                "customer_source_id": str(cid),
                "customer_id": cid,
                "status": "solved",
                "created_at": at,
                "updated_at": at,
                "satisfaction": satisfaction,
            }
        )

    def save(self) -> None:
        with self.store.transaction() as conn:
            self.store.upsert_many(conn, "customer", self.customers, ("id",))
            self.store.upsert_many(conn, "customer_metrics", self.metrics, ("customer_id",))
            for table, rows in (
                ("event", self.events),
                ("purchase", self.purchases),
                ("ticket", self.tickets),
            ):
                if rows:
                    self.store.upsert_many(conn, table, rows, ("source", "source_id"))


def run_tags(store: Store, settings: Settings, as_of: datetime = AS_OF) -> dict[str, Any]:
    report = SyncReport(0, "test")
    with store.transaction() as conn:
        tags_hook(store, conn, settings, as_of, report)
    return report.tags


def stored_tags(store: Store) -> dict[int, str | None]:
    t = TABLES["customer_metrics"]
    with store.engine.connect() as conn:
        return {int(r.customer_id): r.tags for r in conn.execute(select(t.c.customer_id, t.c.tags))}


def history(store: Store) -> list[tuple[int, str, str]]:
    t = TAG_TABLES["tag_history"]
    with store.engine.connect() as conn:
        rows = conn.execute(select(t.c.customer_id, t.c.tag, t.c.action).order_by(t.c.id)).all()
    return [(r.customer_id, r.tag, r.action) for r in rows]


def test_windows_are_read_from_raw_facts_at_their_boundaries(store: Store) -> None:
    w = World(store)
    day = timedelta(days=1)
    # 1: four logins, the oldest exactly 30 days before as_of (inside the window) -> engaged.
    w.customer(1)
    for k in (30, 10, 5, 1):
        w.event(1, "login", AS_OF - k * day)
    # 2: the oldest a second before the window -> three logins, not engaged.
    w.customer(2)
    for at in (AS_OF - 30 * day - timedelta(seconds=1), AS_OF - 10 * day, AS_OF - 5 * day, AS_OF - day):
        w.event(2, "login", at)
    # 3: a login after as_of does not count either.
    w.customer(3)
    for at in (AS_OF - 3 * day, AS_OF - 2 * day, AS_OF - day, AS_OF + day):
        w.event(3, "login", at)
    # 4: referral -> referrer.  5: new, silent for 7 days -> early-churn-risk; 6: new, bought 6 days ago.
    w.customer(4)
    w.event(4, "referral", AS_OF - 100 * day)
    w.customer(5, days_since_start=20.0)
    w.event(5, "signup", AS_OF - 20 * day)
    w.event(5, "login", AS_OF - 8 * day)
    w.customer(6, days_since_start=20.0)
    w.purchase(6, AS_OF - 6 * day)
    # 7: last activity 181 days ago -> churned; 8: a purchase 179 days ago keeps it out.
    w.customer(7, days_since_start=400.0)
    w.event(7, "page_view", AS_OF - 181 * day)
    w.customer(8, days_since_start=400.0)
    w.event(8, "page_view", AS_OF - 300 * day)
    w.purchase(8, AS_OF - 179 * day)
    # 9: one order, older than 60 days -> one-time-buyer.
    w.customer(9, orders=1, days_since_start=61.0)
    w.purchase(9, AS_OF - 61 * day)
    for cid in (1, 2, 3, 4, 9):
        w.event(cid, "page_view", AS_OF - day)
    w.ticket(1, AS_OF - 2 * day, "bad")
    w.ticket(1, AS_OF - 40 * day, "bad")
    w.ticket(2, AS_OF - 2 * day, "good")
    w.save()
    unhappy = TagRule(
        name="unhappy", all=[TagCondition(metric="unsatisfied_tickets", op=">=", value=1, window_days=30)]
    )
    settings = Settings(tags=TagSettings(rules=[unhappy]))
    report = run_tags(store, settings)

    tags = stored_tags(store)
    assert tags[1] == "engaged;unhappy"
    assert tags[2] is None and tags[3] is None
    assert tags[4] == "referrer"
    assert tags[5] == "early-churn-risk;new"
    assert tags[6] == "new"
    assert tags[7] == "churned"
    assert tags[8] is None
    assert tags[9] == "one-time-buyer"
    assert report["counts"]["engaged"] == 1 and report["entered"]["new"] == 2
    assert report["left"] == {}
    # History: one enter row per membership, with the deciding values and the model version.
    rows = history(store)
    assert sorted(rows) == sorted((cid, tag, "enter") for cid, t in tags.items() if t for tag in t.split(";"))
    h = TAG_TABLES["tag_history"]
    with store.engine.connect() as conn:
        row = conn.execute(select(h).where(h.c.customer_id == 1, h.c.tag == "engaged")).one()
    assert row.values["values"] == {"logins_window@30": 4.0}
    assert row.values["thresholds"] == {"logins_window@30 >= 4": 4.0}
    assert row.model_version == "bgnbd-gg:test" and row.rule == "logins_window@30 >= 4"
    assert row.at == AS_OF


def test_changing_a_threshold_writes_history_for_exactly_the_changed(store: Store) -> None:
    w = World(store)
    rng = np.random.default_rng(3)
    logins = rng.integers(0, 12, size=60)
    for cid, n in enumerate(logins.tolist(), start=1):
        w.customer(cid)
        for k in range(n):
            w.event(cid, "login", AS_OF - timedelta(days=1 + k))
    w.save()
    base = Settings(tags=TagSettings(use_defaults=False, rules=[_logins_rule(4)]))
    run_tags(store, base)
    first = history(store)
    assert sorted(c for c, _, _ in first) == [i + 1 for i in range(60) if logins[i] >= 4]
    # Same rules again: nothing changes, nothing is written.
    assert run_tags(store, base)["entered"] == {} and history(store) == first

    stricter = Settings(tags=TagSettings(use_defaults=False, rules=[_logins_rule(7)]))
    report = run_tags(store, stricter, AS_OF + timedelta(hours=1))
    new_rows = history(store)[len(first) :]
    expected_leave = [i + 1 for i in range(60) if 4 <= logins[i] < 7]
    assert sorted(new_rows) == [(c, "busy", "leave") for c in expected_leave]
    assert report["left"] == {"busy": len(expected_leave)}
    members = {c for c, t in stored_tags(store).items() if t == "busy"}
    assert members == {i + 1 for i in range(60) if logins[i] >= 7}

    looser = Settings(tags=TagSettings(use_defaults=False, rules=[_logins_rule(2)]))
    run_tags(store, looser, AS_OF + timedelta(hours=2))
    newer = history(store)[len(first) + len(new_rows) :]
    assert sorted(newer) == [(i + 1, "busy", "enter") for i in range(60) if 2 <= logins[i] < 7]


def _logins_rule(threshold: int) -> TagRule:
    cond = TagCondition(metric="logins_window", op=">=", value=threshold, window_days=30)
    return TagRule(name="busy", all=[cond])


def test_removed_rule_and_removed_customer_leave(store: Store) -> None:
    w = World(store)
    w.customer(1)
    w.customer(2)
    w.event(1, "referral", AS_OF - timedelta(days=3))
    w.event(2, "referral", AS_OF - timedelta(days=3))
    w.save()
    run_tags(store, Settings())
    with store.transaction() as conn:
        conn.execute(TABLES["customer_metrics"].delete().where(TABLES["customer_metrics"].c.customer_id == 2))
    report = run_tags(store, Settings(tags=TagSettings(use_defaults=False)))
    assert report["left"] == {"referrer": 2}
    assert sorted(history(store)[-2:]) == [(1, "referrer", "leave"), (2, "referrer", "leave")]


def test_at_risk_change_since_a_week_ago(store: Store) -> None:
    w = World(store)
    for cid in range(1, 5):
        w.customer(cid, ltv_simple=float(cid * 10), p_alive=0.2)
    w.save()
    first = run_tags(store, Settings())
    # Above the median of 10..40 (25): customers 3 and 4.
    assert first["churn"]["at_risk"] == 2 and first["churn"]["at_risk_week_ago"] is None
    with store.transaction() as conn:
        t = TABLES["customer_metrics"]
        conn.execute(t.update().where(t.c.customer_id == 1).values(ltv_simple=100.0))
    later = run_tags(store, Settings(), AS_OF + timedelta(days=8))
    assert later["churn"]["at_risk"] == 2  # customers 1 and 4 now (median moved)
    assert later["churn"]["at_risk_week_ago"] == 2 and later["churn"]["at_risk_change"] == 0
    assert later["churn"]["week_ago_day"] == AS_OF.date().isoformat()


def test_early_vanish_share_per_start_month(store: Store) -> None:
    w = World(store)
    day = timedelta(days=1)
    # Started 2026-03-10 (83.5 days before as_of): 1 active on day 40, 2 only on day 10, 3 never.
    start = AS_OF - 83.5 * day
    for cid, active in ((1, 40), (2, 10), (3, None)):
        w.customer(cid, days_since_start=83.5)
        if active is not None:
            w.event(cid, "login", start + active * day)
    w.customer(4, days_since_start=10.0)  # too young to judge
    w.save()
    churn = run_tags(store, Settings())["churn"]
    assert churn["early_vanish"] == {"2026-03": {"eligible": 3, "vanished": 2, "share": round(2 / 3, 4)}}


def test_migration_0002_matches_the_tag_models(store: Store) -> None:
    with store.engine.connect() as conn:
        diffs = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), SQLModel.metadata
        )
    flat = [d for item in diffs for d in (item if isinstance(item, list) else [item])]
    mine = [d for d in flat if any(name in repr(d) for name in TAG_TABLE_NAMES)]
    assert mine == []
    assert store.current_revision() == "0002"
