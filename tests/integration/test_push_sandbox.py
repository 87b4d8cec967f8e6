"""Push against the sandbox: only what changed, in the largest batches, counted by the sandbox."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

from ltvsync.core.pipeline import Cycle, CycleOptions, SyncReport, run_cycle
from ltvsync.core.store import Store
from ltvsync.sandbox.http import Knobs
from ltvsync.sandbox.runner import Sandbox
from tests.integration.helpers import small_world

SF_WRITES = ("collections_update", "bulk_ingest_create")
AT_WRITES = ("records_update", "records_create")


def dest(report: SyncReport, name: str) -> dict[str, Any]:
    return next(d for d in report.destinations if d["destination"] == name)


def writes(sb: Sandbox) -> tuple[int, int]:
    return sum(sb.salesforce.count(r) for r in SF_WRITES), sum(sb.airtable.count(r) for r in AT_WRITES)


def reset(sb: Sandbox) -> None:
    for emulator in sb.emulators():
        emulator.reset_counts()


def test_push_writes_everyone_then_nothing_then_exactly_the_changed(
    sandbox: Sandbox, cycle: Cycle, store: Store
) -> None:
    # Percentile tags (top decile) legitimately move other customers when 37 buy again; without
    # tags, exactly the 37 customers' values change, which is what this test pins down.
    cycle.settings.tags.use_defaults = False
    first = run_cycle(cycle, trigger="test")
    assert first.status == "ok", first.errors
    sf, at = dest(first, "salesforce"), dest(first, "airtable")
    assert sf["ok"] == sf["customers"] > 0 and at["ok"] == at["customers"] > 0
    sf_calls, at_calls = writes(sandbox)
    assert sf_calls == math.ceil(sf["planned"] / 200)
    assert at_calls == math.ceil(at["planned"] / 10)
    # What landed: every pushed contact carries its LTV in the sandbox's Salesforce.
    written = {rid for obj, rid, _fields in sandbox.salesforce.writes if obj == "Contact"}
    assert len(written) == sf["planned"]
    assert len(sandbox.airtable.records("appSandbox0000001", "Customers")) == at["planned"]

    reset(sandbox)
    second = run_cycle(cycle, trigger="test")
    assert second.status == "ok", second.errors
    assert writes(sandbox) == (0, 0)
    assert dest(second, "salesforce")["unchanged"] == sf["customers"]

    # New purchases for 37 customers that have exactly one contact each.
    contacts_per_email = Counter(
        (c.get("Email") or "").strip().lower() for c in sandbox.world.salesforce["Contact"].values()
    )
    chosen = [
        c["Id"]
        for c in sorted(sandbox.world.salesforce["Contact"].values(), key=lambda c: c["Id"])
        if c.get("Email") and contacts_per_email[c["Email"].strip().lower()] == 1
    ][:37]
    today = datetime.now(UTC).date().isoformat()
    for i, contact in enumerate(chosen):
        sandbox.salesforce.add(
            "Opportunity",
            {
                "Name": f"repeat {i}",
                "ContactId": contact,
                "Amount": 25.0,
                "CloseDate": today,
                "StageName": "Closed Won",
                "IsWon": True,
                "IsClosed": True,
                "CurrencyIsoCode": "USD",
            },
        )
    reset(sandbox)
    third = run_cycle(cycle, trigger="test")
    assert third.status == "ok", third.errors
    assert dest(third, "salesforce")["ok"] == 37
    assert dest(third, "airtable")["ok"] == 37
    assert writes(sandbox) == (1, 4)


def test_dry_run_prints_exactly_what_the_real_run_then_writes(sandbox: Sandbox, cycle: Cycle) -> None:
    dry = run_cycle(cycle, trigger="test", options=CycleOptions(dry_run=True))
    assert writes(sandbox) == (0, 0)
    planned = {(c["target"], c["field"], str(c["new"])) for c in dest(dry, "salesforce")["changes"]}
    run_cycle(cycle, trigger="test")
    landed = set()
    for _obj, rid, fields in sandbox.salesforce.writes:
        for api_name, value in fields.items():
            landed.add((rid, api_name, str(value)))
    mapping = cycle.settings.salesforce.push_fields
    planned_api = {(t, mapping[f], v) for t, f, v in planned if f != "updated"}
    assert planned_api and planned_api <= landed
    assert {(r, f) for r, f, _ in landed if f != mapping["updated"]} == {(t, f) for t, f, _ in planned_api}


class FakeClock:
    """A wall clock the test moves forward, so retry backoff can elapse instantly."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(hour=1)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now = self.now + timedelta(**delta)


