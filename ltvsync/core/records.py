"""Source-neutral record types that connectors yield and the pipeline stores.

Every record carries the ``source`` it came from, the ``source_id`` the source knows it by and
the source's own timestamp (timezone-aware UTC).  Connectors build these from wire payloads; no
vendor type crosses into the core.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum


class EventKind(StrEnum):
    """Kinds of behavioural events the core understands; anything else is ``custom``."""

    LOGIN = "login"
    PAGE_VIEW = "page_view"
    EMAIL_OPEN = "email_open"
    REFERRAL = "referral"
    SIGNUP = "signup"
    ONBOARDING_COMPLETED = "onboarding_completed"
    PURCHASE = "purchase"
    CUSTOM = "custom"


@dataclass(frozen=True, slots=True)
class CustomerRecord:
    """A person as one source knows them (a Salesforce contact, a Mixpanel profile, a Zendesk user)."""

    source: str
    source_id: str
    email: str | None
    name: str | None
    created_at: datetime | None
    updated_at: datetime
    attributes: Mapping[str, str | float | int | bool | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PurchaseRecord:
    """A completed purchase; ``customer_source_id`` names the buyer within the same source."""

    source: str
    source_id: str
    customer_source_id: str | None
    customer_email: str | None
    amount: Decimal
    currency: str
    purchased_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class EventRecord:
    """A behavioural event; ``source_id`` is the de-duplication key (Mixpanel ``$insert_id``)."""

    source: str
    source_id: str
    customer_source_id: str
    kind: EventKind
    name: str
    occurred_at: datetime
    properties: Mapping[str, str | float | int | bool | None] = field(default_factory=dict)
    # A referral names the person referred (their email or source id), when the source says so.
    referred: str | None = None


@dataclass(frozen=True, slots=True)
class TicketRecord:
    """A support ticket; the latest state wins on re-read."""

    source: str
    source_id: str
    customer_source_id: str | None
    status: str
    created_at: datetime
    updated_at: datetime
    solved_at: datetime | None = None
    first_reply_minutes: float | None = None
    satisfaction: str | None = None


@dataclass(frozen=True, slots=True)
class Deletion:
    """The source deleted ``source_id`` of ``entity`` ("customer", "purchase", "ticket")."""

    source: str
    entity: str
    source_id: str
    deleted_at: datetime


@dataclass(frozen=True, slots=True)
class Rejection:
    """A payload the connector could not turn into a record: kept verbatim with the reason."""

    source: str
    stream: str
    payload: str
    reason: str


Record = CustomerRecord | PurchaseRecord | EventRecord | TicketRecord | Deletion


@dataclass(frozen=True, slots=True)
class Page:
    """A batch of records plus the cursor valid after it.

    ``cursor`` is ``None`` for pages of a stream that is not sorted by its cursor: such a stream
    checkpoints only with its last page.  The pipeline writes records, rejections and the cursor
    in one transaction.
    """

    records: Sequence[Record]
    cursor: str | None
    rejections: Sequence[Rejection] = ()
    # Requests the connector made to produce this page (for the run report's API-call counts).
    api_calls: int = 1
