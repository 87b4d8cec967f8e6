"""CLI commands: ``ltvsync init`` (write the annotated example configuration) and
``ltvsync config check`` (validate and show the effective configuration, secrets masked).

Relies on Typer sub-apps (https://typer.tiangolo.com/tutorial/subcommands/) and Rich tables
(https://rich.readthedocs.io/en/stable/tables.html).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.table import Table
from rich.text import Text

from ltvsync.commands.common import ConfigOption, console, fail, load_with_sources_or_exit
from ltvsync.config.loader import LoadedSettings
from ltvsync.config.settings import Settings, masked_dump

# Refusing to overwrite is an operational refusal, not a configuration error (that is 2).
EXIT_REFUSED = 1
EXAMPLE_RESOURCE = "example.toml"

config_app = typer.Typer(help="Inspect and validate the configuration.", no_args_is_help=True)


def example_config() -> str:
    """The annotated example shipped with the package (``ltvsync/config/example.toml``)."""
    return resources.files("ltvsync.config").joinpath(EXAMPLE_RESOURCE).read_text(encoding="utf-8")


def init(
    path: Annotated[
        Path, typer.Option("--path", "-p", help="Where to write the file.", dir_okay=False)
    ] = Path("ltvsync.toml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write an annotated example configuration (every key, its default, the env var for each secret)."""
    if path.is_dir():
        fail(f"{path} is a directory; pass a file path with --path", EXIT_REFUSED)
    if path.exists() and not force:
        fail(f"{path} already exists; use --force to overwrite it", EXIT_REFUSED)
    try:
        path.write_text(example_config(), encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or exc}", EXIT_REFUSED)
    console.print(
        Text(f"Wrote {path}."), Text("Next: enable sources, export secrets, run `ltvsync config check`.")
    )


@config_app.command("check")
def check(
    config: ConfigOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the effective configuration as JSON.")
    ] = False,
) -> None:
    """Validate the configuration and print it with secrets masked; exit 2 if it is invalid."""
    loaded = load_with_sources_or_exit(config)
    masked = masked_dump(loaded.settings)
    if as_json:
        document = {
            "valid": True,
            "config_file": str(loaded.path) if loaded.path else None,
            "settings": masked,
        }
        typer.echo(json.dumps(document, indent=2))
        return
    _print_tables(loaded, masked)


def _print_tables(loaded: LoadedSettings, masked: dict[str, Any]) -> None:
    file_note = str(loaded.path) if loaded.path else "no file (defaults + environment)"
    console.print(Text("Configuration is valid", style="bold green"), Text(f"— read from {file_note}"))
    console.print(Text(_summary(loaded.settings)))
    for section, values in masked.items():
        table = Table(
            title=Text(f"[{section}]", style="bold"), title_justify="left", show_lines=False, expand=False
        )
        table.add_column("key", no_wrap=True)
        table.add_column("value", overflow="fold")
        table.add_column("from", style="dim", no_wrap=True)
        for key, value in _flatten(getattr(loaded.settings, section), values):
            table.add_row(key, Text(_render(value)), loaded.source_of((section, *key.split("."))))
        console.print(table)


def _summary(settings: Settings) -> str:
    """Which sources are pulled and where results go: the first thing to check in a config."""
    sources = [name for name in ("salesforce", "mixpanel", "zendesk") if getattr(settings, name).enabled]
    destinations = ["salesforce"] if settings.salesforce.enabled and settings.salesforce.push_enabled else []
    destinations += ["airtable"] if settings.airtable.enabled else []
    line = f"Sources: {', '.join(sources) or 'none'} · Destinations: {', '.join(destinations) or 'none'}"
    if not sources:
        line += " (nothing to pull: enable a source, or try `ltvsync demo`)"
    return line


def _flatten(model: BaseModel, values: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested sections (``ltv.priors``) become dotted rows; mappings and lists stay whole."""
    rows: list[tuple[str, Any]] = []
    for key, value in values.items():
        child = getattr(model, key)
        if isinstance(child, BaseModel):
            rows.extend(_flatten(child, value, f"{prefix}{key}."))
        else:
            rows.append((prefix + key, value))
    return rows


def _render(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def register(app: typer.Typer) -> None:
    """Attach this module's commands to app."""
    app.command("init")(init)
    app.add_typer(config_app, name="config")
