"""CLI commands: ``ltvsync push`` and ``ltvsync salesforce fields``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ltvsync.commands.common import ConfigOption, console, fail, load_or_exit
from ltvsync.commands.sync_cmd import run_and_print
from ltvsync.core.errors import LtvsyncError


def register(app: typer.Typer) -> None:
    """Attach this module's commands to ``app``."""

    @app.command("push")
    def push(
        config: ConfigOption = None,
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Print what would change, field by field; write nothing.")
        ] = False,
        retry_failed: Annotated[
            bool,
            typer.Option("--retry-failed", help="Retry rejected records now instead of after their backoff."),
        ] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the run report as JSON.")] = False,
    ) -> None:
        """Push current LTV fields and tags to the destinations (only what changed)."""
        run_and_print(config, ("push",), dry_run=dry_run, retry_failed=retry_failed, as_json=as_json)

    salesforce = typer.Typer(help="Salesforce helpers.", no_args_is_help=True)
    app.add_typer(salesforce, name="salesforce")

    @salesforce.command("fields")
    def fields(
        config: ConfigOption = None,
        check: Annotated[
            bool, typer.Option("--check", help="Also describe the object and report what is missing.")
        ] = False,
    ) -> None:
        """Print the custom fields to create on the push object for the configured mapping."""
        from ltvsync.connectors.salesforce_push import SalesforceDestination

        settings = load_or_exit(config)
        try:
            dest = SalesforceDestination(settings.salesforce)
            table = Table(
                title=f"Fields to create on {settings.salesforce.push_object}", title_justify="left"
            )
            for col in ("API name", "type", "description"):
                table.add_column(col)
            for api_name, kind, description in dest.required_fields():
                table.add_row(api_name, kind, description)
            console.print(table)
            if check:
                dest.check()
                console.print("[green]All mapped fields exist with compatible types.[/]")
        except LtvsyncError as exc:
            fail(str(exc))
