"""Source and Destination protocols shared by every connector.

A source declares streams and reads pages (records + the cursor valid after them); a destination
plans batches of changed customers and writes them, returning one result per record.  Connectors
never touch the store: the pipeline writes a page and its cursor in one transaction.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ltvsync.core.records import Page

FieldValue = str | float | int | bool | None


@dataclass(frozen=True)
class StreamSpec:
    """What a stream is: its name, the entity it loads and whether it arrives sorted by its cursor."""

    name: str
    entity: str  # "customer" | "purchase" | "event" | "ticket"
    primary_key: str = "source_id"
    cursor_field: str | None = None
    # Only a stream sorted by its cursor may checkpoint mid-way (singer-sdk's rule).
    is_sorted: bool = True


@runtime_checkable
class Source(Protocol):
    """A system we pull from."""

    name: str

    def streams(self) -> Sequence[StreamSpec]: ...

    def check(self) -> None:
        """Validate credentials and configured fields; raise ``ConfigError`` naming what to fix."""

    def read(self, stream: str, cursor: str | None) -> Iterator[Page]:
        """Yield pages after ``cursor`` (inclusive lower bound; the store de-duplicates)."""


@dataclass(frozen=True)
class PushItem:
    """Desired values for one customer at one destination.

    ``target_id`` is the destination's record id when known (Salesforce Contact Id), else the key
    value (Airtable key field).  ``previous`` are the values we last wrote, for edit protection.
    """

    customer_id: int
    target_id: str
    values: Mapping[str, FieldValue]
    previous: Mapping[str, FieldValue] | None = None


@dataclass(frozen=True)
class PushResult:
    """Outcome for one record: ``ok`` or a vendor status code and message."""

    customer_id: int
    ok: bool
    status_code: str | None = None
    message: str | None = None
    skipped: bool = False


@runtime_checkable
class Destination(Protocol):
    """A system we push LTV fields to."""

    name: str

    def check(self) -> None:
        """Validate the mapping against the destination's schema; raise ``ConfigError``."""

    def plan(self, items: Sequence[PushItem]) -> list[list[PushItem]]:
        """Split changed items into the largest batches the API allows, validated up front."""

    def write(self, batch: Sequence[PushItem]) -> list[PushResult]:
        """Write one batch; one result per item, in order."""

    def api_calls(self) -> int:
        """Requests made so far (for the run report)."""
