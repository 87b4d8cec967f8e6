"""Store behaviour on both dialects: idempotent bulk upserts, cursors with their data, runs,
quarantine, push state, and a schema that matches the models."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, select
from sqlmodel import SQLModel
from typer.testing import CliRunner

from ltvsync.cli import app
from ltvsync.core.errors import StoreError
from ltvsync.core.models import TABLE_NAMES, TABLES
from ltvsync.core.records import Rejection
from ltvsync.core.store import MIGRATIONS_DIR, PushStateRow, Store, normalize_url, safe_url

BASE = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
EVENT_KEY = ("source", "source_id")


def events(n: int, *, name: str = "Login") -> list[dict[str, object]]:
    return [
        {
            "source": "mixpanel",
            "source_id": f"ins-{i:06d}",
            "customer_source_id": f"user-{i % 997}",
            "kind": "login",
            "name": name,
            "occurred_at": BASE + timedelta(seconds=i),
            "properties": {"plan": "pro", "n": i % 7},
            "referred": None,
        }
        for i in range(n)
    ]


def count(store: Store, table: str) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(TABLES[table])).scalar_one())


def test_upsert_100k_twice_then_change_exactly_ten(store: Store) -> None:
    rows = events(100_000)
    with store.transaction() as conn:
        assert store.upsert_many(conn, "event", rows, EVENT_KEY) == 100_000
    with store.transaction() as conn:
        assert store.upsert_many(conn, "event", rows, EVENT_KEY) == 0
    assert count(store, "event") == 100_000

    changed_at = random.Random(7).sample(range(len(rows)), 10)
    for i in changed_at:
        rows[i] = {**rows[i], "name": "Login (edited)"}
    with store.transaction() as conn:
        assert store.upsert_many(conn, "event", rows, EVENT_KEY) == 10

    event = TABLES["event"]
    with store.engine.connect() as conn:
        bumped = conn.execute(select(event.c.source_id, event.c.name).where(event.c.row_version == 2)).all()
        versions = dict(
            conn.execute(select(event.c.row_version, func.count()).group_by(event.c.row_version)).all()
        )
    assert sorted(r.source_id for r in bumped) == sorted(f"ins-{i:06d}" for i in changed_at)
    assert {r.name for r in bumped} == {"Login (edited)"}
    assert versions == {1: 99_990, 2: 10}
    assert count(store, "event") == 100_000


def test_upsert_null_changes_count_and_duplicates_collapse(store: Store) -> None:
    rows = events(3)
    with store.transaction() as conn:
        store.upsert_many(conn, "event", rows, EVENT_KEY)
        # NULL -> value and value -> NULL are changes; NULL -> NULL is not (IS DISTINCT FROM).
        rows[0] = {**rows[0], "referred": "friend@example.com"}
        rows[1] = {**rows[1], "properties": None}
        assert store.upsert_many(conn, "event", rows, EVENT_KEY) == 2
        # The same key twice in one call: the last one wins, once.
        dupes = [{**rows[2], "name": "first"}, {**rows[2], "name": "second"}]
        assert store.upsert_many(conn, "event", dupes, EVENT_KEY) == 1
        event = TABLES["event"]
        stored = {r.source_id: r for r in conn.execute(select(event))}
    assert stored["ins-000000"].referred == "friend@example.com"
    assert stored["ins-000001"].properties is None
    assert stored["ins-000002"].name == "second"
    # Re-ordered JSON keys are not a change.
    reordered = [{**rows[0], "properties": dict(reversed(list(rows[0]["properties"].items())))}]  # type: ignore[attr-defined]
    with store.transaction() as conn:
        assert store.upsert_many(conn, "event", reordered, EVENT_KEY) == 0


def test_upsert_keeps_rows_with_nul_bytes(store: Store) -> None:
    # Postgres text cannot hold NUL; the row must still land (on both stores, identically).
    row = {**events(1)[0], "name": "Log\x00in", "properties": {"k": "v\x00"}}
    with store.transaction() as conn:
        assert store.upsert_many(conn, "event", [row], EVENT_KEY) == 1
        assert store.upsert_many(conn, "event", [row], EVENT_KEY) == 0
        stored = conn.execute(select(TABLES["event"])).one()
    assert stored.name == "Log\ufffdin"
    assert stored.properties == {"k": "v\x00"}  # JSON text escapes it, so it survives verbatim


def test_upsert_round_trips_types_as_utc(store: Store) -> None:
    paris = timezone(timedelta(hours=2))
    row = {
        "source": "salesforce",
        "source_id": "006A",
        "customer_source_id": "003A",
        "customer_email": None,
        "amount": Decimal("19.99"),
        "currency": "EUR",
        "amount_base": Decimal("21.5892"),
        "purchased_at": datetime(2025, 6, 1, 14, 30, 15, 123456, tzinfo=paris),
        "updated_at": BASE,
    }
    with store.transaction() as conn:
        store.upsert_many(conn, "purchase", [row], EVENT_KEY)
        stored = conn.execute(select(TABLES["purchase"])).one()
        # The same instant written in another offset is not a change.
        utc_again = {**row, "purchased_at": row["purchased_at"].astimezone(UTC)}  # type: ignore[attr-defined]
        assert store.upsert_many(conn, "purchase", [utc_again], EVENT_KEY) == 0
    assert stored.purchased_at == datetime(2025, 6, 1, 12, 30, 15, 123456, tzinfo=UTC)
    assert stored.purchased_at.utcoffset() == timedelta(0)
    assert Decimal(stored.amount) == Decimal("19.99")
    assert stored.deleted is False and stored.row_version == 1


def test_upsert_rejects_bad_shapes_without_writing(store: Store) -> None:
    good = events(2)
    with store.transaction() as conn:
        with pytest.raises(ValueError, match="no column"):
            store.upsert_many(conn, "event", [{**good[0], "colour": "red"}], EVENT_KEY)
        with pytest.raises(ValueError, match="expected"):
            store.upsert_many(
                conn, "event", [good[0], {k: v for k, v in good[1].items() if k != "referred"}], EVENT_KEY
            )
        with pytest.raises(ValueError, match="naive"):
            store.upsert_many(conn, "event", [{**good[0], "occurred_at": datetime(2025, 1, 1)}], EVENT_KEY)
    assert count(store, "event") == 0


def test_cursor_rolls_back_with_its_batch(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction() as conn:
        store.upsert_many(conn, "event", events(50), EVENT_KEY)
        store.set_cursor(conn, "mixpanel", "events", "2025-03-02")
        raise RuntimeError("connection dropped mid-page")
    with store.transaction() as conn:
        assert store.get_cursor(conn, "mixpanel", "events") is None
    assert count(store, "event") == 0

    with store.transaction() as conn:
        store.upsert_many(conn, "event", events(50), EVENT_KEY)
        store.set_cursor(conn, "mixpanel", "events", "2025-03-02")
    with store.transaction() as conn:
        store.set_cursor(conn, "mixpanel", "events", "2025-03-03")
        assert store.get_cursor(conn, "mixpanel", "events") == "2025-03-03"
        assert store.get_cursor(conn, "mixpanel", "profiles") is None
        assert store.get_cursors(conn) == {("mixpanel", "events"): "2025-03-03"}
    assert count(store, "event") == 50


def test_quarantine_keeps_payload_verbatim(store: Store) -> None:
    run_id = store.start_run("manual")
    bad = [
        Rejection("zendesk", "tickets", '{"id": 7, "created_at": "not a date"', "truncated JSON"),
        Rejection("mixpanel", "events", "ünïcode \x00 payload", "no distinct_id"),
    ]
    with store.transaction() as conn:
        assert store.quarantine(conn, bad, run_id=run_id) == 2
        assert store.quarantine(conn, []) == 0
        q = TABLES["quarantine"]
        rows = conn.execute(select(q).order_by(q.c.id)).all()
    assert [(r.source, r.stream, r.payload, r.run_id) for r in rows] == [
        ("zendesk", "tickets", bad[0].payload, run_id),
        # Postgres text cannot hold NUL, so it is spelled out on both stores rather than lost.
        ("mixpanel", "events", "ünïcode \\x00 payload", run_id),
    ]
    assert rows[0].reason == "truncated JSON"
    assert rows[1].reason.startswith("no distinct_id")
    assert all(r.at.tzinfo is not None for r in rows)


def test_runs_are_recorded_newest_first(store: Store) -> None:
    first = store.start_run("schedule")
    second = store.start_run("manual")
    running = store.get_run(second)
    assert running is not None and running.status == "running" and running.finished_at is None
    store.finish_run(first, "failed", {"events": 3}, None, "Zendesk said 503")
    store.finish_run(second, "ok", {"events": 10, "purchases": 2}, {"sources": {"mixpanel": "ok"}})
    runs = store.list_runs(limit=10)
    assert [r.id for r in runs] == [second, first]
    assert runs[0].counts == {"events": 10, "purchases": 2}
    assert runs[0].report == {"sources": {"mixpanel": "ok"}}
    assert runs[1].status == "failed" and runs[1].error == "Zendesk said 503"
    assert runs[0].finished_at is not None and runs[0].finished_at >= runs[0].started_at
    assert store.list_runs(limit=1)[0].id == second
    assert store.get_run(second + 100) is None
    with pytest.raises(StoreError):
        store.finish_run(second + 100, "ok")


def test_push_state_round_trip(store: Store) -> None:
    customer = TABLES["customer"]
    with store.transaction() as conn:
        ids = [
            conn.execute(
                customer.insert().values(email=f"p{i}@example.com", created_at=BASE, updated_at=BASE)
            ).inserted_primary_key[0]  # type: ignore[index]
            for i in range(3)
        ]
        states = [PushStateRow("airtable", cid, f"h{cid}", {"LTV": 10.0 * cid}, BASE) for cid in ids]
        assert store.set_push_state(conn, states) == 3
        assert store.set_push_state(conn, states) == 0
        failed = PushStateRow("airtable", ids[0], "h0", None, None, "422 INVALID_VALUE", 2, BASE)
        assert store.set_push_state(conn, [failed]) == 1
        every = store.get_push_state(conn, "airtable")
        some = store.get_push_state(conn, "airtable", [ids[1]])
        assert store.get_push_state(conn, "salesforce") == {}
    assert set(every) == set(ids)
    assert every[ids[0]] == failed
    assert some == {ids[1]: states[1]}


def test_schema_matches_models_and_upgrade_is_idempotent(store: Store, store_url: str) -> None:
    assert store.current_revision() == head_revision()
    Store.open(store_url).close()  # second start-up: nothing to do, nothing breaks
    mine = SQLModel.metadata.tables
    with store.engine.connect() as conn:
        diffs = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), SQLModel.metadata
        )
    relevant = [d for d in diffs if _diff_table(d) in TABLE_NAMES]
    assert relevant == []
    assert set(TABLE_NAMES) <= set(mine)


def head_revision() -> str | None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(cfg).get_current_head()


def test_db_upgrade_command(store_url: str, tmp_path: Path) -> None:
    runner = CliRunner()
    first = runner.invoke(app, ["db", "upgrade", "--url", store_url])
    assert first.exit_code == 0, first.output
    assert f"empty → {head_revision()}" in first.output
    # --config is read when --url is absent; --url wins when both are given.
    config = tmp_path / "ltvsync.toml"
    config.write_text(f'[store]\nurl = "{store_url}"\n', encoding="utf-8")
    again = runner.invoke(app, ["db", "upgrade", "--config", str(config)])
    assert again.exit_code == 0 and "already at" in again.output
    shown = runner.invoke(app, ["db", "current", "--config", str(config), "--url", store_url])
    assert shown.exit_code == 0 and f"revision {head_revision()}" in shown.output
    refused = runner.invoke(app, ["db", "upgrade", "--url", "postgresql://app:hunter2@127.0.0.1:1/ltv"])
    assert refused.exit_code == 1 and "hunter2" not in refused.output


def _diff_table(diff: object) -> str | None:
    # compare_metadata yields tuples like ("add_column", schema, table, column) or lists of them.
    item = diff[0] if isinstance(diff, list) else diff
    for part in item[1:]:  # type: ignore[index]
        name = getattr(part, "name", None) if not isinstance(part, str) else part
        table = getattr(part, "table", None)
        if table is not None:
            return str(table.name)
        if name in TABLE_NAMES:
            return str(name)
    return None


def test_sqlite_pragmas(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'p.db'}")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    store.close()


def test_urls_and_errors_never_show_passwords() -> None:
    assert normalize_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"
    assert "hunter2" not in safe_url("postgresql://app:hunter2@db/ltv")
    with pytest.raises(StoreError) as caught:
        Store.open("postgresql://app:hunter2@127.0.0.1:1/ltv")
    assert "hunter2" not in str(caught.value)
    assert "127.0.0.1" in str(caught.value)
    with pytest.raises(StoreError, match=r"cannot open|unsupported"):
        Store.open("mysql+pymysql://u:hunter2@h/db", upgrade=False)
