"""Boundary cases, faults and crashes of the pull, against the sandbox.

Each case is where sync tools commonly lose or duplicate records: rows sharing a Salesforce
``SystemModstamp`` across a page boundary, Mixpanel events arriving late, Zendesk tickets updated
twice between pulls, transient faults, and a process killed mid-pull.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from ltvsync.assemble import build_cycle
from ltvsync.core import models as m
from ltvsync.core.pipeline import Cycle, CycleOptions, run_cycle
from ltvsync.core.store import Store
from ltvsync.sandbox.http import Knobs
from ltvsync.sandbox.runner import Sandbox
from tests.integration.helpers import FAST_RETRY, sandbox_settings, small_world

PULL = CycleOptions(stages=("pull",))
# What "the same store" means: every fact column except bookkeeping (row versions, times of load).
DUMP_COLUMNS = {
    "identity": ("source", "source_id", "email", "name", "created_at", "deleted"),
    "purchase": (
        "source",
        "source_id",
        "customer_source_id",
        "amount",
        "currency",
        "purchased_at",
        "deleted",
    ),
    "event": ("source", "source_id", "customer_source_id", "kind", "name", "occurred_at"),
    "ticket": (
        "source",
        "source_id",
        "customer_source_id",
        "status",
        "updated_at",
        "satisfaction",
        "deleted",
    ),
    "sync_state": ("connector", "stream", "cursor"),
}


def dump(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    out: dict[str, list[tuple[Any, ...]]] = {}
    with store.engine.connect() as conn:
        for table, columns in DUMP_COLUMNS.items():
            t = m.TABLES[table]
            rows = conn.execute(select(*(t.c[c] for c in columns))).all()
            out[table] = sorted(tuple(str(v) for v in row) for row in rows)
        # Mixpanel profiles are a full refresh whose cursor is the time of reading, not data.
        out["sync_state"] = [r if r[:2] != ("mixpanel", "profiles") else r[:2] for r in out["sync_state"]]
        q = m.TABLES["quarantine"]
        out["quarantine"] = sorted(
            (str(r.source), str(r.stream), str(r.payload)) for r in conn.execute(select(q)).all()
        )
    return out


def test_contacts_sharing_one_systemmodstamp_across_pages_are_all_read(
    sandbox: Sandbox, cycle: Cycle, store: Store
) -> None:
    sf = sandbox.salesforce
    stamp = "2026-10-15T12:00:00.000+0000"
    new_ids = [
        sf.add("Contact", {"LastName": f"Same{i}", "Email": f"same{i}@example.com"}) for i in range(3000)
    ]
    for cid in new_ids:
        sf.objects["Contact"][cid]["SystemModstamp"] = stamp
    report = run_cycle(cycle, trigger="test", options=CycleOptions(stages=("pull",), sources=("salesforce",)))
    contacts = next(s for s in report.streams if s["stream"] == "contacts")
    assert contacts["pages"] >= 2  # the shared timestamp straddles a page boundary
    with store.engine.connect() as conn:
        t = m.TABLES["identity"]
        ids = {r for (r,) in conn.execute(select(t.c.source_id).where(t.c.source == "salesforce"))}
    assert set(new_ids) <= ids


def test_late_mixpanel_event_is_loaded_once(sandbox: Sandbox, cycle: Cycle, store: Store) -> None:
    assert run_cycle(cycle, trigger="test", options=PULL).status == "ok"
    a_day_ago = datetime.now(UTC) - timedelta(days=1, hours=1)
    profile = sandbox.world.mixpanel_profiles[0]["$distinct_id"]
    late = {
        "event": "Login",
        "properties": {"time": int(a_day_ago.timestamp()), "distinct_id": profile, "$insert_id": "late-one"},
    }
    sandbox.mixpanel.add_events([late])
    for _ in range(2):
        run_cycle(cycle, trigger="test", options=PULL)
    t = m.TABLES["event"]
    with store.engine.connect() as conn:
        rows = conn.execute(select(t.c.source_id).where(t.c.source_id == "late-one")).all()
    assert len(rows) == 1


def test_ticket_updated_twice_between_pulls_is_stored_once_with_latest_state(
    sandbox: Sandbox, cycle: Cycle, store: Store
) -> None:
    assert run_cycle(cycle, trigger="test", options=PULL).status == "ok"
    tid = sorted(sandbox.world.zendesk_tickets)[0]
    sandbox.zendesk.update_ticket(tid, {"status": "pending"})
    sandbox.zendesk.update_ticket(tid, {"status": "solved"})
    time.sleep(0.2)
    run_cycle(cycle, trigger="test", options=PULL)
    t = m.TABLES["ticket"]
    with store.engine.connect() as conn:
        rows = conn.execute(select(t.c.status).where(t.c.source_id == str(tid))).all()
    assert [r.status for r in rows] == ["solved"]


def test_pull_through_twenty_percent_faults_equals_a_clean_pull(
    store: Store, store_url: str, tmp_path: Path
) -> None:
    world = small_world(n=150, seed=5)
    clean_url = f"sqlite:///{tmp_path / 'clean.db'}"
    with Sandbox(world=world, knobs=Knobs(time_scale=0.001)) as sb:
        clean = Store.open(clean_url)
        assert (
            run_cycle(
                build_cycle(sandbox_settings(sb, clean_url), clean, retry=FAST_RETRY), options=PULL
            ).status
            == "ok"
        )
    with Sandbox(world=world, knobs=Knobs(time_scale=0.001, fault_rate=0.2, seed=9)) as sb:
        faulty = build_cycle(sandbox_settings(sb, store_url), store, retry=FAST_RETRY)
        report = run_cycle(faulty, options=PULL)
        faults = sum(e.count("__total__") for e in sb.emulators())
    assert report.status == "ok", report.errors
    assert faults > 0
    assert dump(store) == dump(clean)
    clean.close()


@pytest.mark.slow
def test_pull_killed_at_random_points_then_rerun_equals_an_uninterrupted_pull(tmp_path: Path) -> None:
    world = small_world(n=200, seed=8)
    rng = random.Random(42)
    with Sandbox(world=world, knobs=Knobs(time_scale=0.001, latency=0.002)) as sb:
        ref_url = f"sqlite:///{tmp_path / 'reference.db'}"
        reference = Store.open(ref_url)
        assert (
            run_cycle(
                build_cycle(sandbox_settings(sb, ref_url), reference, retry=FAST_RETRY), options=PULL
            ).status
            == "ok"
        )
        expected = dump(reference)
        for attempt in range(3):
            url = f"sqlite:///{tmp_path / f'crash{attempt}.db'}"
            config = _write_config(sb, url, tmp_path / f"crash{attempt}.toml")
            Store.open(url).close()  # migrate first, so the kill lands in the pull itself
            child = _pull_process(config)
            time.sleep(rng.uniform(0.3, 2.0))
            child.send_signal(signal.SIGKILL)
            child.wait()
            rerun = _pull_process(config)
            assert rerun.wait(timeout=300) == 0, rerun.stderr.read() if rerun.stderr else ""
            assert dump(Store.open(url)) == expected, f"attempt {attempt}"


def _write_config(sb: Sandbox, url: str, path: Path) -> Path:
    sb.write_config(path, store_url=url)
    with path.open("a", encoding="utf-8") as fh:
        fh.write("\n[salesforce_extra_placeholder]\n" if False else "")
    return path


def _pull_process(config: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    return subprocess.Popen(
        [sys.executable, "-m", "ltvsync.cli", "sync", "--only", "pull", "--config", str(config), "--json"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def test_re_reading_a_bad_record_does_not_quarantine_it_twice(
    sandbox: Sandbox, cycle: Cycle, store: Store
) -> None:
    assert run_cycle(cycle, trigger="test", options=PULL).status == "ok"
    q = m.TABLES["quarantine"]
    with store.engine.connect() as conn:
        before = conn.execute(select(q.c.payload)).all()
    assert before
    # A full refresh re-reads every stream from the start, bad records included.
    again = run_cycle(cycle, trigger="test", options=CycleOptions(stages=("pull",), full_refresh=True))
    assert sum(s["rejections"] for s in again.streams) == 0
    with store.engine.connect() as conn:
        after = conn.execute(select(q.c.payload)).all()
    assert sorted(after) == sorted(before)