def test_per_record_rejections_are_reported_retried_and_land_once_cleared(
    sandbox: Sandbox, cycle: Cycle
) -> None:
    clock = FakeClock()
    cycle.clock = clock
    contacts = sorted(sandbox.world.salesforce["Contact"])[:3]
    message = "LTV fields are locked for review"
    for cid in contacts:
        sandbox.salesforce.fail_records[cid] = ("FIELD_CUSTOM_VALIDATION_EXCEPTION", message)
    first = run_cycle(cycle, trigger="test")
    sf = dest(first, "salesforce")
    assert sf["failed"] == 3 and sf["ok"] == sf["customers"] - 3
    assert {r["status_code"] for r in sf["rejections"]} == {"FIELD_CUSTOM_VALIDATION_EXCEPTION"}
    assert {r["message"] for r in sf["rejections"]} == {message}
    assert first.status == "partial"

    clock.advance(minutes=30)  # past the first backoff: retried, still failing
    reset(sandbox)
    second = run_cycle(cycle, trigger="test")
    assert dest(second, "salesforce")["failed"] == 3
    assert writes(sandbox)[0] == 1

    sandbox.salesforce.fail_records.clear()
    clock.advance(hours=2)
    reset(sandbox)
    before = len(sandbox.salesforce.writes)
    third = run_cycle(cycle, trigger="test")
    assert dest(third, "salesforce")["ok"] == 3 and dest(third, "salesforce")["failed"] == 0
    assert {rid for _o, rid, _f in sandbox.salesforce.writes[before:]} == set(contacts)
    assert writes(sandbox) == (1, 0)


def test_a_field_edited_by_someone_else_is_left_alone_under_skip(sandbox: Sandbox, cycle: Cycle) -> None:
    assert cycle.settings.salesforce.edit_policy == "skip"
    cycle.settings.tags.use_defaults = False
    run_cycle(cycle, trigger="test")
    target = sorted(rid for _o, rid, _f in sandbox.salesforce.writes)[0]
    sandbox.salesforce.modify("Contact", target, {"LTV__c": 9999.0})  # a person's edit
    today = datetime.now(UTC).date().isoformat()
    sandbox.salesforce.add(
        "Opportunity",
        {
            "Name": "more",
            "ContactId": target,
            "Amount": 80.0,
            "CloseDate": today,
            "StageName": "Closed Won",
            "IsWon": True,
            "IsClosed": True,
            "CurrencyIsoCode": "USD",
        },
    )
    before = len(sandbox.salesforce.writes)
    report = run_cycle(cycle, trigger="test")
    sf = dest(report, "salesforce")
    assert sf["skipped_edits"] == 1
    assert sf["edits"][0]["fields"] == ["ltv"]
    assert all(rid != target for _o, rid, _f in sandbox.salesforce.writes[before:])
    assert sandbox.salesforce.record("Contact", target)["LTV__c"] == 9999.0


def test_push_killed_midway_then_rerun_ends_correct_without_resending(tmp_path: Path) -> None:
    world = small_world(n=300, seed=21)
    with Sandbox(world=world, knobs=Knobs(time_scale=0.001)) as sb:
        url = f"sqlite:///{tmp_path / 'push.db'}"
        config = sb.write_config(tmp_path / "push.toml", store_url=url)
        env = dict(os.environ)
        command = [sys.executable, "-m", "ltvsync.cli", "sync", "--config", str(config), "--json"]
        child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Wait until the Airtable push is under way (it is throttled to < 5 requests a second).
        deadline = time.monotonic() + 120
        while sb.airtable.count("records_update") < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait()
        calls_before = sb.airtable.count("records_update")
        assert calls_before > 0
        rerun = subprocess.run(command, env=env, capture_output=True, timeout=300, check=False)
        assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]
        report = json.loads(rerun.stdout)
        at = next(d for d in report["destinations"] if d["destination"] == "airtable")
        records = sb.airtable.records("appSandbox0000001", "Customers")
        # Every customer landed once; at most the batch in flight at the kill was sent twice.
        total_customers = at["customers"]
        assert len(records) == total_customers
        total_calls = sb.airtable.count("records_update")
        assert total_calls <= math.ceil(total_customers / 10) + 1
        with Store.open(url).engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT COUNT(*) FROM push_state WHERE destination = 'airtable' "
                    "AND last_error IS NULL AND values_hash IS NOT NULL"
                )
            ).scalar_one()
        assert rows == total_customers
        emails = {r["fields"]["Email"] for r in records}
        assert len(emails) == total_customers


def test_a_push_above_the_bulk_threshold_is_one_bulk_job(sandbox: Sandbox, cycle: Cycle) -> None:
    cycle.settings.salesforce.bulk_push_threshold = 50
    report = run_cycle(cycle, trigger="test")
    sf = dest(report, "salesforce")
    assert sf["ok"] == sf["customers"] > 50
    assert sandbox.salesforce.count("bulk_ingest_create") == 1
    assert sandbox.salesforce.count("collections_update") == 0
    written = {rid for _o, rid, _f in sandbox.salesforce.writes}
    assert len(written) == sf["planned"]
