"""The ``ltvsync`` command: assembles the command groups, holds no business logic.

Each group lives in its own module under ``ltvsync/commands/`` and exposes ``register(app)``.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from ltvsync.commands import (
    config_cmd,
    data_cmd,
    db_cmd,
    demo_cmd,
    push_cmd,
    sandbox_cmd,
    serve_cmd,
    sync_cmd,
)

app = typer.Typer(
    name="ltvsync",
    help="Customer-lifetime-value sync: pull sources, compute LTV and tags, push to CRMs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _logging(
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="Log more: -v retries and warnings, -vv debug.")
    ] = 0,
) -> None:
    """Customer-lifetime-value sync: pull sources, compute LTV and tags, push to CRMs."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # Retries are routine and every failure that outlives them is in the run report; show each
    # retry only when asked.
    logging.getLogger("ltvsync.core.retry").setLevel(logging.WARNING if verbose else logging.ERROR)


for module in (config_cmd, db_cmd, sync_cmd, push_cmd, data_cmd, sandbox_cmd, serve_cmd, demo_cmd):
    module.register(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
