"""Airtable push connector: upsert LTV fields into one table, keyed on a configured field.

Writes go through pyairtable's ``Table.batch_upsert(..., key_fields=[key_field], typecast=True)``,
one call per batch of at most ``AIRTABLE_MAX_BATCH`` records, so every call is exactly one request
and its outcome maps to exactly the records in it.  Batches are validated before the first call
(size, key present, field names known); a record that fails validation gets a failed result and
is never sent.  A token-bucket throttle keeps us under 5 requests/second per base, so we do not
earn Airtable's 30-second 429 penalty; pyairtable's urllib3 retry still covers a stray 429.

Vendor docs: airtable.com/developers/web/api/update-multiple-records (performUpsert,
createdRecords/updatedRecords), .../rate-limits (5 req/s per base, 30 s penalty), .../errors
(``{"error": {"type", "message"}}``), .../get-base-schema (``GET /v0/meta/bases/{id}/tables``);
pyairtable 3.x ``api/table.py``, ``api/retrying.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

import requests
from pyairtable import Api

from ltvsync.config.settings import AirtableSettings
from ltvsync.connectors.base import FieldValue, PushItem, PushResult
from ltvsync.connectors.http import Throttle, map_exceptions, rule_for
from ltvsync.core.errors import ConfigError, RecordError
from ltvsync.core.retry import RetryPolicy

log = logging.getLogger(__name__)

AIRTABLE_MAX_BATCH = 10
AIRTABLE_MAX_REQUESTS_PER_SECOND = 5.0
# Read timeout matters: a hung upsert would otherwise stall the whole cycle (pyairtable's is None).
TIMEOUT = (10, 60)
# Logical value name whose text is a comma-separated tag list, sent as a multipleSelects list.
TAGS_VALUE = "tags"
TAG_SEPARATOR = ","
MULTI_SELECT_TYPE = "multipleSelects"
# Result status codes for records we refuse to send.
MISSING_KEY = "MISSING_KEY"
NOT_FOUND = 404


class _FieldSchema(TypedDict, total=False):
    id: str
    name: str
    type: str


class _TableSchema(TypedDict, total=False):
    id: str
    name: str
    fields: list[_FieldSchema]


class AirtableDestination:
    """Destination writing ``PushItem.values`` (logical names) to mapped Airtable fields."""

    name = "airtable"

    def __init__(
        self,
        settings: AirtableSettings,
        *,
        api: Api | None = None,
        policy: RetryPolicy | None = None,
        throttle: Throttle | None = None,
    ) -> None:
        if not settings.base_id:
            raise ConfigError("airtable: set airtable.base_id")
        if api is None:
            if settings.api_key is None:
                raise ConfigError("airtable: set airtable.api_key (LTVSYNC_AIRTABLE__API_KEY)")
            api = Api(
                settings.api_key.get_secret_value(),
                timeout=TIMEOUT,
                endpoint_url=settings.endpoint_url or "https://api.airtable.com",
            )
        self.settings = settings
        self.api = api
        self.table = api.table(settings.base_id, settings.table)
        self.policy = policy or RetryPolicy()
        rate = min(settings.requests_per_second, AIRTABLE_MAX_REQUESTS_PER_SECOND)
        self.throttle = throttle or Throttle(rate)
        # Airtable field names we may write: the mapped ones plus the key field.
        self.known_fields = frozenset(settings.fields.values()) | {settings.key_field}
        # Until check() reads the schema, assume the tags field is a multipleSelects.
        self.tags_as_list = True
        self._calls = 0

    def api_calls(self) -> int:
        """Requests made so far (throttled attempts; pyairtable's internal 429 retries excluded)."""
        return self._calls

    def _request(self, what: str, fn: Any, *, write: bool = False) -> Any:
        """One throttled, classified, retried request."""

        def attempt() -> Any:
            self.throttle.acquire()
            self._calls += 1
            with map_exceptions(what, write=write):
                return fn()

        return self.policy.call(attempt, what=what)

    # -- check ---------------------------------------------------------------------------------

    def check(self) -> None:
        """Every mapped field must exist in the table; a missing one is a ConfigError naming it."""
        base = self.settings.base_id
        url = self.api.build_url(f"meta/bases/{base}/tables")

        def fetch_schema() -> Any:
            try:
                return self.api.request("GET", url)
            except requests.HTTPError as exc:
                if exc.response is not None and exc.response.status_code == NOT_FOUND:
                    return None
                raise

        body = self._request("airtable schema", fetch_schema)
        if body is None:
            # Emulators (and tokens without schema.bases:read on some setups) lack the metadata
            # endpoint: list one record instead, which at least proves the token and table.
            log.warning("airtable: schema endpoint unavailable; field names checked on first write")
            self._request("airtable list", lambda: self.table.first())
            return
        tables: list[_TableSchema] = body.get("tables", []) if isinstance(body, dict) else []
        wanted = self.settings.table
        table = next((t for t in tables if wanted in (t.get("name"), t.get("id"))), None)
        if table is None:
            raise ConfigError(f"airtable: table {wanted!r} not found in base {base} (airtable.table)")
        types = {f.get("name", ""): f.get("type", "") for f in table.get("fields", [])}
        missing = sorted(name for name in self.known_fields if name not in types)
        if missing:
            raise ConfigError(
                f"airtable: field(s) {', '.join(map(repr, missing))} not in table {wanted!r}; "
                "fix airtable.fields / airtable.key_field or add the columns"
            )
        tags_field = self.settings.fields.get(TAGS_VALUE)
        if tags_field is not None:
            self.tags_as_list = types.get(tags_field) == MULTI_SELECT_TYPE

    # -- plan ----------------------------------------------------------------------------------

    def _airtable_name(self, value_name: str) -> str:
        if value_name in self.settings.fields:
            return self.settings.fields[value_name]
        if value_name in self.known_fields:
            return value_name
        raise ConfigError(
            f"airtable: value {value_name!r} has no column in airtable.fields "
            f"(known: {', '.join(sorted(self.settings.fields))})"
        )

    def plan(self, items: Sequence[PushItem]) -> list[list[PushItem]]:
        """Validate every item's field names up front, then split into batches of 10."""
        for item in items:
            for value_name in item.values:
                self._airtable_name(value_name)
        return [list(items[i : i + AIRTABLE_MAX_BATCH]) for i in range(0, len(items), AIRTABLE_MAX_BATCH)]

    def fields_for(self, item: PushItem) -> dict[str, Any]:
        """The Airtable ``fields`` object for one item (key field from ``target_id``)."""
        fields: dict[str, Any] = {}
        for value_name, value in item.values.items():
            fields[self._airtable_name(value_name)] = self._wire_value(value_name, value)
        fields[self.settings.key_field] = item.target_id
        return fields

    def _wire_value(self, value_name: str, value: FieldValue) -> Any:
        if value_name == TAGS_VALUE and self.tags_as_list:
            # multipleSelects takes a list; typecast=True creates options we have not seen yet.
            if value is None:
                return []
            return [tag.strip() for tag in str(value).split(TAG_SEPARATOR) if tag.strip()]
        return value

    # -- write ---------------------------------------------------------------------------------

    def write(self, batch: Sequence[PushItem]) -> list[PushResult]:
        """Upsert one batch (one request); one result per item, in order."""
        if len(batch) > AIRTABLE_MAX_BATCH:
            # A programming error upstream: never send a batch Airtable would reject whole.
            raise ValueError(f"airtable batch of {len(batch)} exceeds {AIRTABLE_MAX_BATCH}; use plan()")
        results: dict[int, PushResult] = {}
        to_send: list[tuple[int, PushItem, dict[str, Any]]] = []
        for index, item in enumerate(batch):
            if not item.target_id:
                results[index] = PushResult(
                    item.customer_id, False, MISSING_KEY, f"no {self.settings.key_field}"
                )
                continue
            to_send.append((index, item, self.fields_for(item)))
        if to_send:
            results.update(self._upsert(to_send))
        return [results[i] for i in range(len(batch))]

    def _upsert(self, to_send: list[tuple[int, PushItem, dict[str, Any]]]) -> dict[int, PushResult]:
        records = [{"fields": fields} for _, _, fields in to_send]
        key = [self.settings.key_field]
        try:
            response = self._request(
                "airtable upsert",
                lambda: self.table.batch_upsert(records, key_fields=key, typecast=True),
                write=True,
            )
        except RecordError as exc:
            # The whole batch was refused (422 and friends): report each record with the reason.
            code, message = _error_details(exc.__cause__)
            return {i: PushResult(item.customer_id, False, code, message) for i, item, _ in to_send}
        created = set(response.get("createdRecords", []))
        returned = response.get("records", [])
        out: dict[int, PushResult] = {}
        for position, (index, item, _) in enumerate(to_send):
            record_id = returned[position].get("id") if position < len(returned) else None
            outcome = "created" if record_id in created else "updated"
            out[index] = PushResult(item.customer_id, True, None, f"{outcome} {record_id or ''}".strip())
        return out


def _error_details(exc: BaseException | None) -> tuple[str, str]:
    """(type, message) from an Airtable error body; both body shapes (object and string) occur."""
    response = getattr(exc, "response", None)
    if not isinstance(response, requests.Response):
        return "ERROR", str(exc) if exc is not None else "unknown error"
    status = str(response.status_code)
    try:
        body = response.json()
    except ValueError:
        return status, rule_for(response.status_code).why
    error = body.get("error") if isinstance(body, Mapping) else None
    if isinstance(error, Mapping):
        return str(error.get("type") or status), str(error.get("message") or "")
    if isinstance(error, str):
        return error, str(body.get("message") or "")
    return status, rule_for(response.status_code).why
