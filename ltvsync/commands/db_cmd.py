"""CLI commands: ``ltvsync db upgrade`` (migrate the store to the latest schema) and
``ltvsync db current`` (show the store's schema revision).

The store URL comes from ``--url`` if given, else from the configuration (``[store] url``).
Relies on Typer sub-apps (https://typer.tiangolo.com/tutorial/subcommands/); the migrations are
Alembic's, shipped in ``ltvsync/core/migrations``.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.text import Text

from ltvsync.commands.common import ConfigOption, console, fail, load_or_exit
from ltvsync.core.errors import StoreError
from ltvsync.core.store import Store, safe_url

# The store could not be opened or migrated (configuration problems exit with 2).
EXIT_STORE = 1

db_app = typer.Typer(help="Manage the store's schema.", no_args_is_help=True)

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="Store URL (sqlite:///path.db or postgresql://...); overrides the configuration.",
        show_default=False,
    ),
]


def _url(config: ConfigOption, url: str | None) -> str:
    return url if url else load_or_exit(config).store.url


@db_app.command("upgrade")
def upgrade(config: ConfigOption = None, url: UrlOption = None) -> None:
    """Apply pending schema migrations (safe to run repeatedly; also done on every start)."""
    target = _url(config, url)
    try:
        store = Store.open(target, upgrade=False)
        try:
            before = store.current_revision()
            store.upgrade()
            after = store.current_revision()
        finally:
            store.close()
    except StoreError as exc:
        fail(str(exc), EXIT_STORE)
    change = f"{before or 'empty'} → {after}" if before != after else f"already at {after}"
    console.print(Text(f"Store {safe_url(target)}: {change}"))


@db_app.command("current")
def current(config: ConfigOption = None, url: UrlOption = None) -> None:
    """Show the store's schema revision without changing anything."""
    target = _url(config, url)
    try:
        store = Store.open(target, upgrade=False)
        try:
            revision = store.current_revision()
        finally:
            store.close()
    except StoreError as exc:
        fail(str(exc), EXIT_STORE)
    console.print(Text(f"Store {safe_url(target)}: revision {revision or 'none (empty)'}"))


def register(app: typer.Typer) -> None:
    """Attach this module's commands to app."""
    app.add_typer(db_app, name="db")
