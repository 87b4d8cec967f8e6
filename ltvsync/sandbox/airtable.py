"""Airtable Web API emulator (plain HTTP): list/create/update/upsert/delete records and base schema.

Reproduces what pyairtable 3.5 sends and requires (API-REFERENCE §3): bearer tokens (401
``AUTHENTICATION_REQUIRED``), ``pageSize`` ≤ 100 with ``offset`` paging, ≤ 10 records per write
(422 ``INVALID_RECORDS``), ``performUpsert.fieldsToMergeOn`` answering ``records`` +
``createdRecords`` + ``updatedRecords``, ``typecast`` creating select options, and 5 requests/second
per base → 429 for a 30 s penalty (scaled by ``knobs.time_scale``; no ``Retry-After``, see
``_limited``).  Vendor docs:
airtable.com/developers/web/api/{list-records, create-records, update-multiple-records,
delete-multiple-records, get-base-schema, rate-limits, errors}.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from ltvsync.sandbox.airtable_table import AirtableError, Table, airtable_id
from ltvsync.sandbox.http import Emulator, Knobs, Request, Response

MAX_PAGE_SIZE = 100
MAX_RECORDS_PER_WRITE = 10
MAX_MERGE_FIELDS = 3
REQUESTS_PER_SECOND = 5  # per base
PENALTY_SECONDS = 30.0  # Airtable keeps answering 429 this long after the limit is hit
INVALID_RECORDS_MESSAGE = (
    "You must provide an array of up to 10 record objects, "
    "each with an 'id' ID field and a 'fields' object for cell values."
)
INVALID_REQUEST = AirtableError(
    422, "INVALID_REQUEST_UNKNOWN", "Invalid request: parameter validation failed. Check your request data."
)
BASE = r"/v0/(?P<base>app[A-Za-z0-9]+)"


class AirtableEmulator(Emulator):
    """Airtable bases in memory: base id → table name → record id → ``{id, createdTime, fields}``."""

    name = "airtable"

    def __init__(
        self,
        bases: dict[str, dict[str, dict[str, dict[str, Any]]]],
        knobs: Knobs | None = None,
        *,
        token: str = "sandbox-token",
        fields: dict[str, dict[str, str]] | None = None,
    ) -> None:
        """``fields`` gives column name → Airtable type per table, keyed ``"base/table"`` or table name;
        without it a table's columns are inferred from its records ("Customers" starts from
        ``DEFAULT_CUSTOMERS_FIELDS``)."""
        super().__init__(knobs)
        self.token = token
        schemas = fields or {}
        self.bases: dict[str, dict[str, Table]] = {
            base: {
                name: Table(name, records, schemas.get(f"{base}/{name}", schemas.get(name)))
                for name, records in tables.items()
            }
            for base, tables in bases.items()
        }
        # Per-record validation failures chosen by tests: a record id or any cell value → error type.
        self.fail_records: dict[str, str] = {}
        self.writes: list[tuple[str, str, str, dict[str, Any]]] = []  # (base, table, record id, fields)
        self._hits: dict[str, deque[float]] = {}
        self._penalty_until: dict[str, float] = {}
        self.throttled = 0  # 429s answered by the per-base limiter
        self._register()

    # -- admin -----------------------------------------------------------------------------------
    def records(self, base: str, table: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r, fields=dict(r["fields"])) for r in self.bases[base][table].records.values()]

    def table(self, base: str, table: str) -> Table:
        return self.bases[base][table]

    def penalize(self, base: str) -> None:
        """Start the 429 penalty window for ``base`` now, as if it had just exceeded 5 requests/second."""
        with self._lock:
            self._penalty_until[base] = time.monotonic() + PENALTY_SECONDS * self.knobs.time_scale

    # -- plumbing --------------------------------------------------------------------------------
    def _register(self) -> None:
        self._api("GET", r"/v0/meta/bases/(?P<base>app[A-Za-z0-9]+)/tables/?", "schema", self._schema)
        self._api("POST", BASE + r"/(?P<table>[^/]+)/listRecords", "records_list", self._list_post)
        self._api("GET", BASE + r"/(?P<table>[^/]+)/(?P<rid>rec[A-Za-z0-9]+)", "record_get", self._get)
        self._api("GET", BASE + r"/(?P<table>[^/]+)/?", "records_list", self._list_get)
        self._api("POST", BASE + r"/(?P<table>[^/]+)/?", "records_create", self._create)
        self._api(
            "PATCH",
            BASE + r"/(?P<table>[^/]+)/?",
            "records_update",
            lambda r, base, table: self._update(r, base, table, False),
        )
        self._api(
            "PUT",
            BASE + r"/(?P<table>[^/]+)/?",
            "records_update",
            lambda r, base, table: self._update(r, base, table, True),
        )
        self._api("DELETE", BASE + r"/(?P<table>[^/]+)/?", "records_delete", self._delete)

    def _api(self, method: str, pattern: str, name: str, handler: Any) -> None:
        def guarded(req: Request, base: str, **groups: str) -> Response:
            if req.header("authorization") != f"Bearer {self.token}":
                return _err(AirtableError(401, "AUTHENTICATION_REQUIRED", "Authentication required"))
            limited = self._throttle(base)
            if limited is not None:
                return limited
            if base not in self.bases:
                return _err(AirtableError(404, "NOT_FOUND", "Could not find what you are looking for"))
            table = unquote(groups.pop("table", "")) if "table" in groups else None
            with self._lock:
                try:
                    args = (base, self._table(base, table)) if table is not None else (base,)
                    resp: Response = handler(req, *args, **groups)
                    return resp
                except AirtableError as exc:
                    return _err(exc)

        self.route(method, pattern, name, guarded)

    def _table(self, base: str, name: str) -> Table:
        tables = self.bases[base]
        found = tables.get(name) or next((t for t in tables.values() if t.id == name), None)
        if found is None:
            raise AirtableError(404, "TABLE_NOT_FOUND", f"Could not find table {name} in application {base}")
        return found

    def _throttle(self, base: str) -> Response | None:
        if not self.knobs.rate_limits:
            return None
        now = time.monotonic()
        window = max(self.knobs.time_scale, 1e-6)  # one second, scaled
        with self._lock:
            until = self._penalty_until.get(base, 0.0)
            if now < until:
                return self._limited()
            hits = self._hits.setdefault(base, deque())
            while hits and now - hits[0] >= window:
                hits.popleft()
            if len(hits) >= REQUESTS_PER_SECOND:
                until = now + PENALTY_SECONDS * self.knobs.time_scale
                self._penalty_until[base] = until
                hits.clear()
                return self._limited()
            hits.append(now)
        return None

    def _limited(self) -> Response:
        # No Retry-After: Airtable documents none, and pyairtable's urllib3 Retry would sleep for it;
        # without it the client backs off 0.1, 0.2, 0.4 ... s, as against the real service.
        self.throttled += 1
        body = {
            "error": {"type": "RATE_LIMIT_REACHED", "message": "Rate limit exceeded. Please try again later"}
        }
        return Response.json(body, 429)

    def rate_limited(self, retry_after: float) -> Response:
        """Injected 429s (``knobs.fault_rate``) look like the real limiter's."""
        return self._limited()

    # -- read ------------------------------------------------------------------------------------
    def _schema(self, req: Request, base: str) -> Response:
        return Response.json({"tables": [t.schema() for t in self.bases[base].values()]})

    def _get(self, req: Request, base: str, table: Table, rid: str) -> Response:
        record = table.records.get(rid)
        if record is None:
            raise AirtableError(404, "NOT_FOUND", "Could not find what you are looking for")
        return Response.json(record)

    def _list_get(self, req: Request, base: str, table: Table) -> Response:
        sort = []
        for index in range(MAX_PAGE_SIZE):
            name = req.arg(f"sort[{index}][field]")
            if name is None:
                break
            sort.append((name, req.arg(f"sort[{index}][direction]", "asc") == "desc"))
        fields = req.query.get("fields[]") or req.query.get("fields")
        return self._list(
            table,
            req.arg("pageSize"),
            req.arg("maxRecords"),
            req.arg("offset"),
            req.arg("filterByFormula"),
            fields,
            sort,
        )

    def _list_post(self, req: Request, base: str, table: Table) -> Response:
        body = _body(req)
        sort = [
            (s.get("field", ""), s.get("direction") == "desc")
            for s in body.get("sort", [])
            if isinstance(s, dict)
        ]
        return self._list(
            table,
            body.get("pageSize"),
            body.get("maxRecords"),
            body.get("offset"),
            body.get("filterByFormula"),
            body.get("fields"),
            sort,
        )

    def _list(
        self,
        table: Table,
        page_size: Any,
        max_records: Any,
        offset: Any,
        formula: Any,
        fields: Any,
        sort: list[tuple[str, bool]],
    ) -> Response:
        try:
            size = int(page_size) if page_size not in (None, "") else MAX_PAGE_SIZE
            limit = int(max_records) if max_records not in (None, "") else None
        except (TypeError, ValueError):
            raise INVALID_REQUEST from None
        if not 1 <= size <= MAX_PAGE_SIZE or (limit is not None and limit < 0):
            raise INVALID_REQUEST
        rows = list(table.records.values())
        if formula:
            pred = table.matcher(str(formula))
            rows = [r for r in rows if pred(r)]
        for name, descending in reversed(sort):
            if name not in table.columns:
                raise AirtableError(422, "UNKNOWN_FIELD_NAME", f'Unknown field name: "{name}"')
            rows.sort(key=_sort_key(name), reverse=descending)
        if limit is not None:
            rows = rows[:limit]
        start = _offset_position(offset, len(rows))
        page = rows[start : start + size]
        wanted = set(fields) if isinstance(fields, list) and fields else None
        out: dict[str, Any] = {
            "records": [
                {**r, "fields": {k: v for k, v in r["fields"].items() if wanted is None or k in wanted}}
                for r in page
            ]
        }
        if start + size < len(rows):
            out["offset"] = f"itrSBX{start + size:08d}/{rows[start + size]['id']}"
        return Response.json(out)

    # -- write -----------------------------------------------------------------------------------
    def _records_of(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        records = body.get("records")
        if (
            not isinstance(records, list)
            or not 1 <= len(records) <= MAX_RECORDS_PER_WRITE
            or not all(isinstance(r, dict) and isinstance(r.get("fields", {}), dict) for r in records)
        ):
            raise AirtableError(422, "INVALID_RECORDS", INVALID_RECORDS_MESSAGE)
        return records

    def _check_failures(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            keys = [record.get("id"), *record.get("fields", {}).values()]
            for key in keys:
                if isinstance(key, str) and key in self.fail_records:
                    kind = self.fail_records[key]
                    raise AirtableError(422, kind, f"Record with value {key!r} failed validation ({kind})")

    def _create(self, req: Request, base: str, table: Table) -> Response:
        body = _body(req)
        records = self._records_of(body)
        choices: dict[str, list[str]] = {}
        cleaned = [
            table.clean_fields(r.get("fields", {}), bool(body.get("typecast")), choices) for r in records
        ]
        self._check_failures(records)
        table.commit_choices(choices)
        return Response.json({"records": [self._store(base, table, None, c, False) for c in cleaned]})

    def _update(self, req: Request, base: str, table: Table, replace: bool) -> Response:
        body = _body(req)
        records = self._records_of(body)
        typecast = bool(body.get("typecast"))
        upsert = body.get("performUpsert")
        merge_on: list[str] | None = None
        if upsert is not None:
            merge_on = upsert.get("fieldsToMergeOn") if isinstance(upsert, dict) else None
            if not isinstance(merge_on, list) or not 1 <= len(merge_on) <= MAX_MERGE_FIELDS:
                raise INVALID_REQUEST
            for name in merge_on:
                if name not in table.columns:
                    raise AirtableError(422, "UNKNOWN_FIELD_NAME", f'Unknown field name: "{name}"')
        choices: dict[str, list[str]] = {}
        plans: list[tuple[str | None, dict[str, Any]]] = []
        for record in records:
            clean = table.clean_fields(record.get("fields", {}), typecast, choices)
            plans.append((self._target(table, record, clean, merge_on), clean))
        self._check_failures(records)
        table.commit_choices(choices)
        out = [self._store(base, table, target, clean, replace) for target, clean in plans]
        if merge_on is None:
            return Response.json({"records": out})
        created = [r["id"] for (target, _), r in zip(plans, out, strict=True) if target is None]
        updated = [r["id"] for (target, _), r in zip(plans, out, strict=True) if target is not None]
        return Response.json({"records": out, "createdRecords": created, "updatedRecords": updated})

    def _target(
        self, table: Table, record: dict[str, Any], clean: dict[str, Any], merge_on: list[str] | None
    ) -> str | None:
        """The record id a write lands on (None = create); raises for unknown ids or ambiguous keys."""
        rid = record.get("id")
        if rid is not None:
            if rid not in table.records:
                raise AirtableError(404, "NOT_FOUND", f"Record {rid} not found")
            return str(rid)
        if merge_on is None:
            raise AirtableError(422, "INVALID_RECORDS", INVALID_RECORDS_MESSAGE)
        if any(clean.get(name) is None for name in merge_on):
            raise AirtableError(
                422,
                "INVALID_RECORDS",
                f"Each record must have a value for every field in fieldsToMergeOn: {merge_on}",
            )
        hits = [
            r["id"] for r in table.records.values() if all(r["fields"].get(n) == clean[n] for n in merge_on)
        ]
        if len(hits) > 1:
            raise AirtableError(
                422,
                "INVALID_RECORDS",
                "Cannot update more than one record with the same fieldsToMergeOn values",
            )
        return hits[0] if hits else None

    def _store(
        self, base: str, table: Table, rid: str | None, clean: dict[str, Any], replace: bool
    ) -> dict[str, Any]:
        if rid is None:
            rid = airtable_id("rec")
            created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
            table.records[rid] = {"id": rid, "createdTime": created, "fields": {}}
        record = table.records[rid]
        cells = {} if replace else record["fields"]
        cells.update(clean)
        record["fields"] = {k: v for k, v in cells.items() if v is not None}
        self.writes.append((base, table.name, rid, dict(clean)))
        return {**record, "fields": dict(record["fields"])}

    def _delete(self, req: Request, base: str, table: Table) -> Response:
        ids = req.query.get("records[]") or req.query.get("records") or []
        if not 1 <= len(ids) <= MAX_RECORDS_PER_WRITE:
            raise AirtableError(422, "INVALID_RECORDS", INVALID_RECORDS_MESSAGE)
        missing = [i for i in ids if i not in table.records]
        if missing:
            raise AirtableError(404, "NOT_FOUND", f"Record {missing[0]} not found")
        for rid in ids:
            del table.records[rid]
        return Response.json({"records": [{"id": rid, "deleted": True} for rid in ids]})


def _sort_key(name: str) -> Callable[[dict[str, Any]], tuple[bool, str]]:
    return lambda record: (record["fields"].get(name) is None, str(record["fields"].get(name)))


def _body(req: Request) -> dict[str, Any]:
    try:
        body = req.json()
    except ValueError:
        raise INVALID_REQUEST from None
    if not isinstance(body, dict):
        raise INVALID_REQUEST
    return body


def _offset_position(offset: Any, total: int) -> int:
    if offset in (None, ""):
        return 0
    text = str(offset)
    head, _, _ = text.partition("/")
    if not head.startswith("itrSBX") or not head[6:].isdigit() or int(head[6:]) > total:
        raise AirtableError(422, "INVALID_OFFSET_VALUE", f"The value of offset {text} is invalid")
    return int(head[6:])


def _err(exc: AirtableError) -> Response:
    return Response.json(exc.body(), exc.status)
