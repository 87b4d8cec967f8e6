"""Tables of the tag and cohort stage: current tag membership, its enter/leave history, daily tag
counts, weekly cohort snapshots and business-event annotations.

Created by migration ``0002_tags_cohorts``; like ``ltvsync.core.models`` these classes describe
the schema for queries and Alembic's comparison, and bulk writes go through ``Store.upsert_many``.
Relies on SQLModel's ``sa_column`` escape hatch and the shared ``UtcDateTime`` / ``JsonText`` types.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import Column, Date, Float, ForeignKey, Index, Integer, Table, Text
from sqlmodel import Field, SQLModel

from ltvsync.core.models import JsonText, UtcDateTime

TAG_NAME_LENGTH = 64


def _utc(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(UtcDateTime(), nullable=nullable))


class TagMembership(SQLModel, table=True):
    """Who holds which tag now; ``since`` is when they entered it."""

    __tablename__ = "tag_membership"

    customer_id: int = Field(sa_column=Column(Integer, ForeignKey("customer.id"), primary_key=True))
    tag: str = Field(primary_key=True, max_length=TAG_NAME_LENGTH)
    since: datetime | None = _utc(nullable=False)


class TagHistory(SQLModel, table=True):
    """One customer entering or leaving one tag, with the values that decided it."""

    __tablename__ = "tag_history"
    __table_args__ = (Index("ix_tag_history_customer_at", "customer_id", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    customer_id: int = Field(sa_column=Column(Integer, ForeignKey("customer.id"), nullable=False))
    tag: str = Field(max_length=TAG_NAME_LENGTH)
    action: str = Field(max_length=8)  # "enter" | "leave"
    at: datetime | None = _utc(nullable=False)
    rule: str = Field(sa_column=Column(Text, nullable=False))
    values: Any = Field(default=None, sa_column=Column(JsonText(), nullable=True))
    model_version: str | None = Field(default=None, max_length=64)


class TagCountSnapshot(SQLModel, table=True):
    """Members per tag per day (the last run of a day wins): trends and "change since last week"."""

    __tablename__ = "tag_count_snapshot"

    day: date = Field(sa_column=Column(Date, primary_key=True))
    tag: str = Field(primary_key=True, max_length=TAG_NAME_LENGTH)
    customers: int = Field(sa_column=Column(Integer, nullable=False))


class CohortSnapshot(SQLModel, table=True):
    """One cohort's figures as of one week (``snapshot_date`` is that week's Monday)."""

    __tablename__ = "cohort_snapshot"

    snapshot_date: date = Field(sa_column=Column(Date, primary_key=True))
    period: str = Field(primary_key=True, max_length=8)  # "month" | "week"
    period_start: date = Field(sa_column=Column(Date, primary_key=True))
    customers: int = Field(sa_column=Column(Integer, nullable=False))
    ltv_simple_avg: float | None = Field(default=None, sa_column=Column(Float, nullable=True))
    ltv_predicted_avg: float | None = Field(default=None, sa_column=Column(Float, nullable=True))
    # retention[k] / revenue_per_customer[k]: share active in, and cumulative revenue through, period k.
    retention: Any = Field(default=None, sa_column=Column(JsonText(), nullable=True))
    revenue_per_customer: Any = Field(default=None, sa_column=Column(JsonText(), nullable=True))
    as_of: datetime | None = _utc(nullable=False)


class Annotation(SQLModel, table=True):
    """A named business event ("price increase") that cohorts can be compared around."""

    __tablename__ = "annotation"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_column=Column(Text, nullable=False, unique=True))
    at: datetime | None = _utc(nullable=False)
    note: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime | None = _utc(nullable=False)


TAG_TABLE_NAMES = ("tag_membership", "tag_history", "tag_count_snapshot", "cohort_snapshot", "annotation")
TAG_TABLES: dict[str, Table] = {name: SQLModel.metadata.tables[name] for name in TAG_TABLE_NAMES}
