"""CLI commands over computed data: ``ltvsync ltv`` (the model and the LTV deciles),
``ltvsync customer show EMAIL`` (metrics, LTV breakdown, tags with reasons, history),
``ltvsync cohorts`` (the cohort table, ``--csv``, ``--around NAME``) and ``ltvsync annotate``.

Read-only except ``annotate``; the numbers come from ``ltvsync.core.cohorts`` and
``ltvsync.core.tags``.  Relies on Typer sub-apps (https://typer.tiangolo.com/tutorial/subcommands/)
and Rich tables (https://rich.readthedocs.io/en/stable/tables.html).
"""

from __future__ import annotations

import csv
import math
from datetime import UTC, date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.table import Table
from rich.text import Text
from sqlalchemy import Connection, func, select

from ltvsync.assemble import open_store
from ltvsync.commands.common import ConfigOption, console, fail, load_or_exit
from ltvsync.core.cohorts import (
    DEFAULT_AROUND_PERIODS,
    AnnotationError,
    CohortRow,
    Period,
    add_annotation,
    cohort_table,
    compare_around,
    get_annotation,
    read_cohort_data,
)
from ltvsync.core.errors import LtvsyncError
from ltvsync.core.models import TABLES
from ltvsync.core.store import Store
from ltvsync.core.tag_features import as_matrix
from ltvsync.core.tags import customer_history, customer_tag_reasons

# Exit status when the thing asked about does not exist (no such customer, no data yet).
EXIT_NOT_FOUND = 1
MAX_RETENTION_COLUMNS = 12
HISTORY_ROWS = 10
RUNS_SEARCHED = 50

customer_app = typer.Typer(help="Look at one customer.", no_args_is_help=True)


class PeriodChoice(StrEnum):
    month = "month"
    week = "week"


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _open(config: Path | None) -> Store:
    settings = load_or_exit(config)
    try:
        return open_store(settings)
    except LtvsyncError as exc:
        fail(str(exc), EXIT_NOT_FOUND)


def ltv(config: ConfigOption = None) -> None:
    """Show the current LTV model (parameters, diagnostics, share on priors) and the LTV deciles."""
    store = _open(config)
    try:
        reports = [r.report for r in store.list_runs(RUNS_SEARCHED) if r.report is not None]
        compute = next((dict(r["compute"]) for r in reports if r.get("compute")), None)
        with store.engine.connect() as conn:
            t = TABLES["customer_metrics"]
            rows = conn.execute(select(t.c.ltv_simple, t.c.ltv_predicted)).all()
    finally:
        store.close()
    if compute is None and not rows:
        fail("no LTV computed yet; run `ltvsync sync` first", EXIT_NOT_FOUND)
    if compute is not None:
        _print_model(compute)
    values = as_matrix(rows, 2)
    table = Table(title=f"LTV distribution ({len(rows)} customers)", title_justify="left")
    for col in ("decile", "simple LTV", "predicted LTV"):
        table.add_column(col, justify="right")
    for q in range(10, 101, 10):
        table.add_row(f"p{q}", *(_fmt(_quantile(values[:, i], q)) for i in (0, 1)))
    table.add_row("mean", *(_fmt(_mean(values[:, i])) for i in (0, 1)))
    console.print(table)


def _quantile(values: Any, q: float) -> float | None:
    finite = values[np.isfinite(values)]
    return float(np.percentile(finite, q)) if len(finite) else None


def _mean(values: Any) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else None


def _print_model(compute: dict[str, Any]) -> None:
    table = Table(title="LTV model", title_justify="left", show_header=False)
    table.add_column("key")
    table.add_column("value")
    table.add_row("model", str(compute.get("model")))
    table.add_row("model version", str(compute.get("model_version")))
    if compute.get("fallback_reason"):
        table.add_row("fallback", str(compute["fallback_reason"]))
    table.add_row("customers", _fmt(compute.get("customers")))
    table.add_row("purchasers", _fmt(compute.get("purchasers")))
    for name, value in sorted((compute.get("parameters") or {}).items()):
        table.add_row(f"parameter {name}", _fmt(value, 4))
    for name, value in sorted((compute.get("log_likelihood") or {}).items()):
        table.add_row(f"log-likelihood {name}", _fmt(value, 2))
    table.add_row("converged", _fmt(compute.get("converged")))
    share = compute.get("prior_share_mean")
    table.add_row("mean weight on priors", "-" if share is None else f"{100 * share:.1f}%")
    console.print(table)


