"""Push throughput against the sandbox: Airtable under its real 5 requests/second limit, and the
first Salesforce push through sObject Collections versus one Bulk API 2.0 update job.

A store is built once by a full pull + compute cycle over an N-customer world with the sandbox's
rate limits off (preparation, not measured), then copied, so each variant starts from the same
never-pushed state.  Rate limits are then switched on at real time scale (``Knobs(time_scale=1.0)``)
and only ``stages=("push",)`` is timed, through the real destinations built by ``build_cycle``:

* ``collections``: Salesforce with ``bulk_push_threshold`` above N (PATCH composite/sobjects, 200
  records a request) followed by Airtable (``batch_upsert``, 10 records a request, client throttle
  at ``airtable.requests_per_second``);
* ``bulk``: Salesforce with ``bulk_push_threshold = 0`` (one Bulk 2.0 ingest job), Airtable off.

Request counts and 429s come from the emulators (server side); seconds from each destination's
report.  Vendor docs: airtable.com/developers/web/api/rate-limits (5 req/s per base, 30 s
penalty); Salesforce REST "sObject Collections: Update Records", Bulk API 2.0 "Create a Job",
"Upload Job Data", "Get Job Info".

Usage: .venv/bin/python bench/push.py [--customers 2000] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from ltvsync.assemble import build_cycle
from ltvsync.config.settings import Settings
from ltvsync.core.pipeline import CycleOptions, SyncReport, run_cycle
from ltvsync.core.store import Store
from ltvsync.sandbox.http import Knobs
from ltvsync.sandbox.runner import Sandbox
from ltvsync.sandbox.world import AIRTABLE_BASE, generate_world

AIRTABLE_TARGET_RPS = 4.5  # the brief's target for sustained requests/second
NEVER_BULK = 10**9


def _settings(sb: Sandbox, store_url: str) -> Settings:
    settings = sb.settings(store_url=store_url)
    # The sandbox org has multi-currency on (as in tests/integration/helpers.py).
    settings.salesforce.currency_field = "CurrencyIsoCode"
    return settings


def _dest(report: SyncReport, name: str) -> dict[str, Any]:
    return next((d for d in report.destinations if d["destination"] == name), {})


def _counts(sb: Sandbox) -> dict[str, Counter[str]]:
    return {e.name: Counter(e.counts) for e in sb.emulators()}


def prepare(sb: Sandbox, workdir: Path) -> Path:
    """Pull + compute into a SQLite store with rate limits off; returns the database file."""
    path = workdir / "prepared.db"
    store = Store.open(f"sqlite:///{path}")
    report = run_cycle(
        build_cycle(_settings(sb, f"sqlite:///{path}"), store),
        trigger="bench",
        options=CycleOptions(stages=("pull", "compute")),
    )
    store.engine.dispose()
    if report.status != "ok":
        raise SystemExit(f"preparation cycle ended {report.status}: {report.errors}")
    return path


def push_variant(sb: Sandbox, prepared: Path, name: str, *, bulk: bool, airtable: bool) -> dict[str, Any]:
    path = prepared.with_name(f"{name}.db")
    shutil.copyfile(prepared, path)
    settings = _settings(sb, f"sqlite:///{path}")
    settings.salesforce.bulk_push_threshold = 0 if bulk else NEVER_BULK
    settings.airtable.enabled = airtable
    store = Store.open(f"sqlite:///{path}")
    cycle = build_cycle(settings, store)
    for emulator in sb.emulators():
        emulator.reset_counts()
    sb.airtable.throttled = 0
    sb.knobs.rate_limits = True
    start = time.perf_counter()
    report = run_cycle(cycle, trigger="bench", options=CycleOptions(stages=("push",)))
    wall = time.perf_counter() - start
    sb.knobs.rate_limits = False
    store.engine.dispose()
    counts = _counts(sb)
    sf, at = _dest(report, "salesforce"), _dest(report, "airtable")
    at_writes = counts["airtable"]["records_update"] + counts["airtable"]["records_create"]
    return {
        "status": report.status,
        "errors": report.errors,
        "wall_s": wall,
        "salesforce": {k: sf.get(k) for k in ("planned", "ok", "failed", "batches", "api_calls", "seconds")}
        | {"emulator_requests": dict(counts["salesforce"])},
        "airtable": {k: at.get(k) for k in ("planned", "ok", "failed", "batches", "api_calls", "seconds")}
        | {
            "emulator_requests": dict(counts["airtable"]),
            "write_requests": at_writes,
            "throttled_429": sb.airtable.throttled,
            "rows_in_table": len(sb.airtable.records(AIRTABLE_BASE, settings.airtable.table)),
            "write_requests_per_s": at_writes / at["seconds"] if at.get("seconds") else None,
        },
    }


def environment() -> str:
    versions = ", ".join(
        f"{n} {metadata.version(n)}" for n in ("simple-salesforce", "pyairtable", "requests", "SQLAlchemy")
    )
    return (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; `{' '.join(os.uname())}`, {os.cpu_count()} CPUs; "
        f"Python {platform.python_version()}, {versions}; load average {os.getloadavg()[0]:.1f} at the end"
    )


def markdown(result: dict[str, Any]) -> str:
    col, blk = result["collections"], result["bulk"]
    header = [
        "| push | records planned | customers ok | customers failed | write requests | all requests "
        "| 429s | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    salesforce = [
        _sf_row("Salesforce, sObject Collections", col["salesforce"]),
        _sf_row("Salesforce, Bulk 2.0", blk["salesforce"]),
    ]
    at = col["airtable"]
    if at["planned"] is None:
        return "\n".join(header + salesforce)
    rps = at["write_requests_per_s"] or 0.0
    verdict = "met" if rps >= AIRTABLE_TARGET_RPS and not at["failed"] else "MISSED"
    return "\n".join(
        [
            *header,
            f"| Airtable (5 req/s enforced) | {at['planned']} | {at['ok']} | {at['failed']} "
            f"| {at['write_requests']} | {at['emulator_requests'].get('__total__', 0)} "
            f"| {at['throttled_429']} | {at['seconds']:.2f} |",
            *salesforce,
            "",
            f"Airtable sustained {rps:.2f} write requests/s (target ≥ {AIRTABLE_TARGET_RPS}: {verdict}); "
            f"rows in the emulator's table afterwards: {at['rows_in_table']}.",
        ]
    )


def _sf_row(label: str, sf: dict[str, Any]) -> str:
    requests = sf["emulator_requests"]
    writes = sum(v for k, v in requests.items() if k.startswith(("collections_", "bulk_ingest")))
    return (
        f"| {label} | {sf['planned']} | {sf['ok']} | {sf['failed']} | {writes} "
        f"| {requests.get('__total__', 0)} | - | {sf['seconds']:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--skip-airtable", action="store_true", help="Salesforce only (Airtable at 5 req/s takes N/48 s)."
    )
    args = parser.parse_args()
    world = generate_world(args.customers, seed=args.seed)
    knobs = Knobs(time_scale=1.0, rate_limits=False, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp, Sandbox(world=world, knobs=knobs) as sb:
        prepared = prepare(sb, Path(tmp))
        result = {
            "customers": args.customers,
            "collections": push_variant(
                sb, prepared, "collections", bulk=False, airtable=not args.skip_airtable
            ),
            "bulk": push_variant(sb, prepared, "bulk", bulk=True, airtable=False),
        }
    print(json.dumps(result, indent=2, default=str))
    print()
    print(environment())
    print()
    print(markdown(result))


if __name__ == "__main__":
    main()
