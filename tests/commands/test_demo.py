"""``ltvsync demo --once --json``: the whole product against the sandbox, as a user would run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_demo_once_json_pushes_every_customer_to_both_destinations(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ltvsync.cli", "demo", "--once", "--json", "--customers", "300"],
        capture_output=True,
        cwd=tmp_path,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    report = json.loads(result.stdout)
    assert report["status"] == "ok"
    assert {s["status"] for s in report["streams"]} == {"ok"}
    assert all(s["records"] > 0 for s in report["streams"])
    customers = report["compute"]["customers"]
    assert customers > 0
    pushed = {d["destination"]: d["ok"] for d in report["destinations"]}
    assert pushed == {"salesforce": customers, "airtable": customers}
    assert report["tags"]["counts"]
    # The demo works in a temporary directory and leaves the current folder alone.
    assert list(tmp_path.iterdir()) == []
