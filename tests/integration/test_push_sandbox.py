"""Push against the sandbox: only what changed, in the largest batches, counted by the sandbox."""

from __future__ import annotations

import math
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from ltvsync.core.pipeline import Cycle, CycleOptions, SyncReport, run_cycle
from ltvsync.core.store import Store
from ltvsync.sandbox.runner import Sandbox

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
