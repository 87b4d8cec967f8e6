"""The sandbox runner and ``ltvsync sandbox serve``: settings and config point at live emulators."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from ltvsync.config.loader import load_settings
from ltvsync.sandbox.runner import Sandbox, to_toml
from ltvsync.sandbox.world import generate_world

AS_OF = datetime(2025, 6, 1, tzinfo=UTC)
STARTUP_TIMEOUT = 60


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(generate_world(300, seed=2, as_of=AS_OF)) as sb:
        yield sb


def test_settings_point_every_section_at_a_running_emulator(sandbox: Sandbox) -> None:
    settings = sandbox.settings()
    assert settings.mixpanel.enabled and settings.zendesk.enabled
    assert settings.mixpanel.export_url == f"{sandbox.urls['mixpanel']}/api"
    assert settings.mixpanel.api_secret is not None
    profiles = requests.get(
        f"{settings.mixpanel.api_url}/2.0/engage",
        auth=(settings.mixpanel.api_secret.get_secret_value(), ""),
        timeout=10,
    ).json()
    assert profiles["total"] == len(sandbox.world.mixpanel_profiles)
    zd = settings.zendesk
    assert zd.api_token is not None and zd.base_url is not None
    tickets = requests.get(
        zd.base_url + "/api/v2/incremental/tickets/cursor.json",
        params={"start_time": 0},
        auth=(f"{zd.email}/token", zd.api_token.get_secret_value()),
        timeout=10,
    )
    assert len(tickets.json()["tickets"]) == len(sandbox.world.zendesk_tickets)


def test_salesforce_and_airtable_when_available(sandbox: Sandbox) -> None:
    if sandbox.salesforce is None or sandbox.airtable is None:
        pytest.fail("the Salesforce and Airtable emulators are importable, so the runner must start them")
    settings = sandbox.settings()
    sf = settings.salesforce
    assert sf.enabled and sf.instance_url.startswith("https://127.0.0.1:") and sf.ca_bundle
    # The CA bundle in the settings is what makes the TLS handshake succeed.
    session = requests.Session()
    session.trust_env = False
    session.verify = sf.ca_bundle
    assert session.get(sf.instance_url + "/services/data/", timeout=10).status_code < 500
    with pytest.raises(requests.exceptions.SSLError):
        requests.Session().get(sf.instance_url + "/services/data/", timeout=10, verify=True)
    at = settings.airtable
    assert at.enabled and at.endpoint_url == sandbox.urls["airtable"] and at.base_id == "appSandbox0000001"


def test_written_config_loads_to_the_same_settings(sandbox: Sandbox, tmp_path: Path) -> None:
    path = sandbox.write_config(tmp_path / "nested" / "ltvsync.toml", store_url="sqlite:///x.db")
    assert load_settings(path, env={}) == sandbox.settings(store_url="sqlite:///x.db")


def test_to_toml_escapes_strings() -> None:
    data = {"s": {"quote": 'a "b" \\ c', "uni": "Zoë ✓", "flag": False, "n": 3, "x": 0.5, "skip": None}}
    assert tomllib.loads(to_toml(data)) == {
        "s": {"quote": 'a "b" \\ c', "uni": "Zoë ✓", "flag": False, "n": 3, "x": 0.5}
    }


def test_stopped_sandbox_refuses_connections() -> None:
    sb = Sandbox(generate_world(50, seed=1, as_of=AS_OF)).start()
    url = sb.urls["zendesk"]
    sb.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(url + "/api/v2/users/1.json", timeout=5)


def test_serve_prints_one_json_line_writes_config_and_stops_on_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "sandbox.toml"
    command = [sys.executable, "-m", "ltvsync.cli", "sandbox", "serve", "--customers", "200", "--seed", "4"]
    command += ["--json", "--config-out", str(config), "--time-scale", "0.01"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        info = json.loads(line)
        assert set(info) >= {"salesforce", "mixpanel", "zendesk", "airtable", "config"}
        assert Path(info["salesforce"]["ca_bundle"]).is_file()
        assert Path(info["config"]) == config.resolve() and config.is_file()
        mp = info["mixpanel"]
        engage = requests.get(f"{mp['base_url']}/api/2.0/engage", auth=(mp["api_secret"], ""), timeout=10)
        assert engage.status_code == 200 and engage.json()["total"] > 200
        settings = load_settings(config, env={})
        assert settings.zendesk.base_url == info["zendesk"]["base_url"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
