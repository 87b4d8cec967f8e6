"""The store's tables as SQLModel classes, plus the two column types every table shares.

These classes describe the schema for queries and for Alembic's autogenerate check; the schema
itself is created and evolved only by the migrations in ``ltvsync/core/migrations/versions``.
Bulk writes go through ``Store.upsert_many`` (SQLAlchemy Core), never through ORM sessions.

Relies on: SQLAlchemy 2.x "Custom Types" (TypeDecorator) and SQLModel's ``sa_column`` escape hatch.
Datetimes are stored as UTC: ``timestamptz`` on Postgres, ISO text without offset on SQLite
(SQLite has no time-zone type), and always come back timezone-aware UTC.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    Table,
    Text,
    false,
    text,
)
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

# Money: 18 digits with 4 decimals covers every currency's minor units with room for FX maths.
MONEY = Numeric(18, 4)


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on both dialects.

    Naive datetimes are refused rather than guessed: a naive value is a bug upstream (every
    record type carries aware UTC timestamps), and guessing would silently shift data by hours.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} given; use timezone-aware UTC")
        value = value.astimezone(UTC)
        # SQLite stores text; dropping the (always UTC) offset keeps values sortable as strings.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        # Bulk upserts bind millions of timestamps; on SQLite one isoformat call replaces the
        # decorator-plus-strftime chain and yields SQLAlchemy's exact text format.
        if dialect.name == "sqlite":
            return _sqlite_utc_text
        return super().bind_processor(dialect)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _sqlite_utc_text(value: datetime | None) -> str | None:
    """``YYYY-MM-DD HH:MM:SS.ffffff`` in UTC, the text SQLAlchemy's SQLite DateTime stores."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value.isoformat()} given; use timezone-aware UTC")
    if value.utcoffset():
        value = value.astimezone(UTC)
    # Fixed width up to the offset ("+00:00"), which the slice drops.
    return value.isoformat(" ", "microseconds")[:26]


class JsonText(TypeDecorator[Any]):
    """JSON stored as text with sorted keys, so equal values give equal text.

    Equal text matters: ``upsert_many`` skips rows whose columns are not distinct from the stored
    ones, and a re-ordered dict must not count as a change.
    """

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else _JSON.encode(value)

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        return _json_text  # skips the decorator's generic wrapper on the bulk path

    def process_result_value(self, value: str | None, dialect: Dialect) -> Any:
        return None if value is None else json.loads(value)


def _json_default(value: object) -> str | float:
    """Serialise the non-JSON scalars records carry (Decimal amounts, datetimes)."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=_json_default)


def _json_text(value: Any) -> str | None:
    return None if value is None else _JSON.encode(value)


def _utc(nullable: bool = True, **kw: Any) -> Any:
    return Field(default=None, sa_column=Column(UtcDateTime(), nullable=nullable, **kw))


def _row_version() -> Any:
    # Incremented by upsert_many only when a row really changed; tests and incremental
    # computations use it to see which rows an upsert touched.
    return Field(default=1, sa_column=Column(Integer, nullable=False, server_default=text("1")))


def _deleted() -> Any:
    return Field(default=False, sa_column=Column(Boolean, nullable=False, server_default=false()))


def _customer_fk(index: bool = True) -> Any:
    column = Column(Integer, ForeignKey("customer.id"), nullable=True, index=index)
    return Field(default=None, sa_column=column)


class Customer(SQLModel, table=True):
    """One person, keyed internally; ``merged_into`` points at the customer that absorbed it."""

    __tablename__ = "customer"
    __table_args__ = (
        # Unique among live customers only: a merged customer keeps its email for history.
        Index(
            "ux_customer_email_live",
            "email",
            unique=True,
            sqlite_where=text("merged_into IS NULL"),
            postgresql_where=text("merged_into IS NULL"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    email: str | None = Field(default=None, max_length=320)
    name: str | None = None
    customer_since: datetime | None = _utc()
    first_purchase_at: datetime | None = _utc()
    merged_into: int | None = Field(
        default=None, sa_column=Column(Integer, ForeignKey("customer.id"), nullable=True)
    )
    created_at: datetime | None = _utc(nullable=False)
    updated_at: datetime | None = _utc(nullable=False)


class Identity(SQLModel, table=True):
    """A person as one source knows them; ``customer_id`` is NULL while unlinked."""

    __tablename__ = "identity"

    source: str = Field(primary_key=True, max_length=64)
    source_id: str = Field(primary_key=True, max_length=255)
    customer_id: int | None = _customer_fk()
    email: str | None = None
    name: str | None = None
    created_at: datetime | None = _utc()
    updated_at: datetime | None = _utc()
    attributes: Any = Field(default=None, sa_column=Column(JsonText(), nullable=True))
    deleted: bool = _deleted()
    row_version: int = _row_version()


class Purchase(SQLModel, table=True):
    __tablename__ = "purchase"
    __table_args__ = (Index("ix_purchase_customer_source", "source", "customer_source_id"),)

    source: str = Field(primary_key=True, max_length=64)
    source_id: str = Field(primary_key=True, max_length=255)
    customer_source_id: str | None = None
    customer_email: str | None = None
    customer_id: int | None = _customer_fk()
    amount: Decimal = Field(sa_column=Column(MONEY, nullable=False))
    currency: str = Field(max_length=3)
    amount_base: Decimal | None = Field(default=None, sa_column=Column(MONEY, nullable=True))
    purchased_at: datetime | None = _utc(nullable=False)
    updated_at: datetime | None = _utc()
    deleted: bool = _deleted()
    row_version: int = _row_version()


class Event(SQLModel, table=True):
    """A behavioural event; ``source_id`` is the source's de-duplication key (``$insert_id``)."""

    __tablename__ = "event"
    __table_args__ = (Index("ix_event_customer_source", "source", "customer_source_id"),)

    source: str = Field(primary_key=True, max_length=64)
    source_id: str = Field(primary_key=True, max_length=255)
    customer_source_id: str | None = None
    customer_id: int | None = _customer_fk()
    kind: str = Field(max_length=32)
    name: str
    occurred_at: datetime | None = _utc(nullable=False)
    properties: Any = Field(default=None, sa_column=Column(JsonText(), nullable=True))
    referred: str | None = None
    row_version: int = _row_version()


