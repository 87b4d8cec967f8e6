"""Salesforce source: contacts → customers, won opportunities → purchases, deletions, rejections.

Both streams are read incrementally by ``SystemModstamp`` with an ``Id`` tie-breaker: the query
``WHERE SystemModstamp >= <cursor time> ORDER BY SystemModstamp, Id`` runs against ``queryAll``
(so soft-deleted rows arrive as ``IsDeleted = true`` in the same order) and is paged with
``nextRecordsUrl``; rows at or before the stored ``(SystemModstamp, Id)`` are dropped client-side.
The lower bound is inclusive, so thousands of rows sharing one timestamp across a page boundary are
all read and none twice; each Salesforce page becomes one ``Page`` carrying the cursor of its last
row (the stream is sorted, so mid-way checkpoints are safe).

Vendor docs relied on: REST API guide "Query"/"QueryAll" and "Retrieving the Remaining SOQL Query
Results" (``nextRecordsUrl``, ≤2,000 rows a page), Object Reference for Contact and Opportunity
(``SystemModstamp``, ``IsDeleted``, ``ContactId``, ``CurrencyIsoCode``), and API-REFERENCE.md §1.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import requests

from ltvsync.config.settings import SalesforceSettings
from ltvsync.connectors.base import StreamSpec
from ltvsync.connectors.salesforce_bulk import bulk_query
from ltvsync.connectors.salesforce_client import QueryExpiredError, QueryPage, SalesforceClient
from ltvsync.connectors.salesforce_soql import (
    Clause,
    Keyset,
    count_soql,
    parse_filter,
    parse_sf_datetime,
    require_fields,
    select_soql,
)
from ltvsync.core.errors import ConfigError
from ltvsync.core.records import CustomerRecord, Deletion, Page, PurchaseRecord, Record, Rejection
from ltvsync.core.retry import RetryPolicy

SOURCE = "salesforce"
CONTACTS = "contacts"
OPPORTUNITIES = "opportunities"
# Columns every incremental query needs, whatever the object.
_CURSOR_FIELDS = ("Id", "SystemModstamp", "IsDeleted")
AttrValue = str | float | int | bool | None
# Re-runs of one read's query after its nextRecordsUrl expired, before giving up to the next cycle.
MAX_QUERY_RESTARTS = 3


@dataclass(frozen=True)
class SalesforceFieldMap:
    """API names of the standard fields we read; override for orgs that use custom fields."""

    email: str = "Email"
    first_name: str = "FirstName"
    last_name: str = "LastName"
    created: str = "CreatedDate"
    account: str = "AccountId"
    amount: str = "Amount"
    close_date: str = "CloseDate"
    contact: str = "ContactId"


@dataclass(frozen=True)
class _StreamPlan:
    spec: StreamSpec
    object_name: str
    fields: tuple[str, ...]
    row_filter: tuple[Clause, ...]
    described: Mapping[str, Mapping[str, Any]]


class SalesforceSource:
    """The ``Source`` for one Salesforce org."""

    name = SOURCE

    def __init__(
        self,
        settings: SalesforceSettings,
        *,
        base_currency: str,
        known_currencies: frozenset[str] | None = None,
        fields: SalesforceFieldMap | None = None,
        session: requests.Session | None = None,
        retry: RetryPolicy | None = None,
        client: SalesforceClient | None = None,
        bulk_poll_seconds: float = 5.0,
    ) -> None:
        self.settings = settings
        self.bulk_poll_seconds = bulk_poll_seconds
        self.base_currency = base_currency
        self.known_currencies = known_currencies
        self.fields = fields or SalesforceFieldMap()
        self.client = client or SalesforceClient(settings, session=session, retry=retry)
        # Parsed now so a bad filter fails at construction, before any request.
        self._contact_filter = parse_filter(settings.contact_filter)
        self._opportunity_filter = parse_filter(settings.opportunity_filter)
        self._plans: dict[str, _StreamPlan] = {}

    def streams(self) -> Sequence[StreamSpec]:
        return (
            StreamSpec(CONTACTS, "customer", cursor_field="SystemModstamp", is_sorted=True),
            StreamSpec(OPPORTUNITIES, "purchase", cursor_field="SystemModstamp", is_sorted=True),
        )

    def check(self) -> None:
        """Describe both objects and verify every configured field exists (ConfigError otherwise)."""
        self._plans.clear()
        for spec in self.streams():
            self._plan(spec.name)

    # -- planning: which fields, validated against describe ------------------------------------
    def _plan(self, stream: str) -> _StreamPlan:
        if stream in self._plans:
            return self._plans[stream]
        f, s = self.fields, self.settings
        if stream == CONTACTS:
            object_name, row_filter = s.contact_object, self._contact_filter
            wanted = [*_CURSOR_FIELDS, f.email, f.first_name, f.last_name, f.created, f.account]
        elif stream == OPPORTUNITIES:
            object_name, row_filter = s.opportunity_object, self._opportunity_filter
            wanted = [*_CURSOR_FIELDS, f.amount, f.close_date, f.contact]
            if s.currency_field:
                wanted.append(s.currency_field)
        else:
            raise ConfigError(f"Salesforce has no stream {stream!r}; streams: {CONTACTS}, {OPPORTUNITIES}")
        wanted += [c.field for c in row_filter]
        described = self.client.describe(object_name)
        require_fields(object_name, described, wanted)
        if stream == CONTACTS and s.push_object == object_name:
            # Current values of the push fields, so the core can tell a human edit from ours.
            wanted += [api for api in s.push_fields.values() if api in described]
        spec = next(sp for sp in self.streams() if sp.name == stream)
        plan = _StreamPlan(spec, object_name, tuple(dict.fromkeys(wanted)), row_filter, described)
        self._plans[stream] = plan
        return plan

    # -- reading -------------------------------------------------------------------------------
    def read(self, stream: str, cursor: str | None) -> Iterator[Page]:
        """Yield one page per Salesforce page, each with the cursor after its last row."""
        before = self.client.requests_made  # describe (first read only) counts toward page one
        plan = self._plan(stream)
        position = Keyset.decode(cursor)
        self.client.check_budget(self.settings.push_budget_reserve)
        if position is None and self._wants_backfill(plan):
            yield from self._backfill(plan, before)
            return
        result = self._query_from(plan, position)
        restarts = 0
        while True:
            records, rejections, position = self._convert(plan, result.get("records") or [], position)
            calls, before = self.client.requests_made - before, self.client.requests_made
            yield Page(records, position.encode() if position else cursor, rejections, api_calls=calls)
            next_url = result.get("nextRecordsUrl")
            if result.get("done", True) or not next_url:
                return
            self.client.check_budget(self.settings.push_budget_reserve)
            try:
                result = self.client.query_next(str(next_url))
            except QueryExpiredError:
                # The pipeline held the page longer than the locator lives: query again from here.
                restarts += 1
                if restarts > MAX_QUERY_RESTARTS:
                    raise
                result = self._query_from(plan, position)

    def _query_from(self, plan: _StreamPlan, position: Keyset | None) -> QueryPage:
        """First page of the stream's query from ``position`` (inclusive), deleted rows included."""
        soql = select_soql(plan.object_name, plan.fields, position.modstamp if position else None)
        return self.client.query_page(soql, include_deleted=True)

    def _wants_backfill(self, plan: _StreamPlan) -> bool:
        """First load of a big object: one ``COUNT()`` decides between REST paging and Bulk 2.0."""
        threshold = self.settings.bulk_backfill_threshold
        if threshold <= 0:
            return False
        counted = self.client.query_page(count_soql(plan.object_name))
        total = counted.get("totalSize")
        return isinstance(total, int) and total > threshold

    def _backfill(self, plan: _StreamPlan, before: int) -> Iterator[Page]:
        """A Bulk 2.0 query job: unsorted, so pages carry no cursor until the final, empty one."""
        soql = select_soql(plan.object_name, plan.fields, None, ordered=False)
        latest: Keyset | None = None
        for rows in bulk_query(
            self.client, plan.object_name, soql, plan.described, wait=self.bulk_poll_seconds
        ):
            records, rejections, seen = self._convert(plan, rows, None)
            latest = max(filter(None, (latest, seen)), default=None)
            calls, before = self.client.requests_made - before, self.client.requests_made
            yield Page(records, None, rejections, api_calls=calls)
        calls = self.client.requests_made - before
        yield Page((), latest.encode() if latest else None, (), api_calls=calls)

    def _convert(
        self, plan: _StreamPlan, rows: Sequence[Any], after: Keyset | None
    ) -> tuple[list[Record], list[Rejection], Keyset | None]:
        """Rows → records/rejections, dropping rows at or before ``after``; returns the max key seen."""
        position = after
        records: list[Record] = []
        rejections: list[Rejection] = []
        for row in rows:
            if not isinstance(row, Mapping):
                rejections.append(self._reject(plan, row, "row is not a JSON object"))
                continue
            record_id, modstamp = row.get("Id"), parse_sf_datetime(row.get("SystemModstamp"))
            if not isinstance(record_id, str) or not record_id:
                rejections.append(self._reject(plan, row, "missing Id"))
                continue
            if modstamp is None:
                rejections.append(self._reject(plan, row, "missing or unparseable SystemModstamp"))
                continue
            key = Keyset(modstamp, record_id)
            if after is not None and key <= after:
                continue  # read before: the inclusive lower bound re-reads the boundary rows
            # max(), not the last row: the cursor never goes backwards, even on unsorted input.
            position = key if position is None or key > position else position
            entity = plan.spec.entity
            if row.get("IsDeleted") is True or not all(c.matches(row) for c in plan.row_filter):
                # Deleted, or no longer matching the filter (an opportunity that is no longer won).
                records.append(Deletion(SOURCE, entity, record_id, modstamp))
                continue
            converted: Record | str = (
                self._contact(row, record_id, modstamp)
                if entity == "customer"
                else self._opportunity(row, record_id, modstamp)
            )
            if isinstance(converted, str):
                rejections.append(self._reject(plan, row, converted))
            else:
                records.append(converted)
        return records, rejections, position

    def _reject(self, plan: _StreamPlan, row: Any, reason: str) -> Rejection:
        payload = json.dumps(row, default=str, sort_keys=True)
        return Rejection(SOURCE, plan.spec.name, payload, reason)

    def _contact(self, row: Mapping[str, Any], record_id: str, modstamp: datetime) -> CustomerRecord | str:
        f = self.fields
        created_raw = row.get(f.created)
        created = parse_sf_datetime(created_raw)
        if created_raw and created is None:
            return f"unparseable {f.created} {created_raw!r}"
        email = row.get(f.email)
        name = " ".join(str(p) for p in (row.get(f.first_name), row.get(f.last_name)) if p) or None
        attributes: dict[str, AttrValue] = {f.account: _attr(row.get(f.account))}
        for api in self.settings.push_fields.values():
            if api in row:  # verbatim API names: the core maps them back with push_fields
                attributes[api] = _attr(row[api])
        return CustomerRecord(
            source=SOURCE,
            source_id=record_id,
            email=email if isinstance(email, str) and email else None,
            name=name,
            created_at=created,
            updated_at=modstamp,
            attributes=attributes,
        )

    def _opportunity(
        self, row: Mapping[str, Any], record_id: str, modstamp: datetime
    ) -> PurchaseRecord | str:
        f, s = self.fields, self.settings
        amount = _amount(row.get(f.amount))
        if isinstance(amount, str):
            return amount
        closed = _close_date(row.get(f.close_date))
        if closed is None:
            return f"missing or unparseable {f.close_date} {row.get(f.close_date)!r}"
        currency: Any = row.get(s.currency_field) if s.currency_field else self.base_currency
        if not isinstance(currency, str) or not currency:
            return f"missing currency in {s.currency_field}"
        currency = currency.upper()
        if self.known_currencies is not None and currency not in self.known_currencies:
            return f"unknown currency {currency!r}"
        contact = row.get(f.contact)
        return PurchaseRecord(
            source=SOURCE,
            source_id=record_id,
            customer_source_id=contact if isinstance(contact, str) and contact else None,
            customer_email=None,
            amount=amount,
            currency=currency,
            purchased_at=closed,
            updated_at=modstamp,
        )


def _attr(value: Any) -> AttrValue:
    """Wire value → attribute value (Decimal → float; anything nested → its JSON text)."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, Decimal):
        return float(value)
    return json.dumps(value, default=str)


def _amount(value: Any) -> Decimal | str:
    """A non-negative finite Decimal, or the rejection reason."""
    if value is None or value == "":
        return "missing Amount"
    if isinstance(value, bool):
        return f"non-numeric Amount {value!r}"
    try:
        amount = Decimal(str(value)) if not isinstance(value, Decimal) else value
    except InvalidOperation:
        return f"non-numeric Amount {value!r}"
    if not amount.is_finite():
        return f"non-numeric Amount {value!r}"
    if amount < 0:
        return f"negative Amount {value}"
    return amount


def _close_date(value: Any) -> datetime | None:
    """``2024-05-20`` (a date field) → midnight UTC; datetimes are accepted as they are."""
    if not isinstance(value, str) or not value:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        return parse_sf_datetime(value)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)
