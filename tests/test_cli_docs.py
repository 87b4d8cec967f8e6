"""Every registered CLI command is documented (sqlite-utils style).

The command tree is read from the assembled app when the tests are collected, so commands other
modules add later are covered without editing this file.  Typer 0.29 ships its own copy of Click,
so groups and options are recognised by their attributes rather than by ``click`` classes.
"""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from ltvsync.cli import app


def command_paths(command: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every command and group below ``command``, with the words that invoke it."""
    found = [(path, command)]
    subcommands = getattr(command, "commands", None)
    if isinstance(subcommands, dict):
        for name, sub in sorted(subcommands.items()):
            found.extend(command_paths(sub, (*path, name)))
    return found


COMMANDS = command_paths(typer.main.get_command(app))
IDS = [" ".join(path) or "ltvsync" for path, _ in COMMANDS]


def test_the_tree_includes_the_config_commands() -> None:
    # Guards the walk itself: if it found nothing, the parametrized tests below would be vacuous.
    paths = {path for path, _ in COMMANDS}
    assert {("init",), ("config",), ("config", "check")} <= paths


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=IDS)
def test_command_has_help(path: tuple[str, ...], command: Any) -> None:
    help_text = (command.help or "").strip()
    assert help_text, f"`ltvsync {' '.join(path)}` has no help text (add a docstring)"
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    assert help_text.split()[0] in result.output


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=IDS)
def test_every_option_is_described(path: tuple[str, ...], command: Any) -> None:
    undocumented = [
        param.name
        for param in command.params
        if param.param_type_name == "option" and param.name != "help" and not (param.help or "").strip()
    ]
    assert not undocumented, f"`ltvsync {' '.join(path)}` options without help: {undocumented}"
