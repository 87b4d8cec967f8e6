"""Salesforce destination: writes LTV fields onto Contacts with sObject Collections or Bulk 2.0.

Every item is validated before the first request (ids look like Salesforce ids, values have the
type their field needs, no id twice); an invalid item is answered locally with ``INVALID_ITEM`` and
never sent, so it cannot block the others.  ``plan`` cuts batches of ``SF_COLLECTIONS_MAX``;
``write`` sends one ``PATCH composite/sobjects`` with ``allOrNone: false`` and returns one
``PushResult`` per record, in order.  Above ``bulk_push_threshold`` records the pipeline calls ``write_bulk``,
one Bulk API 2.0 update job (see ``salesforce_bulk``).  Which values to send is the core's
decision (edit protection compares ``PushItem.previous`` with what the pull read); this module
only writes what it is handed and never sends a null unless ``write_nulls``.

Vendor docs relied on: REST API guide "sObject Collections: Update Records" (≤200 records a call,
per-record ``[{id, success, errors: [{statusCode, message, fields}]}]`` in input order), Object
Reference "Field Types" (currency, double, percent, textarea, datetime) and describe's
``updateable`` flag.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import requests

from ltvsync.config.settings import SalesforceSettings
from ltvsync.connectors.base import FieldValue, PushItem, PushResult
from ltvsync.connectors.salesforce_bulk import Outcome, bulk_update
from ltvsync.connectors.salesforce_client import SalesforceClient
from ltvsync.core.errors import ConfigError
from ltvsync.core.retry import RetryPolicy

log = logging.getLogger(__name__)
# sObject Collections accept at most 200 records per request.
SF_COLLECTIONS_MAX = 200
# 15-character case-sensitive or 18-character case-insafe Salesforce record ids.
_SF_ID_RE = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")


@dataclass(frozen=True)
class FieldKind:
    """What one of our push fields is: the Salesforce types it may live in, and its Python type."""

    create_as: str
    accepted: frozenset[str]
    description: str


FIELD_KINDS: dict[str, FieldKind] = {
    "ltv": FieldKind("currency", frozenset({"currency", "double"}), "Lifetime value to date (ltvsync)"),
    "ltv_predicted": FieldKind(
        "currency", frozenset({"currency", "double"}), "Predicted lifetime value over the horizon (ltvsync)"
    ),
    "p_alive": FieldKind("double", frozenset({"double", "percent"}), "Probability the customer is active"),
    "tags": FieldKind(
        "textarea", frozenset({"string", "textarea", "multipicklist"}), "LTV tags, ';'-separated (ltvsync)"
    ),
    "updated": FieldKind("datetime", frozenset({"datetime"}), "When ltvsync last computed these values"),
}


@dataclass(frozen=True)
class RequiredField:
    """A field the admin must create for the push (for ``ltvsync salesforce fields``)."""

    api_name: str
    type: str
    description: str


class SalesforceDestination:
    """The ``Destination`` that writes LTV fields to one Salesforce object (Contact by default)."""

    name = "salesforce"

    def __init__(
        self,
        settings: SalesforceSettings,
        *,
        session: requests.Session | None = None,
        retry: RetryPolicy | None = None,
        client: SalesforceClient | None = None,
        bulk_poll_seconds: float = 5.0,
    ) -> None:
        self.settings = settings
        self.client = client or SalesforceClient(settings, session=session, retry=retry)
        self.bulk_poll_seconds = bulk_poll_seconds
        self._calls = 0
        unknown = sorted(set(settings.push_fields) - set(FIELD_KINDS))
        if unknown:
            raise ConfigError(
                f"salesforce.push_fields has unknown key(s) {', '.join(unknown)}; "
                f"known: {', '.join(FIELD_KINDS)}"
            )

    # -- schema --------------------------------------------------------------------------------
    def required_fields(self) -> list[tuple[str, str, str]]:
        """(api_name, type, description) of every field the mapping needs on the push object."""
        return [
            (api, FIELD_KINDS[ours].create_as, FIELD_KINDS[ours].description)
            for ours, api in self.settings.push_fields.items()
        ]

    def check(self) -> None:
        """Describe the object; a missing, read-only or wrongly-typed field is a ConfigError."""
        obj = self.settings.push_object
        with self._counting():
            described = self.client.describe(obj)
        problems: list[str] = []
        for ours, api in self.settings.push_fields.items():
            kind, found = FIELD_KINDS[ours], described.get(api)
            if found is None:
                problems.append(f"{api} is missing")
            elif found.get("type") not in kind.accepted:
                problems.append(
                    f"{api} is {found.get('type')}, expected one of {', '.join(sorted(kind.accepted))}"
                )
            elif found.get("updateable") is False:
                problems.append(f"{api} is not updateable by this user")
        if problems:
            create = "; ".join(f"{api} ({typ})" for api, typ, _ in self.required_fields())
            raise ConfigError(
                f"Salesforce {obj}: {'; '.join(problems)}. Fields to create: {create} "
                "(`ltvsync salesforce fields` prints them)"
            )

    # -- validation and planning ---------------------------------------------------------------
    def validate(self, items: Sequence[PushItem]) -> list[PushResult]:
        """One failed ``PushResult`` per invalid item (bad id, wrong value type, duplicate id)."""
        failures: list[PushResult] = []
        seen: set[str] = set()
        for item in items:
            problem = self._problem(item, seen)
            seen.add(item.target_id)
            if problem is not None:
                failures.append(_invalid(item, problem))
        return failures

    def _problem(self, item: PushItem, seen: set[str]) -> str | None:
        if not isinstance(item.target_id, str) or not _SF_ID_RE.match(item.target_id):
            return f"target id {item.target_id!r} is not a Salesforce record id"
        if item.target_id in seen:
            return f"target id {item.target_id} appears twice in one push"
        for key, value in item.values.items():
            if key not in self.settings.push_fields:
                return f"value {key!r} has no field in salesforce.push_fields"
            problem = _value_problem(key, value)
            if problem is not None:
                return problem
        return None

    def plan(self, items: Sequence[PushItem]) -> list[list[PushItem]]:
        """Batches of ≤ ``SF_COLLECTIONS_MAX``, every item validated before the first request.

        Invalid items stay in their batch (results stay aligned with the caller's items) and
        ``write`` answers them with an ``INVALID_ITEM`` result without sending them, so one bad
        value never blocks the other customers.
        """
        failures = self.validate(items)
        if failures:
            listed = "; ".join(f"customer {f.customer_id}: {f.message}" for f in failures[:5])
            log.warning("%d Salesforce push item(s) will not be sent: %s", len(failures), listed)
        return [list(items[i : i + SF_COLLECTIONS_MAX]) for i in range(0, len(items), SF_COLLECTIONS_MAX)]

    def use_bulk(self, count: int) -> bool:
        """Whether a push of ``count`` records should go through Bulk 2.0 instead of collections."""
        return count > self.settings.bulk_push_threshold

    def api_calls(self) -> int:
        """Requests this destination made (the client may be shared with the source)."""
        return self._calls

    @contextmanager
    def _counting(self) -> Iterator[None]:
        start = self.client.requests_made
        try:
            yield
        finally:
            self._calls += self.client.requests_made - start

    # -- writing -------------------------------------------------------------------------------
    def fields_for(self, values: Mapping[str, FieldValue]) -> dict[str, FieldValue]:
        """Our values → ``{api_name: value}``, dropping nulls unless ``write_nulls``."""
        return {
            self.settings.push_fields[key]: value
            for key, value in values.items()
            if value is not None or self.settings.write_nulls
        }

    def write(self, batch: Sequence[PushItem]) -> list[PushResult]:
        """One ``PATCH composite/sobjects`` (allOrNone false); one result per item, in order."""
        if len(batch) > SF_COLLECTIONS_MAX:
            raise ValueError(f"a Salesforce collections batch holds at most {SF_COLLECTIONS_MAX} records")
        results: dict[int, PushResult] = {}
        sendable: list[tuple[int, PushItem, dict[str, FieldValue]]] = []
        seen: set[str] = set()
        for index, item in enumerate(batch):
            problem = self._problem(item, seen)
            seen.add(item.target_id)
            if problem is not None:
                results[index] = _invalid(item, problem)
                continue
            fields = self.fields_for(item.values)
            if fields:
                sendable.append((index, item, fields))
            else:  # nothing but nulls: nothing to write
                results[index] = PushResult(item.customer_id, ok=True, skipped=True)
        if sendable:
            records = [self._record(item.target_id, fields) for _, item, fields in sendable]
            body = {"allOrNone": False, "records": records}
            with self._counting():
                answer = self.client.restful(
                    "composite/sobjects", method="PATCH", json=body, what="collections update"
                )
            for (index, item, _), outcome in zip(sendable, _outcomes(answer, len(sendable)), strict=True):
                results[index] = PushResult(item.customer_id, *outcome)
        return [results[i] for i in range(len(batch))]

    def _record(self, target_id: str, fields: Mapping[str, FieldValue]) -> dict[str, Any]:
        record: dict[str, Any] = {"attributes": {"type": self.settings.push_object}, "id": target_id}
        record.update(fields)
        return record

    def write_bulk(self, items: Sequence[PushItem]) -> list[PushResult]:
        """One Bulk API 2.0 update job for a large push; one result per item, in order."""
        seen: set[str] = set()
        problems: list[str | None] = []
        for item in items:  # by position: one customer may own several contacts
            problems.append(self._problem(item, seen))
            seen.add(item.target_id)
        fields = [self.fields_for(item.values) for item in items]
        rows = [
            (it.target_id, f) for it, f, p in zip(items, fields, problems, strict=True) if p is None and f
        ]
        outcome: dict[str, Outcome] = {}
        if rows:
            with self._counting():
                outcome = bulk_update(
                    self.client, self.settings.push_object, rows, wait=self.bulk_poll_seconds
                )
        results = []
        for item, sent, problem in zip(items, fields, problems, strict=True):
            if problem is not None:
                results.append(_invalid(item, problem))
            elif not sent:  # nothing but nulls: nothing to write
                results.append(PushResult(item.customer_id, ok=True, skipped=True))
            else:
                ok, code, message = outcome.get(
                    item.target_id, (False, "UNPROCESSED", "not in the job's results")
                )
                results.append(PushResult(item.customer_id, ok, code, message))
        return results


def _invalid(item: PushItem, problem: str) -> PushResult:
    return PushResult(item.customer_id, ok=False, status_code="INVALID_ITEM", message=problem)


def _value_problem(key: str, value: FieldValue) -> str | None:
    """Why ``value`` cannot go into field ``key``, or None."""
    if value is None:
        return None
    if key in ("ltv", "ltv_predicted", "p_alive"):
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            return f"{key} must be a number, got {value!r}"
        if key == "p_alive" and not 0.0 <= float(value) <= 1.0:
            return f"p_alive must be within [0, 1], got {value!r}"
        return None
    if not isinstance(value, str):
        return f"{key} must be text, got {value!r}"
    if key == "updated":
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return f"updated must be an ISO-8601 datetime, got {value!r}"
        if parsed.tzinfo is None:
            return f"updated must carry a timezone, got {value!r}"
    return None


def _outcomes(answer: Any, expected: int) -> list[tuple[bool, str | None, str | None]]:
    """Per-record (ok, statusCode, message) from a collections response, in input order."""
    if not isinstance(answer, list) or len(answer) != expected:
        message = f"expected {expected} results, got {type(answer).__name__}"
        return [(False, "UNEXPECTED_RESPONSE", message)] * expected
    outcomes: list[tuple[bool, str | None, str | None]] = []
    for entry in answer:
        if isinstance(entry, dict) and entry.get("success") is True:
            outcomes.append((True, None, None))
            continue
        errors = entry.get("errors") if isinstance(entry, dict) else None
        first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
        code = str(first.get("statusCode") or "UNKNOWN_ERROR")
        message = (
            "; ".join(str(e.get("message", "")) for e in errors if isinstance(e, dict)) if errors else ""
        )
        outcomes.append((False, code, message or None))
    return outcomes
