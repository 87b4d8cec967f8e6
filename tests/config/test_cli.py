"""Tests of ``ltvsync init`` and ``ltvsync config check`` through the real Typer app."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ltvsync.cli import app
from ltvsync.commands.config_cmd import example_config
from ltvsync.config.settings import SECRET_MASK

SECRET = "mp-secret-4f9c2a"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(autouse=True)
def clean_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts in an empty directory with no LTVSYNC_* variables from the outside."""
    for name in list(os.environ):
        if name.upper().startswith("LTVSYNC_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_broken_toml_exits_2_naming_the_line(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path / "bad.toml", "[store]\n\nbatch_size = = 3\n")
    result = runner.invoke(app, ["config", "check", "--config", str(path)])
    assert result.exit_code == 2
    assert "bad.toml" in result.stderr and "line 3" in result.stderr


def test_wrong_type_exits_2_naming_the_key(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path / "ltvsync.toml", '[store]\nbatch_size = "abc"\n')
    result = runner.invoke(app, ["config", "check"])
    assert result.exit_code == 2
    assert "store.batch_size" in result.stderr
    assert result.stdout == ""
    assert path.exists()


def test_unknown_key_exits_2_naming_it(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[schedule]\ninterval_minute = 5\n")
    result = runner.invoke(app, ["config", "check", "-c", str(path)])
    assert result.exit_code == 2
    assert "schedule.interval_minute" in result.stderr and "interval_minutes" in result.stderr


def test_missing_explicit_file_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["config", "check", "--config", str(tmp_path / "absent.toml")])
    assert result.exit_code == 2
    assert "absent.toml" in result.stderr


def test_enabled_mixpanel_without_secret_exits_2_naming_the_variable(
    runner: CliRunner, tmp_path: Path
) -> None:
    write(tmp_path / "ltvsync.toml", "[mixpanel]\nenabled = true\n")
    result = runner.invoke(app, ["config", "check"])
    assert result.exit_code == 2
    assert "LTVSYNC_MIXPANEL__API_SECRET" in result.stderr
    fixed = runner.invoke(app, ["config", "check"], env={"LTVSYNC_MIXPANEL__API_SECRET": SECRET})
    assert fixed.exit_code == 0, fixed.output


def test_environment_override_wins_over_file(runner: CliRunner, tmp_path: Path) -> None:
    write(tmp_path / "ltvsync.toml", '[store]\nbatch_size = 10\nurl = "sqlite:///from-file.db"\n')
    env = {"LTVSYNC_STORE__BATCH_SIZE": "250"}
    result = runner.invoke(app, ["config", "check", "--json"], env=env)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["valid"] is True
    assert document["config_file"] == "ltvsync.toml"
    assert document["settings"]["store"]["batch_size"] == 250
    assert document["settings"]["store"]["url"] == "sqlite:///from-file.db"


def test_ltvsync_config_variable_is_honoured(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path / "elsewhere.toml", "[server]\nport = 9100\n")
    result = runner.invoke(app, ["config", "check", "--json"], env={"LTVSYNC_CONFIG": str(path)})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["settings"]["server"]["port"] == 9100


@pytest.mark.parametrize("as_json", [False, True])
def test_secrets_never_appear_in_check_output(runner: CliRunner, tmp_path: Path, as_json: bool) -> None:
    file_secret = "zd-token-77e1b0"
    write(
        tmp_path / "ltvsync.toml",
        "[mixpanel]\nenabled = true\n"
        f'[zendesk]\nenabled = true\nsubdomain = "acme"\nemail = "a@acme.test"\napi_token = "{file_secret}"\n'
        '[store]\nurl = "postgresql+psycopg://app:pg-pass-31337@db/ltv"\n',
    )
    args = ["config", "check", *(["--json"] if as_json else [])]
    result = runner.invoke(app, args, env={"LTVSYNC_MIXPANEL__API_SECRET": SECRET, "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for secret in (SECRET, file_secret, "pg-pass-31337"):
        assert secret not in result.output
    assert SECRET_MASK in result.output
    if as_json:
        settings = json.loads(result.stdout)["settings"]
        assert settings["mixpanel"]["api_secret"] == SECRET_MASK
        assert settings["zendesk"]["api_token"] == SECRET_MASK
        assert settings["zendesk"]["oauth_token"] is None
    else:
        # The table says where the secret came from (the variable's name), never its value.
        assert "LTVSYNC_MIXPANEL__API_SECRET" in result.stdout


def test_check_without_any_file_uses_defaults(runner: CliRunner) -> None:
    result = runner.invoke(app, ["config", "check", "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["config_file"] is None
    assert document["settings"]["store"]["url"] == "sqlite:///ltvsync.db"


def test_init_then_check_passes(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["init"])
    assert result.exit_code == 0, result.output
    written = tmp_path / "ltvsync.toml"
    assert written.read_text(encoding="utf-8") == example_config()
    check = runner.invoke(app, ["config", "check"], env={"COLUMNS": "200"})
    assert check.exit_code == 0, check.output
    assert "Configuration is valid" in check.stdout
    assert "[store]" in check.stdout and "[server]" in check.stdout
    assert "Sources: none" in check.stdout


def test_check_summarises_enabled_sources_and_destinations(runner: CliRunner, tmp_path: Path) -> None:
    write(
        tmp_path / "ltvsync.toml",
        '[zendesk]\nenabled = true\nsubdomain = "acme"\n[airtable]\nbase_id = "app1"\n',
    )
    env = {
        "LTVSYNC_ZENDESK__OAUTH_TOKEN": "zd-oauth",
        "LTVSYNC_AIRTABLE__ENABLED": "true",
        "LTVSYNC_AIRTABLE__API_KEY": "pat-1",
        "COLUMNS": "200",
    }
    result = runner.invoke(app, ["config", "check"], env=env)
    assert result.exit_code == 0, result.output
    assert "Sources: zendesk · Destinations: airtable" in result.stdout


def test_init_refuses_to_overwrite_without_force(runner: CliRunner, tmp_path: Path) -> None:
    target = write(tmp_path / "mine.toml", "# my precious settings\n")
    refused = runner.invoke(app, ["init", "--path", str(target)])
    assert refused.exit_code == 1
    assert "--force" in refused.stderr
    assert target.read_text(encoding="utf-8") == "# my precious settings\n"
    forced = runner.invoke(app, ["init", "--path", str(target), "--force"])
    assert forced.exit_code == 0, forced.output
    assert target.read_text(encoding="utf-8") == example_config()


def test_init_into_a_missing_directory_fails_cleanly(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["init", "--path", str(tmp_path / "no" / "such" / "dir.toml")])
    assert result.exit_code == 1
    assert "cannot write" in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)
