"""The ``ltvsync`` command: assembles the command groups, holds no business logic.

Each group lives in its own module under ``ltvsync/commands/`` and exposes ``register(app)``.
"""

from __future__ import annotations

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

for module in (config_cmd, db_cmd, sync_cmd, push_cmd, data_cmd, sandbox_cmd, serve_cmd, demo_cmd):
    module.register(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