class Ticket(SQLModel, table=True):
    __tablename__ = "ticket"
    __table_args__ = (Index("ix_ticket_customer_source", "source", "customer_source_id"),)

    source: str = Field(primary_key=True, max_length=64)
    source_id: str = Field(primary_key=True, max_length=255)
    customer_source_id: str | None = None
    customer_id: int | None = _customer_fk()
    status: str = Field(max_length=32)
    created_at: datetime | None = _utc(nullable=False)
    updated_at: datetime | None = _utc(nullable=False)
    solved_at: datetime | None = _utc()
    first_reply_minutes: float | None = Field(default=None, sa_column=Column(Float, nullable=True))
    satisfaction: str | None = Field(default=None, max_length=32)
    deleted: bool = _deleted()
    row_version: int = _row_version()


class SyncState(SQLModel, table=True):
    """The cursor of one stream, written in the same transaction as the page it follows."""

    __tablename__ = "sync_state"

    connector: str = Field(primary_key=True, max_length=64)
    stream: str = Field(primary_key=True, max_length=64)
    cursor: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    updated_at: datetime | None = _utc(nullable=False)


class SyncRun(SQLModel, table=True):
    __tablename__ = "sync_run"

    id: int | None = Field(default=None, primary_key=True)
    trigger: str = Field(max_length=32)
    started_at: datetime | None = _utc(nullable=False)
    finished_at: datetime | None = _utc()
    status: str = Field(max_length=16)
    counts: Any = Field(default=None, sa_column=Column(JsonText(), nullable=True))
    report: Any = Field(default=None, sa_column=Column(JsonText(), nullable=True))
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class CustomerMetrics(SQLModel, table=True):
    __tablename__ = "customer_metrics"

    customer_id: int = Field(sa_column=Column(Integer, ForeignKey("customer.id"), primary_key=True))
    as_of: datetime | None = _utc(nullable=False)
    orders: int = 0
    revenue: float = 0.0
    aov: float | None = None
    frequency: float | None = None
    tenure_days: float | None = None
    recency_days: float | None = None
    days_since_start: float | None = None
    ltv_simple: float | None = None
    ltv_predicted: float | None = None
    p_alive: float | None = None
    expected_purchases: float | None = None
    prior_weight: float | None = None
    tags: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    model_version: str | None = Field(default=None, max_length=64)


class MergeLog(SQLModel, table=True):
    __tablename__ = "merge_log"

    id: int | None = Field(default=None, primary_key=True)
    kept_customer_id: int = Field(sa_column=Column(Integer, ForeignKey("customer.id"), nullable=False))
    merged_customer_id: int = Field(sa_column=Column(Integer, ForeignKey("customer.id"), nullable=False))
    reason: str = Field(sa_column=Column(Text, nullable=False))
    at: datetime | None = _utc(nullable=False)


class PushState(SQLModel, table=True):
    """What was last pushed to a destination for a customer, and how the last attempt went."""

    __tablename__ = "push_state"

    destination: str = Field(primary_key=True, max_length=64)
    customer_id: int = Field(sa_column=Column(Integer, ForeignKey("customer.id"), primary_key=True))
    values_hash: str | None = Field(default=None, max_length=128)
    values: Any = Field(default=None, sa_column=Column(JsonText(), nullable=True))
    pushed_at: datetime | None = _utc()
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default=text("0")))
    next_attempt_at: datetime | None = _utc()


class Quarantine(SQLModel, table=True):
    """Input that could not be stored as a record, kept verbatim with the reason."""

    __tablename__ = "quarantine"

    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(max_length=64)
    stream: str = Field(max_length=64)
    payload: str = Field(sa_column=Column(Text, nullable=False))
    reason: str = Field(sa_column=Column(Text, nullable=False))
    at: datetime | None = _utc(nullable=False)
    run_id: int | None = Field(
        default=None, sa_column=Column(Integer, ForeignKey("sync_run.id"), nullable=True, index=True)
    )


# The tables this module defines, by name (later migrations add tag and cohort tables).
TABLE_NAMES = (
    "customer",
    "identity",
    "purchase",
    "event",
    "ticket",
    "sync_state",
    "sync_run",
    "customer_metrics",
    "merge_log",
    "push_state",
    "quarantine",
)
TABLES: dict[str, Table] = {name: SQLModel.metadata.tables[name] for name in TABLE_NAMES}