@customer_app.command("show")
def customer_show(
    email: Annotated[str, typer.Argument(help="The customer's email (case-insensitive).")],
    config: ConfigOption = None,
) -> None:
    """Show one customer's metrics, LTV breakdown, tags with their reasons and recent tag history."""
    store = _open(config)
    try:
        with store.engine.connect() as conn:
            found = _customer(conn, email)
            if found is None:
                fail(f"no customer with email {email.strip()!r}", EXIT_NOT_FOUND)
            cid = int(found["id"])
            metrics = _metrics(conn, cid)
            reasons = customer_tag_reasons(conn, cid)
            history = customer_history(conn, cid, HISTORY_ROWS)
    finally:
        store.close()
    console.print(
        Text(f"{found['email']}", style="bold") + Text(f"  (customer {cid}, {found['name'] or 'no name'})")
    )
    if metrics is None:
        console.print("No metrics yet (not counted as a customer, or compute has not run).")
        return
    table = Table(title="Metrics", title_justify="left", show_header=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("orders", "revenue", "aov", "frequency", "tenure_days", "recency_days", "days_since_start"):
        table.add_row(key, _fmt(metrics[key]))
    table.add_row("p_alive", _fmt(metrics["p_alive"], 3))
    table.add_row("expected_purchases", _fmt(metrics["expected_purchases"]))
    table.add_row("as of", str(metrics["as_of"]))
    console.print(table)
    ltv_table = Table(title="LTV", title_justify="left", show_header=False)
    ltv_table.add_column("part")
    ltv_table.add_column("value", justify="right")
    ltv_table.add_row("simple", _fmt(metrics["ltv_simple"]))
    ltv_table.add_row("predicted", _fmt(metrics["ltv_predicted"]))
    weight = metrics["prior_weight"]
    ltv_table.add_row("weight on priors", "-" if weight is None else f"{100 * weight:.1f}%")
    ltv_table.add_row("model version", str(metrics["model_version"]))
    console.print(ltv_table)
    tags = Table(title="Tags", title_justify="left")
    for col in ("tag", "since", "rule", "values"):
        tags.add_column(col)
    for r in reasons:
        tags.add_row(r.tag, str(r.since), r.rule, _values_text(r.values))
    console.print(tags if reasons else "No tags.")
    if history:
        hist = Table(title="Recent tag history", title_justify="left")
        for col in ("at", "tag", "action", "values", "model"):
            hist.add_column(col)
        for h in history:
            hist.add_row(str(h.at), h.tag, h.action, _values_text(h.values), h.model_version or "-")
        console.print(hist)


def _values_text(values: Any) -> str:
    if isinstance(values, dict) and isinstance(values.get("values"), dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(values["values"].items()))
    return "" if values is None else str(values)


def _customer(conn: Connection, email: str) -> dict[str, Any] | None:
    t = TABLES["customer"]
    row = (
        conn.execute(
            select(t.c.id, t.c.email, t.c.name)
            .where(func.lower(t.c.email) == email.strip().lower(), t.c.merged_into.is_(None))
            .limit(1)
        )
        .mappings()
        .first()
    )
    return dict(row) if row is not None else None


def _metrics(conn: Connection, cid: int) -> dict[str, Any] | None:
    t = TABLES["customer_metrics"]
    row = conn.execute(select(t).where(t.c.customer_id == cid)).mappings().first()
    return dict(row) if row is not None else None


def cohorts(
    config: ConfigOption = None,
    period: Annotated[
        PeriodChoice, typer.Option("--period", help="Group by start month or week.")
    ] = PeriodChoice.month,
    csv_path: Annotated[
        Path | None,
        typer.Option(
            "--csv", help="Also write the table (one row per cohort and period) to this CSV.", dir_okay=False
        ),
    ] = None,
    around: Annotated[
        str | None,
        typer.Option(
            "--around", help="Compare cohorts before vs after this annotation (see `ltvsync annotate`)."
        ),
    ] = None,
    periods: Annotated[
        int, typer.Option("--periods", min=1, help="With --around: how many periods on each side to compare.")
    ] = DEFAULT_AROUND_PERIODS,
) -> None:
    """Show the cohort table: size, retention by period since start, revenue per customer, average LTV."""
    store = _open(config)
    kind: Period = "week" if period == PeriodChoice.week else "month"
    try:
        with store.engine.connect() as conn:
            t = TABLES["customer_metrics"]
            as_of = conn.execute(select(func.max(t.c.as_of))).scalar()
            if as_of is None:
                fail("no metrics yet; run `ltvsync sync` first", EXIT_NOT_FOUND)
            data = read_cohort_data(conn, store.dialect, kind, as_of)
            annotation = None
            if around is not None:
                try:
                    annotation = get_annotation(conn, around)
                except AnnotationError as exc:
                    fail(str(exc), EXIT_NOT_FOUND)
    finally:
        store.close()
    rows = cohort_table(data)
    _print_cohorts(rows, kind, as_of)
    if csv_path is not None:
        try:
            write_cohort_csv(rows, csv_path)
        except OSError as exc:
            fail(f"cannot write {csv_path}: {exc.strerror or exc}", EXIT_NOT_FOUND)
        console.print(f"Wrote {csv_path}.")
    if annotation is not None:
        diffs = compare_around(data, annotation.at, periods)
        title = f"Before vs after {annotation.name!r} ({annotation.at.date()}, {periods} {kind}s each side)"
        table = Table(title=title, title_justify="left")
        for col in (
            "metric",
            "n before",
            "n after",
            "before",
            "after",
            "difference",
            "std. error",
            "95% interval",
        ):
            table.add_column(col, justify="right" if col != "metric" else "left")
        for d in diffs:
            interval = d.interval
            table.add_row(
                d.metric,
                str(d.before_n),
                str(d.after_n),
                _fmt(d.before, 3),
                _fmt(d.after, 3),
                _fmt(d.difference, 3),
                _fmt(d.std_error, 3),
                "-" if interval is None else f"[{interval[0]:,.3f}, {interval[1]:,.3f}]",
            )
        console.print(table)


def _print_cohorts(rows: list[CohortRow], kind: str, as_of: datetime) -> None:
    if not rows:
        console.print("No customers yet.")
        return
    width = min(MAX_RETENTION_COLUMNS, max(len(r.retention) for r in rows))
    table = Table(title=f"Cohorts by start {kind} (as of {as_of:%Y-%m-%d %H:%M} UTC)", title_justify="left")
    for col in ("cohort", "customers", "simple LTV", "predicted LTV", "revenue/cust."):
        table.add_column(col, justify="right")
    for k in range(width):
        table.add_column(f"{kind[0]}{k}", justify="right")
    for r in rows:
        retention = [f"{100 * v:.0f}%" for v in r.retention[:width]] + [""] * (
            width - len(r.retention[:width])
        )
        table.add_row(
            r.label,
            str(r.customers),
            _fmt(r.ltv_simple_avg),
            _fmt(r.ltv_predicted_avg),
            _fmt(r.revenue_per_customer[-1] if r.revenue_per_customer else None),
            *retention,
        )
    console.print(table)


CSV_COLUMNS = (
    "cohort",
    "period_start",
    "customers",
    "ltv_simple_avg",
    "ltv_predicted_avg",
    "period",
    "retention",
    "revenue_per_customer",
)


def write_cohort_csv(rows: list[CohortRow], path: Path) -> None:
    """One line per cohort and period since start (long format, easy to pivot)."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for r in rows:
            for k, (ret, rev) in enumerate(zip(r.retention, r.revenue_per_customer, strict=True)):
                writer.writerow(
                    [
                        r.label,
                        r.period_start.isoformat(),
                        r.customers,
                        "" if r.ltv_simple_avg is None else r.ltv_simple_avg,
                        "" if r.ltv_predicted_avg is None else r.ltv_predicted_avg,
                        k,
                        ret,
                        rev,
                    ]
                )


def annotate(
    name: Annotated[str, typer.Argument(help='Name of the business event, e.g. "price increase".')],
    on: Annotated[str, typer.Option("--date", help="When it happened, YYYY-MM-DD (UTC).")],
    note: Annotated[str | None, typer.Option("--note", help="Free text kept with the annotation.")] = None,
    config: ConfigOption = None,
) -> None:
    """Record a business event so `ltvsync cohorts --around NAME` can compare cohorts before and after it."""
    try:
        day = date.fromisoformat(on)
    except ValueError:
        fail(f"--date must be YYYY-MM-DD, got {on!r}")
    if not name.strip():
        fail("the annotation needs a name")
    at = datetime(day.year, day.month, day.day, tzinfo=UTC)
    store = _open(config)
    try:
        with store.transaction() as conn:
            add_annotation(conn, name.strip(), at, note, datetime.now(UTC))
    except AnnotationError as exc:
        fail(str(exc), EXIT_NOT_FOUND)
    finally:
        store.close()
    console.print(f"Recorded {name.strip()!r} on {day.isoformat()}.")


def register(app: typer.Typer) -> None:
    """Attach this module's commands to app."""
    app.command("ltv")(ltv)
    app.add_typer(customer_app, name="customer")
    app.command("cohorts")(cohorts)
    app.command("annotate")(annotate)
