"""The store: the only code that opens database connections.

SQLite (default, one file) or Postgres (production).  Owns engine set-up, schema migrations
(Alembic, shipped in ``ltvsync/core/migrations``), bulk upserts, stream cursors, run records,
quarantine and push state.  Everything that writes takes the caller's ``Connection`` so a page of
records, its rejections and its cursor commit or roll back together (``with store.transaction()
as conn: ...``).  Datetimes go in and come out timezone-aware UTC.

Relies on: SQLAlchemy 2.x "pysqlite — Serializable isolation / Savepoints / Transactional DDL"
(driver-level autocommit plus an explicit BEGIN, so DDL and SAVEPOINTs are transactional),
SQLite "Write-Ahead Logging" and ``PRAGMA busy_timeout``, PostgreSQL advisory locks
(``pg_advisory_xact_lock``) and Alembic's "Sharing a Connection" cookbook recipe.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, Table, create_engine, event, insert, select, update
from sqlalchemy.engine import RowMapping, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import SQLModel

from ltvsync.core import models as m
from ltvsync.core.errors import StoreError
from ltvsync.core.records import Rejection
from ltvsync.core.store_sql import UpsertPlan, execute_plan, make_plan

log = logging.getLogger(__name__)

DEFAULT_URL = "sqlite:///ltvsync.db"
DEFAULT_BATCH_SIZE = 5000
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Key of the Postgres advisory lock held while migrating, so replicas never migrate at once.
MIGRATION_LOCK_KEY = 0x6C747673_00000001
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
MAX_ERROR_CHARS = 4000

TableLike = Table | str | type[SQLModel]


@dataclass(frozen=True)
class RunInfo:
    """One sync run as recorded in ``sync_run``."""

    id: int
    trigger: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    counts: Mapping[str, Any]
    report: Mapping[str, Any] | None
    error: str | None


@dataclass(frozen=True)
class PushStateRow:
    """What was last pushed for one customer to one destination, and how the last try went."""

    destination: str
    customer_id: int
    values_hash: str | None
    values: Mapping[str, Any] | None
    pushed_at: datetime | None
    last_error: str | None = None
    attempts: int = 0
    next_attempt_at: datetime | None = None


def normalize_url(url: str) -> str:
    """Point bare Postgres URLs at psycopg 3 (SQLAlchemy would otherwise pick psycopg2)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def safe_url(url: str) -> str:
    """The URL with any password masked, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparseable URL: show only its scheme, never the rest
        return url.split(":", 1)[0] + "://…"


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Store:
    """Engine, schema and the bulk operations of the pipeline.  Build with ``Store.open(url)``."""

    def __init__(
        self,
        engine: Engine,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.engine = engine
        self.batch_size = batch_size
        self.clock = clock
        self._plans: dict[tuple[str, tuple[str, ...], tuple[str, ...]], UpsertPlan] = {}

    @classmethod
    def open(
        cls,
        url: str = DEFAULT_URL,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        upgrade: bool = True,
        clock: Callable[[], datetime] = _utcnow,
    ) -> Store:
        """Create the engine for ``url`` and (by default) migrate the schema to the latest version."""
        url = normalize_url(url)
        try:
            engine = create_engine(url, pool_pre_ping=not url.startswith("sqlite"))
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise StoreError(f"cannot open store {safe_url(url)}: {type(exc).__name__}") from None
        if engine.dialect.name == "sqlite":
            _configure_sqlite(engine)
        elif engine.dialect.name != "postgresql":
            raise StoreError(f"unsupported store {safe_url(url)}: use sqlite:/// or postgresql://")
        store = cls(engine, batch_size=batch_size, clock=clock)
        if upgrade:
            store.upgrade()
        return store

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.engine.dialect.name

    @property
    def url(self) -> str:
        """The store URL with the password masked."""
        return self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    def upgrade(self, revision: str = "head") -> None:
        """Apply pending migrations in one transaction (under an advisory lock on Postgres)."""
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        try:
            with self.transaction() as conn:
                if self.dialect == "postgresql":
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
        except SQLAlchemyError as exc:
            # The driver message names the failing statement or host, never the password.
            detail = getattr(exc, "orig", None) or exc
            raise StoreError(f"cannot migrate store {self.url}: {type(exc).__name__}: {detail}") from exc

    def current_revision(self) -> str | None:
        """The applied migration (``None`` for an empty database)."""
        try:
            with self.engine.connect() as conn:
                if not self.engine.dialect.has_table(conn, "alembic_version"):
                    return None
                return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
        except SQLAlchemyError as exc:
            detail = getattr(exc, "orig", None) or exc
            raise StoreError(f"cannot read store {self.url}: {type(exc).__name__}: {detail}") from exc

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A connection inside one transaction: committed on success, rolled back on any error."""
        with self.engine.connect() as conn:
            # On SQLite take the write lock up front: a deferred transaction that later tries to
            # write can fail with SQLITE_BUSY at once instead of waiting out busy_timeout.
            conn.execution_options(ltvsync_immediate=True)
            with conn.begin():
                yield conn

    # -- bulk writes -----------------------------------------------------------------------

    def upsert_many(
        self, conn: Connection, table: TableLike, rows: Sequence[Mapping[str, Any]], key: Sequence[str]
    ) -> int:
        """Insert rows, or update the stored row with the same ``key`` if any column differs.

        Rows must all have the same columns.  Duplicates within ``rows`` collapse to the last one.
        Unchanged rows are not written (their ``row_version`` stays); changed rows get
        ``row_version + 1``.  Returns the number of rows inserted or changed.
        """
        if not rows:
            return 0
        tbl = _table(table)
        key_t = tuple(key)
        columns = tuple(rows[0].keys())
        plan_key = (tbl.name, columns, key_t)
        plan = self._plans.get(plan_key)
        if plan is None:
            plan = make_plan(conn, tbl, columns, key_t, self.batch_size)
            self._plans[plan_key] = plan
        key_of = itemgetter(*key_t)
        unique = list({key_of(row): row for row in rows}.values())
        return execute_plan(conn, plan, unique)

    # -- cursors ---------------------------------------------------------------------------

    def get_cursor(self, conn: Connection, connector: str, stream: str) -> str | None:
        t = m.TABLES["sync_state"]
        query = select(t.c.cursor).where(t.c.connector == connector, t.c.stream == stream)
        return conn.execute(query).scalar_one_or_none()

    def set_cursor(self, conn: Connection, connector: str, stream: str, cursor: str | None) -> None:
        row = {"connector": connector, "stream": stream, "cursor": cursor, "updated_at": self.clock()}
        self.upsert_many(conn, "sync_state", [row], key=("connector", "stream"))

    def get_cursors(self, conn: Connection) -> dict[tuple[str, str], str | None]:
        t = m.TABLES["sync_state"]
        return {(r.connector, r.stream): r.cursor for r in conn.execute(select(t))}

    # -- runs ------------------------------------------------------------------------------

    def start_run(self, trigger: str) -> int:
        """Record the start of a sync run (its own transaction, so it shows while the run works)."""
        t = m.TABLES["sync_run"]
        with self.transaction() as conn:
            values = {"trigger": trigger, "status": "running", "started_at": self.clock(), "counts": {}}
            result = conn.execute(insert(t).values(**values))
            run_id = result.inserted_primary_key
            assert run_id is not None
            return int(run_id[0])

    def finish_run(
        self,
        run_id: int,
        status: str,
        counts: Mapping[str, Any] | None = None,
        report: Mapping[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        """Close a run.  ``error`` must already be free of secrets; it is cut to a bounded size."""
        t = m.TABLES["sync_run"]
        values = {
            "status": status,
            "finished_at": self.clock(),
            "counts": dict(counts or {}),
            "report": dict(report) if report is not None else None,
            "error": error[:MAX_ERROR_CHARS] if error else None,
        }
        with self.transaction() as conn:
            result = conn.execute(update(t).where(t.c.id == run_id).values(**values))
            if result.rowcount != 1:
                raise StoreError(f"no sync run {run_id}")

    def list_runs(self, limit: int = 20) -> list[RunInfo]:
        """The latest runs, newest first."""
        t = m.TABLES["sync_run"]
        with self.engine.connect() as conn:
            rows = conn.execute(select(t).order_by(t.c.id.desc()).limit(limit)).all()
        return [_run_info(r._mapping) for r in rows]

    def get_run(self, run_id: int) -> RunInfo | None:
        t = m.TABLES["sync_run"]
        with self.engine.connect() as conn:
            row = conn.execute(select(t).where(t.c.id == run_id)).first()
        return None if row is None else _run_info(row._mapping)

    # -- quarantine ------------------------------------------------------------------------

    def quarantine(self, conn: Connection, rows: Iterable[Rejection], run_id: int | None = None) -> int:
        """Keep payloads that could not become records, verbatim, with their reason."""
        at = self.clock()
        values = [
            {
                "source": r.source,
                "stream": r.stream,
                # Postgres text cannot hold NUL; spell it out (on both stores) rather than lose the row.
                "payload": r.payload.replace("\x00", "\\x00"),
                "reason": r.reason + (" (NUL bytes written as \\x00)" if "\x00" in r.payload else ""),
                "at": at,
                "run_id": run_id,
            }
            for r in rows
        ]
        if values:
            conn.execute(insert(m.TABLES["quarantine"]), values)
        return len(values)

    # -- push state ------------------------------------------------------------------------

    def get_push_state(
        self, conn: Connection, destination: str, customer_ids: Iterable[int] | None = None
    ) -> dict[int, PushStateRow]:
        """Last pushed state per customer for ``destination`` (all customers, or those given)."""
        t = m.TABLES["push_state"]
        query = select(t).where(t.c.destination == destination)
        if customer_ids is None:
            rows = list(conn.execute(query))
        else:
            ids = list(customer_ids)
            rows = []
            # Chunked so the IN list stays under SQLite's parameter limit.
            for start in range(0, len(ids), 900):
                rows.extend(conn.execute(query.where(t.c.customer_id.in_(ids[start : start + 900]))))
        return {r.customer_id: PushStateRow(**r._mapping) for r in rows}

    def set_push_state(self, conn: Connection, states: Sequence[PushStateRow]) -> int:
        rows = [
            {
                "destination": s.destination,
                "customer_id": s.customer_id,
                "values_hash": s.values_hash,
                "values": dict(s.values) if s.values is not None else None,
                "pushed_at": s.pushed_at,
                "last_error": s.last_error,
                "attempts": s.attempts,
                "next_attempt_at": s.next_attempt_at,
            }
            for s in states
        ]
        return self.upsert_many(conn, "push_state", rows, key=("destination", "customer_id"))


def _table(table: TableLike) -> Table:
    if isinstance(table, Table):
        return table
    if isinstance(table, str):
        found = SQLModel.metadata.tables.get(table)
        if found is None:
            raise ValueError(f"unknown table {table!r}")
        return found
    return SQLModel.metadata.tables[str(table.__tablename__)]


def _run_info(row: RowMapping) -> RunInfo:
    return RunInfo(
        id=row["id"],
        trigger=row["trigger"],
        status=row["status"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        counts=row["counts"] or {},
        report=row["report"],
        error=row["error"],
    )


def _configure_sqlite(engine: Engine) -> None:
    """Per-connection pragmas and explicit BEGIN (the SQLAlchemy pysqlite recipe)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide where transactions begin.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys = ON")
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        if engine.url.database not in (None, "", ":memory:"):
            cur.execute("PRAGMA journal_mode = WAL")
            # NORMAL is durable across application crashes in WAL mode; only an OS crash can
            # lose the last commits, which the next cycle re-reads from the stored cursor.
            cur.execute("PRAGMA synchronous = NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("ltvsync_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
