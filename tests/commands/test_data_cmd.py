"""``ltvsync ltv``, ``customer show``, ``cohorts`` and ``annotate`` through the real Typer app,
on a store filled with raw identities and facts and run through the real compute stage (identity
resolution, LTV, then the tag and cohort hooks)."""

from __future__ import annotations

import csv
import os
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ltvsync.assemble import build_cycle
from ltvsync.cli import app
from ltvsync.commands import common
from ltvsync.config.settings import Settings, StoreSettings
from ltvsync.core.pipeline import CycleOptions, run_cycle
from ltvsync.core.store import Store

AS_OF = datetime(2026, 5, 20, 12, 0, tzinfo=UTC)
N = 80


@pytest.fixture(autouse=True)
def clean_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("LTVSYNC_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    # Wide enough that Rich does not truncate the cells the tests look for.
    monkeypatch.setattr(common.console, "width", 240)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A config pointing at a SQLite store that has been synced (compute stage) once."""
    url = f"sqlite:///{tmp_path / 'ltv.db'}"
    path = tmp_path / "ltvsync.toml"
    path.write_text(f'[store]\nurl = "{url}"\n', encoding="utf-8")
    store = Store.open(url)
    try:
        _fill(store)
        settings = Settings(store=StoreSettings(url=url))
        cycle = build_cycle(settings, store, with_sources=False, with_targets=False)
        report = run_cycle(cycle, options=CycleOptions(stages=("compute",), as_of=AS_OF), lock=False)
        assert report.status == "ok", report.errors
        assert report.tags["counts"] and report.cohorts["customers"] == N
    finally:
        store.close()
    return path


def _fill(store: Store) -> None:
    rng = random.Random(4)
    identities: list[dict[str, Any]] = []
    purchases: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for i in range(N):
        start = AS_OF - timedelta(days=rng.uniform(1, 300))
        email = f"person{i}@example.com"
        for source in ("salesforce", "mixpanel"):
            identities.append(
                {
                    "source": source,
                    "source_id": f"{source}-{i}",
                    "email": email,
                    "name": f"P {i}",
                    "created_at": start,
                    "updated_at": start,
                    "attributes": None,
                }
            )
        for j in range(1 + i % 4):
            at = start + timedelta(days=j * rng.uniform(5, 40))
            if at >= AS_OF:
                break
            amount = Decimal(rng.randint(2000, 20000)) / 100
            purchases.append(
                {
                    "source": "salesforce",
                    "source_id": f"o{i}-{j}",
                    "customer_source_id": f"salesforce-{i}",
                    "customer_email": None,
                    "amount": amount,
                    "currency": "USD",
                    "amount_base": amount,
                    "purchased_at": at,
                    "updated_at": at,
                }
            )
        for j in range(i % 6):
            at = AS_OF - timedelta(days=1 + j * 3)
            kind = "referral" if (i % 10 == 0 and j == 0) else "login"
            events.append(
                {
                    "source": "mixpanel",
                    "source_id": f"ev{i}-{j}",
                    "customer_source_id": f"mixpanel-{i}",
                    "kind": kind,
                    "name": kind,
                    "occurred_at": at,
                    "properties": None,
                    "referred": None,
                }
            )
    with store.transaction() as conn:
        store.upsert_many(conn, "identity", identities, ("source", "source_id"))
        store.upsert_many(conn, "purchase", purchases, ("source", "source_id"))
        store.upsert_many(conn, "event", events, ("source", "source_id"))


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def test_ltv_shows_model_and_deciles(config: Path) -> None:
    result = invoke("ltv", "--config", str(config))
    assert result.exit_code == 0, result.output
    assert "LTV model" in result.output and "mean weight on priors" in result.output
    assert "p10" in result.output and "p100" in result.output
    assert f"({N} customers)" in result.output


def test_customer_show_lists_tags_with_reasons(config: Path) -> None:
    # person10 referred someone (a referral event): tagged referrer, with the count as the reason.
    result = invoke("customer", "show", "PERSON10@example.com", "--config", str(config))
    assert result.exit_code == 0, result.output
    out = result.output
    assert "person10@example.com" in out and "Metrics" in out and "weight on priors" in out
    assert "referrer" in out and "referrals_sent=1.00" in out and "enter" in out
    missing = invoke("customer", "show", "nobody@example.com", "--config", str(config))
    assert missing.exit_code == 1 and "no customer with email 'nobody@example.com'" in missing.output


def test_cohorts_print_and_csv(config: Path, tmp_path: Path) -> None:
    out_csv = tmp_path / "cohorts.csv"
    result = invoke("cohorts", "--config", str(config), "--csv", str(out_csv))
    assert result.exit_code == 0, result.output
    assert "Cohorts by start month" in result.output and "2026-05" in result.output
    with out_csv.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    sizes = {r["cohort"]: int(r["customers"]) for r in rows}
    assert sum(sizes.values()) == N
    # Period 0 of each cohort is present; retention is a share, revenue never decreases.
    by_cohort: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_cohort.setdefault(r["cohort"], []).append(r)
    for cohort_rows in by_cohort.values():
        assert [int(r["period"]) for r in cohort_rows] == list(range(len(cohort_rows)))
        assert all(0.0 <= float(r["retention"]) <= 1.0 for r in cohort_rows)
        revenue = [float(r["revenue_per_customer"]) for r in cohort_rows]
        assert revenue == sorted(revenue) and revenue[0] > 0
    weekly = invoke("cohorts", "--config", str(config), "--period", "week")
    assert weekly.exit_code == 0 and "Cohorts by start week" in weekly.output


def test_annotate_and_compare_around(config: Path) -> None:
    bad = invoke("annotate", "price increase", "--date", "2026-13-01", "--config", str(config))
    assert bad.exit_code == 2 and "YYYY-MM-DD" in bad.output
    ok = invoke(
        "annotate", "price increase", "--date", "2026-03-01", "--note", "+10%", "--config", str(config)
    )
    assert ok.exit_code == 0, ok.output
    again = invoke("annotate", "price increase", "--date", "2026-03-02", "--config", str(config))
    assert again.exit_code == 1 and "already exists" in again.output
    result = invoke("cohorts", "--config", str(config), "--around", "price increase")
    assert result.exit_code == 0, result.output
    assert "Before vs after 'price increase'" in result.output
    assert "predicted LTV" in result.output and "95% interval" in result.output
    unknown = invoke("cohorts", "--config", str(config), "--around", "nope")
    assert unknown.exit_code == 1 and "known: price increase" in unknown.output


def test_commands_on_an_empty_store_say_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "empty.toml"
    path.write_text(f'[store]\nurl = "sqlite:///{tmp_path / "e.db"}"\n', encoding="utf-8")
    for args in (("ltv",), ("cohorts",)):
        result = invoke(*args, "--config", str(path))
        assert result.exit_code == 1 and "ltvsync sync" in result.output
