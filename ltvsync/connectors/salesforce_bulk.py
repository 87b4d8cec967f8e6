"""Salesforce Bulk API 2.0: a query job for the first backfill, an update job for big pushes.

Both go through ``simple_salesforce``'s ``sf.bulk2.<Object>`` (1.12.10): ``query`` yields CSV chunks
(``Sforce-Locator`` paging), ``update`` creates the ingest job, uploads the CSV, closes it and polls
until ``JobComplete``; per-record outcomes then come from ``successfulResults``/``failedResults``.
CSV cells are text, so query rows are coerced back to JSON-like values with the describe types.

Vendor docs relied on: Bulk API 2.0 Developer Guide "Create a Job", "Upload Job Data" (201),
"Close or Abort a Job", "Get Job Successful/Failed Record Results" (``sf__Id``, ``sf__Error`` =
``STATUS_CODE:message``; row order not guaranteed), "Get Results for a Query Job"; and
"Prepare CSV Files" (an empty cell leaves the field unchanged, ``#N/A`` sets it to null).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from functools import partial
from typing import Any

from ltvsync.connectors.base import FieldValue
from ltvsync.connectors.salesforce_client import SalesforceClient, translate

# Bulk 2.0 CSV: a cell holding this sets the field to null (an empty cell means "leave as is").
BULK_NULL = "#N/A"
# Rows per query-results request (the API's default page is 50,000 too; this bounds memory).
BULK_QUERY_PAGE = 50_000
_NUMERIC_TYPES = frozenset({"currency", "double", "percent"})

Outcome = tuple[bool, str | None, str | None]


def _cell(value: FieldValue) -> str:
    if value is None:
        return BULK_NULL
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def bulk_update(
    client: SalesforceClient,
    object_name: str,
    rows: Sequence[tuple[str, Mapping[str, FieldValue]]],
    *,
    wait: float,
) -> dict[str, Outcome]:
    """Update ``(record id, {api_name: value})`` rows in one job; outcome per id sent."""
    records = [
        {"Id": record_id, **{k: _cell(v) for k, v in fields.items()}} for record_id, fields in rows if fields
    ]
    if not records:
        return {}
    handle = getattr(client.sf.bulk2, object_name)
    # Update by Id is idempotent, so retrying the whole job after a transient failure is safe.
    jobs = client.call(lambda: handle.update(records=records, wait=int(wait)), what="bulk update")
    outcomes: dict[str, Outcome] = {}
    for job in jobs:
        job_id = str(job["job_id"])
        ok_csv: str = client.call(partial(handle.get_successful_records, job_id), what="bulk results")
        failed_csv: str = client.call(partial(handle.get_failed_records, job_id), what="bulk results")
        for row in csv.DictReader(io.StringIO(ok_csv)):
            outcomes[row.get("Id") or row.get("sf__Id") or ""] = (True, None, None)
        for row in csv.DictReader(io.StringIO(failed_csv)):
            # ``STATUS_CODE:message:fields``; "--" stands for "no fields".
            code, _, message = (row.get("sf__Error") or "UNKNOWN_ERROR").removesuffix(":--").partition(":")
            outcomes[row.get("Id") or row.get("sf__Id") or ""] = (
                False,
                code.strip(),
                message.strip() or None,
            )
    return outcomes


def bulk_query(
    client: SalesforceClient,
    object_name: str,
    soql: str,
    described: Mapping[str, Mapping[str, Any]],
    *,
    wait: float,
) -> Iterator[list[dict[str, Any]]]:
    """Yield chunks of rows of a Bulk 2.0 query job, values coerced by their describe type.

    The job's result pages cannot be re-requested through simple-salesforce's generator, so a
    failure mid-way is translated (not retried) and the backfill restarts next cycle.
    """
    handle = getattr(client.sf.bulk2, object_name)
    # A generator: nothing is sent until the first next(), which is where errors are translated.
    chunks = handle.query(soql, max_records=BULK_QUERY_PAGE, wait=int(wait))
    while True:
        try:
            chunk = next(chunks)
        except StopIteration:
            return
        except Exception as exc:  # translated at the boundary like every other call
            raise translate(exc, "bulk query") from None
        yield [coerce_row(row, described) for row in csv.DictReader(io.StringIO(chunk))]


def coerce_row(row: Mapping[str, str], described: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """CSV text → the values the REST API would have returned (bool, Decimal, int, None, str)."""
    out: dict[str, Any] = {}
    for name, text in row.items():
        kind = described.get(name, {}).get("type")
        if text == "":
            out[name] = None
        elif kind == "boolean":
            out[name] = text.lower() == "true"
        elif kind in _NUMERIC_TYPES:
            try:
                out[name] = Decimal(text)
            except InvalidOperation:
                out[name] = text  # left as text: the converter rejects it as non-numeric
        elif kind == "int":
            out[name] = int(text) if text.lstrip("-").isdigit() else text
        else:
            out[name] = text
    return out
