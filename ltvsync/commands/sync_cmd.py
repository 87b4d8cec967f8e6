"""CLI command: ``ltvsync sync`` — run one cycle inline (pull → compute → push)."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from typing import Annotated

import typer

from ltvsync.commands.common import ConfigOption, console, err_console, fail, load_or_exit
from ltvsync.commands.report_view import live_progress, print_report
from ltvsync.core.errors import LockHeldError, LtvsyncError, StoreError


class Stage(StrEnum):
    pull = "pull"
    compute = "compute"
    push = "push"


# Exit codes: 0 every stage fine; 3 the run finished but something failed (see the report).
EXIT_PARTIAL = 3
EXIT_LOCKED = 4


def run_and_print(
    config: ConfigOption,
    stages: tuple[str, ...],
    *,
    sources: tuple[str, ...] | None = None,
    full_refresh: bool = False,
    dry_run: bool = False,
    retry_failed: bool = False,
    as_json: bool = False,
) -> None:
    """Shared by ``sync`` and ``push``: build the cycle, run it, print the report, set the exit code."""
    from ltvsync.assemble import build_cycle
    from ltvsync.core.pipeline import CycleOptions, run_cycle

    settings = load_or_exit(config)
    try:
        cycle = build_cycle(settings)
    except StoreError as exc:
        fail(str(exc), code=1)
    except LtvsyncError as exc:
        fail(str(exc))
    options = CycleOptions(
        stages=stages, sources=sources, full_refresh=full_refresh, dry_run=dry_run, retry_failed=retry_failed
    )
    show_progress = not as_json and sys.stderr.isatty()
    try:
        with live_progress(err_console, show_progress) as progress:
            report = run_cycle(cycle, trigger="cli", options=options, progress=progress)
    except LockHeldError as exc:
        fail(str(exc), code=EXIT_LOCKED)
    finally:
        cycle.store.close()
    data = report.as_dict()
    if as_json:
        typer.echo(json.dumps(data, default=str))
    else:
        print_report(console, data, changes=dry_run)
        if not sources and not cycle.sources and "pull" in stages:
            console.print("[dim]No source is enabled: edit the configuration (`ltvsync init` writes one).[/]")
    if report.status not in ("ok",):
        raise typer.Exit(EXIT_PARTIAL)


def register(app: typer.Typer) -> None:
    """Attach this module's commands to ``app``."""

    @app.command("sync")
    def sync(
        config: ConfigOption = None,
        only: Annotated[
            list[Stage] | None,
            typer.Option("--only", help="Run only these stages (repeatable): pull, compute, push."),
        ] = None,
        source: Annotated[
            list[str] | None,
            typer.Option(
                "--source", help="Pull only these sources (repeatable): salesforce, mixpanel, zendesk."
            ),
        ] = None,
        full_refresh: Annotated[
            bool, typer.Option("--full-refresh", help="Ignore stored cursors and re-read every stream.")
        ] = False,
        dry_run: Annotated[
            bool,
            typer.Option(
                "--dry-run", help="Print what the push would change, field by field; write nothing."
            ),
        ] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the run report as JSON.")] = False,
    ) -> None:
        """Run one sync cycle now, in this process: pull, compute LTV and tags, push."""
        stages = tuple(s.value for s in only) if only else ("pull", "compute", "push")
        run_and_print(
            config,
            stages,
            sources=tuple(source) if source else None,
            full_refresh=full_refresh,
            dry_run=dry_run,
            as_json=as_json,
        )
