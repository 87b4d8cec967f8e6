"""Helpers shared by the CLI command modules: the ``--config`` option, loading settings or exiting
with a readable message, and the Rich consoles.

Relies on Typer's ``Annotated`` options (https://typer.tiangolo.com/tutorial/options/) and Rich
consoles (https://rich.readthedocs.io/en/stable/console.html).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from ltvsync.config.loader import LoadedSettings, load
from ltvsync.config.settings import Settings
from ltvsync.core.errors import ConfigError

# Exit status for a configuration the user must fix (the same as a command-line usage error).
EXIT_CONFIG = 2

console = Console()
# Errors go to stderr so `--json` output on stdout stays parseable.  soft_wrap keeps long
# messages (env var names, dotted keys) on one line instead of wrapping mid-token.
err_console = Console(stderr=True, soft_wrap=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Configuration file (default: $LTVSYNC_CONFIG, else ./ltvsync.toml if present).",
        dir_okay=False,
        show_default=False,
    ),
]


def load_or_exit(path: Path | str | None) -> Settings:
    """The validated settings, or print what is wrong and exit with status 2."""
    return load_with_sources_or_exit(path).settings


def load_with_sources_or_exit(path: Path | str | None) -> LoadedSettings:
    """Like ``load_or_exit`` but also returns which file was read and where each value came from."""
    try:
        return load(path)
    except ConfigError as exc:
        fail(str(exc))


def fail(message: str, code: int = EXIT_CONFIG) -> NoReturn:
    """Print ``message`` as an error (no Rich markup interpretation) and exit with ``code``."""
    err_console.print(Text("Error: ", style="bold red") + Text(message))
    raise typer.Exit(code)
