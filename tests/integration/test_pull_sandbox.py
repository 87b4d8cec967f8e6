"""Pull against the sandbox with the real client libraries, on SQLite and Postgres.

Counts are derived from the generated world (and its list of injected dirt), never hard-coded.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from ltvsync.core import models as m
from ltvsync.core.pipeline import Cycle, CycleOptions, run_cycle
from ltvsync.core.store import Store
from ltvsync.sandbox.runner import Sandbox
from ltvsync.sandbox.world_dirt import QUARANTINE_KINDS

PULL = CycleOptions(stages=("pull",))


def count(store: Store, table: str, **where: Any) -> int:
    t = m.TABLES[table]
    query = select(func.count()).select_from(t)
    for column, value in where.items():
        query = query.where(t.c[column] == value)
    with store.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def streams(report: Any) -> dict[str, dict[str, Any]]:
    return {f"{s['source']}.{s['stream']}": s for s in report.as_dict()["streams"]}


def expected_counts(sb: Sandbox) -> dict[str, int]:
    w = sb.world
    contacts = [c for c in w.salesforce["Contact"].values() if not c.get("IsDeleted")]
    won = [o for o in w.salesforce["Opportunity"].values() if o.get("IsWon") and not o.get("IsDeleted")]
    dirty = w.truth.dirt_ids("salesforce", "Opportunity", QUARANTINE_KINDS)
    quarantined = [o for o in won if o["Id"] in dirty]
    insert_ids = {e["properties"]["$insert_id"] for e in w.mixpanel_events}
    return {
        "contacts": len(contacts),
        "purchases": len(won) - len(quarantined),
        "quarantined": len(quarantined),
        "events": len(insert_ids),
        "profiles": len(w.mixpanel_profiles),
        "users": len(w.zendesk_users),
        "tickets": len(w.zendesk_tickets),
    }


def test_first_pull_loads_the_world_and_second_pull_loads_nothing(
    sandbox: Sandbox, cycle: Cycle, store: Store
) -> None:
    want = expected_counts(sandbox)
    first = run_cycle(cycle, trigger="test", options=PULL)
    assert first.status == "ok", first.as_dict()["errors"]
    assert count(store, "identity", source="salesforce") == want["contacts"]
    assert count(store, "purchase", source="salesforce") == want["purchases"]
    assert count(store, "quarantine", source="salesforce", stream="opportunities") == want["quarantined"]
    assert want["quarantined"] > 0  # the world is dirty enough to exercise quarantine
    with store.engine.connect() as conn:
        reasons = [r for (r,) in conn.execute(select(m.TABLES["quarantine"].c.reason))]
    assert all(reasons)
    assert count(store, "event", source="mixpanel") == want["events"]
    assert count(store, "identity", source="mixpanel") == want["profiles"]
    assert count(store, "identity", source="zendesk") == want["users"]
    assert count(store, "ticket", source="zendesk") == want["tickets"]

    # Count only the requests the sync chose to make: no rate-limit rejections in between.
    sandbox.knobs.rate_limits = False
    for emulator in sandbox.emulators():
        emulator.reset_counts()
    second = run_cycle(cycle, trigger="test", options=PULL)
    assert second.status == "ok"
    assert all(s["changed"] == 0 for s in second.as_dict()["streams"]), streams(second)
    assert sandbox.salesforce.count("query") + sandbox.salesforce.count("query_more") <= 2
    assert sandbox.zendesk.count("incremental_tickets") <= 1
    assert sandbox.zendesk.count("incremental_users") <= 1
    # Mixpanel re-reads its lag window (one export request) and the profile list (one page).
    assert sandbox.mixpanel.count("export") <= 1
    assert sandbox.mixpanel.count("engage") <= 1


def test_next_pull_picks_up_exactly_the_changes(sandbox: Sandbox, cycle: Cycle, store: Store) -> None:
    assert run_cycle(cycle, trigger="test", options=PULL).status == "ok"
    sf, zd, mp = sandbox.salesforce, sandbox.zendesk, sandbox.mixpanel
    contacts = sorted(c["Id"] for c in sandbox.world.salesforce["Contact"].values() if not c.get("IsDeleted"))
    for cid in contacts[:50]:
        sf.modify("Contact", cid, {"FirstName": "Changed"})
    for cid in contacts[50:55]:
        sf.delete("Contact", cid)
    today = datetime.now(UTC).date()
    for i in range(20):
        sf.add(
            "Opportunity",
            {
                "Name": f"new {i}",
                "ContactId": contacts[100 + i],
                "Amount": 10.0 + i,
                "CloseDate": today.isoformat(),
                "StageName": "Closed Won",
                "IsWon": True,
                "IsClosed": True,
                "CurrencyIsoCode": "USD",
            },
        )
    two_days_ago = datetime.now(UTC) - timedelta(days=2)
    late = [
        {
            "event": "Login",
            "properties": {
                "time": int(two_days_ago.timestamp()) + i,
                "distinct_id": sandbox.world.mixpanel_profiles[i]["$distinct_id"],
                "$insert_id": f"late-{i}",
            },
        }
        for i in range(12)
    ]
    mp.add_events(late)
    ticket_ids = sorted(sandbox.world.zendesk_tickets)[:30]
    for tid in ticket_ids:
        zd.update_ticket(tid, {"status": "solved"})
    time.sleep(0.2)  # past the (scaled) minute Zendesk withholds fresh changes

    report = streams(run_cycle(cycle, trigger="test", options=PULL))
    assert report["salesforce.contacts"]["changed"] == 55
    assert report["salesforce.opportunities"]["changed"] == 20
    assert report["mixpanel.events"]["changed"] == 12
    assert report["zendesk.tickets"]["changed"] == 30
    assert count(store, "identity", source="salesforce", deleted=True) == 5
    assert count(store, "event", source="mixpanel", kind="login") >= 12
