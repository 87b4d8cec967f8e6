"""``ltvsync serve`` as a real process (SQLite store, no sources) driven by ``ltvsync sync-now``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from typer.testing import CliRunner

from ltvsync.cli import app
from ltvsync.commands.serve_cmd import daemon_url
from ltvsync.config.settings import ServerSettings

TOKEN = "serve-test-token-0123456789"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Daemon:
    proc: subprocess.Popen[str]
    url: str
    env: dict[str, str]
    log_path: Path


@pytest.fixture
def daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Daemon]:
    monkeypatch.chdir(tmp_path)  # no ./ltvsync.toml is picked up
    port = _free_port()
    env = {
        "LTVSYNC_STORE__URL": f"sqlite:///{tmp_path / 'ltv.db'}",
        "LTVSYNC_SERVER__TOKEN": TOKEN,
        "LTVSYNC_SERVER__PORT": str(port),
        "LTVSYNC_SERVER__LOG_FORMAT": "json",
        "LTVSYNC_SCHEDULE__CRON": "0 0 1 1 *",  # scheduled, but never during the test
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("LTVSYNC_CONFIG", raising=False)
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ltvsync.cli", "serve"], stdout=log, stderr=subprocess.STDOUT, text=True
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, log_path.read_text()
        try:
            if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, "daemon did not come up"
        time.sleep(0.1)
    yield Daemon(proc, url, env, log_path)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_sync_now_runs_a_cycle_and_sigterm_stops_gracefully(daemon: Daemon) -> None:
    runner = CliRunner()
    followed = runner.invoke(app, ["sync-now"])
    assert followed.exit_code == 0, followed.output
    assert "Run #1 started" in followed.output
    assert "Run #1 finished: ok" in followed.output

    no_wait = runner.invoke(app, ["sync-now", "--no-wait"])
    assert no_wait.exit_code == 0 and no_wait.output.strip() == "2"

    refused = runner.invoke(app, ["sync-now", "--token", "wrong"])
    assert refused.exit_code == 1 and "refused the token" in refused.output

    runs = requests.get(
        f"{daemon.url}/api/runs", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5
    ).json()
    assert [r["trigger"] for r in runs][-1] == "manual" and len(runs) == 2

    started = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=30) == 0
    assert time.monotonic() - started < 15

    lines = daemon.log_path.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    messages = [r["message"] for r in records]
    assert any("signal 15" in m for m in messages)
    assert any(m.startswith("ltvsync daemon stopped") and "still running" not in m for m in messages)
    assert all(r["ts"].endswith("Z") for r in records)
    assert TOKEN not in daemon.log_path.read_text()


def test_sync_now_without_a_daemon_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LTVSYNC_SERVER__TOKEN", TOKEN)
    result = CliRunner().invoke(app, ["sync-now", "--url", f"http://127.0.0.1:{_free_port()}"])
    assert result.exit_code == 1
    assert "no ltvsync daemon answers" in result.output and "ltvsync sync" in result.output


def test_serve_without_a_token_refuses_to_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LTVSYNC_SERVER__TOKEN", raising=False)
    monkeypatch.setenv("LTVSYNC_STORE__URL", f"sqlite:///{tmp_path / 'ltv.db'}")
    result = CliRunner().invoke(app, ["serve", "--port", str(_free_port())])
    assert result.exit_code == 2
    assert "server.token" in result.output


def test_daemon_url_turns_wildcards_into_loopback() -> None:
    assert daemon_url(ServerSettings(host="0.0.0.0", port=9000)) == "http://127.0.0.1:9000"
    assert daemon_url(ServerSettings(host="::", port=9000)) == "http://[::1]:9000"
    assert daemon_url(ServerSettings(host="10.1.2.3", port=80)) == "http://10.1.2.3:80"


def test_every_command_has_help() -> None:
    runner = CliRunner()
    for command in ("serve", "sync-now"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output
    assert os.environ.get("LTVSYNC_SERVER__TOKEN") != TOKEN  # fixtures did not leak env
