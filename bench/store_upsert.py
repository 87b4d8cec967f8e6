"""Benchmark ``Store.upsert_many`` against the raw driver and against naive per-row ORM merges.

For each store (SQLite file, Postgres schema) it loads N event rows (default 1,000,000) into a
freshly migrated store and measures:

* ``upsert_many`` first load (every row new) and a second pass over the same rows (every row
  unchanged: the ``WHERE … IS DISTINCT FROM`` must make this a no-op);
* the raw driver's ``executemany`` of a plain ``INSERT … ON CONFLICT DO NOTHING`` with the same
  rows into an identical fresh table, timed twice: driver only (rows pre-converted to driver
  tuples, conversion untimed) and including the dict-to-tuple conversion any loader must do;
* SQLModel ``session.merge`` one row at a time on a 20,000-row sample, extrapolated to N.

Rows are generated in chunks outside the timed sections, so memory stays bounded and only the
loading is measured.  Prints the figures and replaces the ``## Store upsert`` section of
``bench/RESULTS.md``.  Usage: ``python bench/store_upsert.py [--rows N] [--only sqlite|postgres]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy
from sqlalchemy.engine import make_url
from sqlmodel import Session

from ltvsync.core.models import Event
from ltvsync.core.store import Store

PG_URL = os.environ.get("LTVSYNC_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
CHUNK = 100_000
MERGE_SAMPLE = 20_000
RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## Store upsert"
KEY = ("source", "source_id")
COLUMNS = (
    "source",
    "source_id",
    "customer_source_id",
    "kind",
    "name",
    "occurred_at",
    "properties",
    "referred",
)
BASE = datetime(2025, 1, 1, tzinfo=UTC)
# CPU seconds of this process per phase: SQLite runs in-process, so this is its work whatever
# else the machine is doing (wall time on a shared machine is not).
CPU: dict[str, float] = {}


def rows(start: int, n: int, prefix: str = "ins") -> list[dict[str, Any]]:
    return [
        {
            "source": "mixpanel",
            "source_id": f"{prefix}-{i:08d}",
            "customer_source_id": f"user-{i % 50_000}",
            "kind": "page_view" if i % 3 else "login",
            "name": "Page View" if i % 3 else "Login",
            "occurred_at": BASE + timedelta(seconds=i * 7),
            "properties": {"path": f"/p/{i % 101}", "plan": "pro" if i % 5 else "free"},
            "referred": None,
        }
        for i in range(start, start + n)
    ]


def chunks(total: int, prefix: str = "ins") -> Iterator[list[dict[str, Any]]]:
    for start in range(0, total, CHUNK):
        yield rows(start, min(CHUNK, total - start), prefix)


def to_tuple(row: dict[str, Any], dialect: str) -> tuple[Any, ...]:
    """What a hand-written loader must do: UTC text for SQLite, JSON text for both."""
    at = row["occurred_at"]
    when = at.astimezone(UTC).isoformat(" ", "microseconds")[:26] if dialect == "sqlite" else at
    props = json.dumps(row["properties"], sort_keys=True, separators=(",", ":"))
    return (*(row[c] for c in COLUMNS[:5]), when, props, row["referred"])


def time_upsert(store: Store, total: int) -> tuple[float, float, int]:
    elapsed = [0.0, 0.0]
    cpu = [0.0, 0.0]
    changed = 0
    for attempt in range(2):
        with store.transaction() as conn:
            for batch in chunks(total):
                t, c = time.perf_counter(), time.process_time()
                n = store.upsert_many(conn, "event", batch, KEY)
                elapsed[attempt] += time.perf_counter() - t
                cpu[attempt] += time.process_time() - c
                if attempt == 0:
                    changed += n
                else:
                    assert n == 0, "unchanged rows were written"
    CPU[f"{store.dialect}:upsert"] = cpu[0]
    return elapsed[0], elapsed[1], changed


def time_raw_sqlite(path: str, total: int) -> tuple[float, float]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("DELETE FROM event")
    marks = ", ".join("?" * len(COLUMNS))
    sql = f"INSERT INTO event ({', '.join(COLUMNS)}) VALUES ({marks}) ON CONFLICT DO NOTHING"
    driver = convert = driver_cpu = 0.0
    conn.execute("BEGIN")
    for batch in chunks(total):
        t = time.perf_counter()
        tuples = [to_tuple(r, "sqlite") for r in batch]
        convert += time.perf_counter() - t
        t, c = time.perf_counter(), time.process_time()
        conn.executemany(sql, tuples)
        driver += time.perf_counter() - t
        driver_cpu += time.process_time() - c
    t, c = time.perf_counter(), time.process_time()
    conn.execute("COMMIT")
    driver += time.perf_counter() - t
    CPU["sqlite:raw"] = driver_cpu + time.process_time() - c
    conn.close()
    return driver, driver + convert


def time_raw_postgres(libpq_url: str, schema: str, total: int) -> tuple[float, float]:
    with psycopg.connect(libpq_url, options=f"-csearch_path={schema}") as conn:
        conn.execute("TRUNCATE event")
        marks = ", ".join(["%s"] * len(COLUMNS))
        sql = f"INSERT INTO event ({', '.join(COLUMNS)}) VALUES ({marks}) ON CONFLICT DO NOTHING"
        driver = convert = 0.0
        with conn.cursor() as cur:
            for batch in chunks(total):
                t = time.perf_counter()
                tuples = [to_tuple(r, "postgresql") for r in batch]
                convert += time.perf_counter() - t
                t = time.perf_counter()
                cur.executemany(sql, tuples)
                driver += time.perf_counter() - t
        t = time.perf_counter()
        conn.commit()
        driver += time.perf_counter() - t
    return driver, driver + convert


def time_merge(store: Store) -> float:
    sample = rows(0, MERGE_SAMPLE, prefix="merge")
    with Session(store.engine) as session:
        t = time.perf_counter()
        for row in sample:
            session.merge(Event(**row))
        session.commit()
        return time.perf_counter() - t


def bench_store(name: str, url: str, total: int, raw: Any) -> dict[str, Any]:
    store = Store.open(url)
    print(f"[{name}] upsert_many {total:,} rows …", flush=True)
    first, second, changed = time_upsert(store, total)
    assert changed == total, f"expected {total} inserted, got {changed}"
    print(f"[{name}] raw executemany …", flush=True)
    raw_driver, raw_with_convert = raw()
    print(f"[{name}] session.merge on {MERGE_SAMPLE:,} rows …", flush=True)
    merge = time_merge(store) * total / MERGE_SAMPLE
    store.close()
    result = {
        "store": name,
        "upsert_first": first,
        "upsert_unchanged": second,
        "raw_driver": raw_driver,
        "raw_with_convert": raw_with_convert,
        "merge_extrapolated": merge,
    }
    print(json.dumps(result, indent=2), flush=True)
    return result


def run_sqlite(total: int) -> dict[str, Any]:
    workdir = tempfile.mkdtemp(prefix="ltvsync-bench-")
    main, raw_db = f"{workdir}/upsert.db", f"{workdir}/raw.db"
    try:
        Store.open(f"sqlite:///{raw_db}").close()  # identical fresh schema for the raw driver
        return bench_store("SQLite", f"sqlite:///{main}", total, lambda: time_raw_sqlite(raw_db, total))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_postgres(total: int) -> dict[str, Any]:
    libpq = make_url(PG_URL).set(drivername="postgresql").render_as_string(hide_password=False)
    schemas = [f"bench_{secrets.token_hex(4)}" for _ in range(2)]
    admin = psycopg.connect(libpq, autocommit=True)
    try:
        for s in schemas:
            admin.execute(f'CREATE SCHEMA "{s}"')

        def url(schema: str) -> str:
            return (
                make_url(PG_URL)
                .update_query_dict({"options": f"-csearch_path={schema}"})
                .render_as_string(False)
            )

        Store.open(url(schemas[1])).close()
        return bench_store(
            "Postgres", url(schemas[0]), total, lambda: time_raw_postgres(libpq, schemas[1], total)
        )
    finally:
        for s in schemas:
            admin.execute(f'DROP SCHEMA "{s}" CASCADE')
        admin.close()


def machine() -> list[str]:
    pg = "n/a"
    try:
        libpq = make_url(PG_URL).set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(libpq) as conn:
            pg = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
    except psycopg.Error:
        pass
    uname = subprocess.run(["uname", "-a"], capture_output=True, text=True, check=False).stdout.strip()
    return [
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- Machine: `{uname}`, {os.cpu_count()} cores",
        f"- Python {platform.python_version()}, SQLAlchemy {sqlalchemy.__version__}, "
        f"sqlite3 (SQLite {sqlite3.sqlite_version}), psycopg {psycopg.__version__} "
        f"({psycopg.pq.__impl__} libpq {psycopg.pq.version()}), PostgreSQL {pg} on loopback",
        # Other work on the machine moves absolute figures; ratios within a row are steadier.
        f"- Load average at the end: {' / '.join(f'{x:.1f}' for x in os.getloadavg())} (1/5/15 min)",
    ]


def render(results: list[dict[str, Any]], total: int) -> str:
    lines = [
        SECTION,
        "",
        f"`python bench/store_upsert.py --rows {total}`: {total:,} Mixpanel-shaped event rows (8 columns,",
        "composite key `(source, source_id)`, two secondary indexes) into a freshly migrated store, one",
        "transaction, rows handed over in chunks of 100,000.  Seconds, lower is better.",
        "",
        *machine(),
        "",
        "| store | upsert_many (new rows) | upsert_many (same rows again) | raw executemany, driver only "
        "| raw executemany incl. conversion | session.merge per row (extrapolated) "
        "| upsert ÷ raw driver speed | upsert vs merge |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ratio = r["raw_driver"] / r["upsert_first"]
        lines.append(
            f"| {r['store']} | {r['upsert_first']:.1f} | {r['upsert_unchanged']:.1f} | {r['raw_driver']:.1f} "
            f"| {r['raw_with_convert']:.1f} | {r['merge_extrapolated']:.0f} | {ratio:.2f}x "
            f"| {r['merge_extrapolated'] / r['upsert_first']:.0f}x faster |"
        )
    if "sqlite:upsert" in CPU and "sqlite:raw" in CPU:
        up, raw = CPU["sqlite:upsert"], CPU["sqlite:raw"]
        lines += [
            "",
            "SQLite in CPU seconds of the benchmark process (what other load on the machine cannot skew):",
            f"upsert_many {up:.1f}, raw executemany driver only {raw:.1f}, ratio {raw / up:.2f}x.",
        ]
    lines += [
        "",
        '"upsert ÷ raw driver speed" is raw time / upsert time (1.0 = as fast as the bare driver; the',
        "target is at least 0.5 on SQLite).  The raw baseline does less work: plain `DO NOTHING`, no change",
        'detection, no row_version, and its datetime/JSON conversion is excluded from "driver only".',
        "",
    ]
    return "\n".join(lines)


def write_results(section: str) -> None:
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else "# Benchmark results\n\n"
    start = text.find(SECTION)
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        nxt = text.find("\n## ", start + len(SECTION))
        rest = "" if nxt == -1 else "\n\n" + text[nxt + 1 :]
        text = text[:start] + section.rstrip("\n") + rest
    RESULTS.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--only", choices=["sqlite", "postgres"])
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    results = []
    if args.only in (None, "sqlite"):
        results.append(run_sqlite(args.rows))
    if args.only in (None, "postgres"):
        results.append(run_postgres(args.rows))
    section = render(results, args.rows)
    print(section)
    if not args.no_write:
        write_results(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
