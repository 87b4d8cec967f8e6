"""Rich rendering of a sync run report (shared by ``sync``, ``push`` and ``demo``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def print_report(console: Console, report: Mapping[str, Any], *, changes: bool = False) -> None:
    """Streams, identities, LTV model, tags, destinations and errors of one run."""
    console.print(
        f"[bold]Run {report.get('run_id')}[/] ({report.get('trigger')}): "
        f"[{'green' if report.get('status') == 'ok' else 'yellow'}]{report.get('status')}[/] "
        f"in {_fmt(report.get('seconds'))} s"
    )
    streams = report.get("streams") or []
    if streams:
        # Compact columns: the table must fit an 80-column terminal without truncating names.
        table = Table(title="Pull", title_justify="left")
        for col in ("stream", "status", "records", "changed", "rejected", "calls", "s"):
            table.add_column(
                col, justify="left" if col in ("stream", "status") else "right", no_wrap=col == "stream"
            )
        for s in streams:
            table.add_row(
                f"{s['source']}.{s['stream']}",
                s["status"],
                _fmt(s["records"]),
                _fmt(s["changed"]),
                _fmt(s["rejections"]),
                _fmt(s["api_calls"]),
                _fmt(s["seconds"], 1),
            )
        console.print(table)
        for s in streams:
            if s.get("error"):
                console.print(f"  [red]{s['source']}.{s['stream']}[/]: {s['error']}")
    ident = report.get("identities") or {}
    if ident:
        console.print(
            "Identities: "
            + ", ".join(f"{k} {_fmt(v)}" for k, v in ident.items() if isinstance(v, int | float))
        )
    comp = report.get("compute") or {}
    if comp:
        table = Table(title="LTV", title_justify="left")
        table.add_column("figure")
        table.add_column("value", justify="right")
        for key in (
            "customers",
            "purchasers",
            "model",
            "fallback_reason",
            "ltv_simple_mean",
            "ltv_predicted_mean",
            "prior_share_mean",
            "fit_seconds",
        ):
            if comp.get(key) is not None:
                table.add_row(key, _fmt(comp[key], 3))
        for key, value in (comp.get("parameters") or {}).items():
            table.add_row(f"param {key}", _fmt(value, 4))
        console.print(table)
    tags = report.get("tags") or {}
    counts = tags.get("counts") if isinstance(tags, dict) else None
    if counts:
        table = Table(title="Tags", title_justify="left")
        table.add_column("tag")
        table.add_column("customers", justify="right")
        table.add_column("entered", justify="right")
        table.add_column("left", justify="right")
        for name, n in counts.items():
            table.add_row(
                name,
                _fmt(n),
                _fmt((tags.get("entered") or {}).get(name, 0)),
                _fmt((tags.get("left") or {}).get(name, 0)),
            )
        console.print(table)
    dests = report.get("destinations") or []
    if dests:
        table = Table(title="Push (customers)", title_justify="left")
        for col in (
            "destination",
            "customers",
            "same",
            "written",
            "failed",
            "edits",
            "waiting",
            "calls",
        ):
            table.add_column(col, justify="left" if col == "destination" else "right", no_wrap=True)
        for d in dests:
            name = d["destination"] + (" (dry run)" if d.get("dry_run") else "")
            table.add_row(
                name,
                _fmt(d["customers"]),
                _fmt(d["unchanged"]),
                _fmt(d["ok"]),
                _fmt(d["failed"]),
                _fmt(d["skipped_edits"]),
                _fmt(d["deferred"]),
                _fmt(d["api_calls"]),
            )
        console.print(table)
        for d in dests:
            if d.get("error"):
                console.print(f"  [red]{d['destination']}[/]: {d['error']}")
            for rej in (d.get("rejections") or [])[:20]:
                console.print(
                    f"  [yellow]{d['destination']} rejected[/] {rej['customer']}: "
                    f"{rej['status_code']} {rej['message']}"
                )
            for edit in (d.get("edits") or [])[:20]:
                console.print(
                    f"  [yellow]{d['destination']} edited by someone else[/] {edit['customer']}: "
                    f"{', '.join(edit['fields'])} ({edit['policy']})"
                )
            if changes:
                print_changes(console, d)
    for error in report.get("errors") or []:
        console.print(f"[red]error:[/] {error}")


def print_changes(console: Console, dest: Mapping[str, Any]) -> None:
    """Field-by-field changes (contact, field, old → new) of one destination."""
    rows = dest.get("changes") or []
    table = Table(
        title=f"Changes for {dest['destination']} ({dest.get('changes_total', len(rows))} in all)",
        title_justify="left",
    )
    for col in ("customer", "target", "field", "old", "new"):
        table.add_column(col)
    for c in rows:
        table.add_row(c["customer"], c["target"], c["field"], _fmt(c["old"]), "→ " + _fmt(c["new"]))
    console.print(table)


@contextmanager
def live_progress(console: Console, enabled: bool) -> Iterator[Callable[[str, Any], None]]:
    """A progress callback for the pipeline: one line per stream and destination with a rate."""
    if not enabled:
        yield lambda stage, payload: None
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        tasks: dict[str, Any] = {}
        started: dict[str, float] = {}

        def update(stage: str, payload: Any) -> None:
            if stage == "pull":
                key = f"pull {payload.source}.{payload.stream}"
                started.setdefault(key, time.monotonic())
                rate = payload.records / max(time.monotonic() - started[key], 1e-3)
                detail = f"{payload.records:,} records, {payload.pages} pages, {rate:,.0f}/s"
            elif stage == "push":
                key = f"push {payload.destination}"
                detail = f"{payload.ok:,} ok, {payload.failed} failed, {payload.batches} batches"
            else:
                key = stage
                detail = ", ".join(
                    f"{k}={_fmt(v)}" for k, v in payload.items() if isinstance(v, int | float)
                )[:100]
            if key not in tasks:
                tasks[key] = progress.add_task(key, total=None, detail=detail)
            progress.update(tasks[key], detail=detail)

        yield update
