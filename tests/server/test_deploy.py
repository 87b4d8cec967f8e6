"""deploy/ stays consistent with the code: the unit and the image run commands that exist and give
the daemon more time to stop than it takes to wait for a cycle."""

from __future__ import annotations

import configparser
import re
import shlex
from pathlib import Path

from typer.testing import CliRunner

from ltvsync.cli import app
from ltvsync.commands.serve_cmd import SHUTDOWN_TIMEOUT_SECONDS
from ltvsync.config.settings import ServerSettings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((DEPLOY / "ltvsync.service").read_text())
    return parser


def test_systemd_unit() -> None:
    service = _unit()["Service"]
    assert service["Type"] == "simple"
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) > SHUTDOWN_TIMEOUT_SECONDS
    argv = shlex.split(service["ExecStart"])
    assert argv[0].endswith("/ltvsync") and argv[1:] == ["serve", "--config", "/etc/ltvsync/ltvsync.toml"]
    assert CliRunner().invoke(app, [*argv[1:2], "--help"]).exit_code == 0


def test_dockerfile() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert re.search(r"^USER ltvsync$", text, re.M)
    assert re.search(rf"^EXPOSE {ServerSettings().port}$", text, re.M)
    assert f"127.0.0.1:{ServerSettings().port}/healthz" in text
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
    assert cmd is not None and cmd.group(1) == '["ltvsync", "serve", "--config", "/etc/ltvsync/ltvsync.toml"]'
    # The image installs the package from the copied source tree.
    assert "pip install ." in text
